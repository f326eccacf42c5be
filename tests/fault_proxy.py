"""A scriptable, streaming aiohttp reverse proxy in front of the real registry, with a journal.

Tests add :class:`Rule` objects — method, path regex, which matching attempts — whose
:class:`Fault` changes what happens: answer with a status instead of forwarding (503, 429 with
``Retry-After``), cut or reset the connection after K body bytes, stall, throttle, strip the
``Range`` header, shift ``Content-Range``, flip or append bytes, or forward the request and then
swallow the answer. Every request is recorded in ``journal`` with its timing, so tests assert on
what the client sent (attempt counts, Range starts, backoff gaps, concurrency), not only on the
final success.

Bodies stream in both directions; nothing is buffered whole.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

Transform = Callable[[bytes], bytes]
_CHUNK = 256 * 1024
_HOP_HEADERS = {"transfer-encoding", "content-length", "connection", "keep-alive"}


@dataclass
class Fault:
    """What to do to a matching request. Unset fields change nothing."""

    status: int | None = None  # answer this status without forwarding
    headers: dict[str, str] = field(default_factory=dict)  # added to the answer
    body: bytes = b""  # body of a ``status`` answer
    cut_after: int | None = None  # forward, then close cleanly after K body bytes
    reset_after: int | None = None  # forward, then TCP RST after K body bytes
    stall_after: int | None = None  # forward K body bytes, then send nothing for ``stall``
    stall: float = 3600.0
    delay: float = 0.0  # wait before answering
    throttle: int | None = None  # body bytes per second on this connection
    strip_range: bool = False  # drop the Range request header (the registry sends 200)
    shift_content_range: int = 0  # add to the start of a 206 Content-Range
    flip_at: int | None = None  # invert the body byte at this offset of the answer
    append: bytes = b""  # extra bytes after the body (Content-Length grows to match)
    swallow: bool = False  # forward the whole request, then drop the connection unanswered
    request_headers: dict[str, str] = field(default_factory=dict)  # override request headers
    reset_request_after: int | None = None  # take K request body bytes, forward nothing, RST
    rewrite_status: int | None = None  # forward, then answer with this status (same headers)


@dataclass
class Rule:
    method: str
    path: str
    fault: Fault
    attempts: set[int] | None = None  # 1-based matching attempts to affect; None = all
    seen: int = 0

    def applies(self, method: str, path: str) -> bool:
        if method != self.method or not re.search(self.path, path):
            return False
        self.seen += 1
        return self.attempts is None or self.seen in self.attempts


@dataclass
class Entry:
    """One request as the proxy saw it."""

    method: str
    path: str
    query: str
    status: int
    range: str | None
    content_range: str | None
    authorization: str | None  # a hash, never the credential itself
    started: float
    ended: float = 0.0
    sent: int = 0  # response body bytes sent to the client
    received: int = 0  # request body bytes received from the client
    fault: bool = False


@dataclass
class FaultProxy:
    upstream: str  # e.g. http://127.0.0.1:5000
    rules: list[Rule] = field(default_factory=list)
    journal: list[Entry] = field(default_factory=list)
    port: int = 0
    _runner: web.AppRunner | None = None
    _client: aiohttp.ClientSession | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def add(self, method: str, path: str, fault: Fault, attempts: set[int] | None = None) -> Rule:
        rule = Rule(method, path, fault, attempts)
        self.rules.append(rule)
        return rule

    def entries(self, method: str, path_regex: str = "") -> list[Entry]:
        return [e for e in self.journal if e.method == method and re.search(path_regex, e.path)]

    def count(self, method: str, path_regex: str = "") -> int:
        return len(self.entries(method, path_regex))

    def max_concurrency(self, method: str, path_regex: str = "") -> int:
        """The most requests of this kind that were in flight at once."""
        events = []
        for e in self.entries(method, path_regex):
            events += [(e.started, 1), (e.ended or time.monotonic(), -1)]
        level = peak = 0
        for _, step in sorted(events, key=lambda ev: (ev[0], ev[1])):
            level += step
            peak = max(peak, level)
        return peak

    async def __aenter__(self) -> FaultProxy:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        self._client = aiohttp.ClientSession(
            auto_decompress=False, timeout=aiohttp.ClientTimeout(total=None)
        )
        app = web.Application(client_max_size=1 << 40)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        self.port = listener.getsockname()[1]
        await web.SockSite(self._runner, listener).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._client is not None:
            await self._client.close()

    def _fault_for(self, request: web.Request) -> Fault | None:
        for rule in self.rules:
            if rule.applies(request.method, request.path):
                return rule.fault
        return None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        assert self._client is not None
        auth = request.headers.get("Authorization")
        entry = Entry(
            request.method,
            request.path,
            request.query_string,
            0,
            request.headers.get("Range"),
            request.headers.get("Content-Range"),
            hashlib.sha256(auth.encode()).hexdigest()[:12] if auth else None,
            time.monotonic(),
        )
        self.journal.append(entry)
        fault = self._fault_for(request)
        entry.fault = fault is not None
        fault = fault or Fault()
        try:
            return await self._serve(request, fault, entry)
        finally:
            entry.ended = time.monotonic()

    async def _serve(self, request: web.Request, fault: Fault, entry: Entry) -> web.StreamResponse:
        assert self._client is not None
        if fault.delay:
            await asyncio.sleep(fault.delay)
        if fault.reset_request_after is not None:
            async for chunk in request.content.iter_chunked(_CHUNK):
                entry.received += len(chunk)
                if entry.received >= fault.reset_request_after:
                    break
            entry.status = -1
            _reset(request)
            raise asyncio.CancelledError
        if fault.status is not None:
            await _drain_request(request, entry)
            entry.status = fault.status
            return web.Response(status=fault.status, headers=fault.headers, body=fault.body)
        # The Host header is kept: the registry builds absolute Location URLs from it, and
        # they must point back at the proxy.
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS}
        if fault.strip_range:
            headers.pop("Range", None)
        headers.update(fault.request_headers)
        body = _counting(request, entry) if request.body_exists else None
        if body is not None and "Content-Length" in request.headers:
            headers["Content-Length"] = request.headers["Content-Length"]
        async with self._client.request(
            request.method,
            f"{self.upstream}{request.path_qs}",
            headers=headers,
            data=body,
            allow_redirects=False,
        ) as upstream:
            if fault.swallow:
                await upstream.read()
                entry.status = -1
                _reset(request)
                raise asyncio.CancelledError
            entry.status = fault.rewrite_status or upstream.status
            out = {k: v for k, v in upstream.headers.items() if k.lower() not in _HOP_HEADERS}
            out.update(fault.headers)
            if fault.shift_content_range and "Content-Range" in out:
                out["Content-Range"] = _shift(out["Content-Range"], fault.shift_content_range)
            response = web.StreamResponse(status=entry.status, headers=out)
            length = upstream.content_length
            if request.method == "HEAD":
                if length is not None:
                    response.headers["Content-Length"] = str(length)
                await response.prepare(request)
                return response
            if length is not None:
                response.content_length = length + len(fault.append)
            await response.prepare(request)
            sent = 0
            async for chunk in upstream.content.iter_chunked(_CHUNK):
                if fault.flip_at is not None and sent <= fault.flip_at < sent + len(chunk):
                    i = fault.flip_at - sent
                    chunk = chunk[:i] + bytes([chunk[i] ^ 0xFF]) + chunk[i + 1 :]
                for limit, action in (
                    (fault.cut_after, "cut"),
                    (fault.reset_after, "reset"),
                    (fault.stall_after, "stall"),
                ):
                    if limit is not None and sent + len(chunk) >= limit:
                        await _write(response, chunk[: limit - sent], fault, entry)
                        await _break(request, response, action, fault)
                sent += len(chunk)
                await _write(response, chunk, fault, entry)
            if fault.append:
                await _write(response, fault.append, fault, entry)
            await response.write_eof()
            return response


async def _write(response: web.StreamResponse, data: bytes, fault: Fault, entry: Entry) -> None:
    if not data:
        return
    if fault.throttle:
        step = max(1, fault.throttle // 20)
        for i in range(0, len(data), step):
            await response.write(data[i : i + step])
            entry.sent += len(data[i : i + step])
            await asyncio.sleep(len(data[i : i + step]) / fault.throttle)
        return
    await response.write(data)
    entry.sent += len(data)


async def _break(
    request: web.Request, response: web.StreamResponse, action: str, fault: Fault
) -> None:
    """End the exchange mid-body; never returns normally."""
    if action == "stall":
        await asyncio.sleep(fault.stall)
    if action == "reset":
        _reset(request)
    else:
        transport = request.transport
        if transport is not None:
            transport.close()
    raise asyncio.CancelledError


def _reset(request: web.Request) -> None:
    """Abort the connection with a TCP RST (SO_LINGER 0)."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


async def _counting(request: web.Request, entry: Entry):  # type: ignore[no-untyped-def]
    async for chunk in request.content.iter_chunked(_CHUNK):
        entry.received += len(chunk)
        yield chunk


async def _drain_request(request: web.Request, entry: Entry) -> None:
    if request.body_exists:
        async for chunk in request.content.iter_chunked(_CHUNK):
            entry.received += len(chunk)


def _shift(content_range: str, by: int) -> str:
    match = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+|\*)", content_range.strip())
    if not match:
        return content_range
    start, end, total = match.groups()
    return f"bytes {int(start) + by}-{end}/{total}"


def flip_byte(offset: int = 0) -> Fault:
    """A fault that inverts one byte of the answer body."""
    return Fault(flip_at=offset)
