"""A scriptable aiohttp reverse proxy in front of the real registry, with a request journal.

Tests add :class:`Rule` objects (method + path regex + which matching attempts) whose action
changes the upstream response, e.g. flipping a byte of a blob body. Every request is recorded
in ``journal`` (method, path, status, Range header), so tests assert on what was sent.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

Transform = Callable[[bytes], bytes]


@dataclass
class Rule:
    """Apply ``transform`` to the body of responses to ``method`` requests matching ``path``."""

    method: str
    path: str
    transform: Transform
    attempts: set[int] | None = None  # 1-based matching attempts to affect; None = all
    seen: int = 0

    def applies(self, method: str, path: str) -> bool:
        if method != self.method or not re.search(self.path, path):
            return False
        self.seen += 1
        return self.attempts is None or self.seen in self.attempts


@dataclass
class Entry:
    method: str
    path: str
    status: int
    range: str | None


def flip_byte(offset: int = 0) -> Transform:
    """A transform that inverts one byte of the body (at ``offset`` from its start)."""

    def transform(body: bytes) -> bytes:
        if not body:
            return body
        i = min(offset, len(body) - 1)
        return body[:i] + bytes([body[i] ^ 0xFF]) + body[i + 1 :]

    return transform


@dataclass
class FaultProxy:
    upstream: str  # e.g. http://127.0.0.1:5000
    rules: list[Rule] = field(default_factory=list)
    journal: list[Entry] = field(default_factory=list)
    _runner: web.AppRunner | None = None
    _client: aiohttp.ClientSession | None = None
    port: int = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def count(self, method: str, path_regex: str = "") -> int:
        return sum(
            1 for e in self.journal if e.method == method and re.search(path_regex, e.path)
        )

    async def start(self) -> None:
        self._client = aiohttp.ClientSession(auto_decompress=False)
        app = web.Application(client_max_size=1024**3)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._client is not None:
            await self._client.close()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        assert self._client is not None
        # The Host header is kept: the registry builds absolute Location URLs from it, and
        # they must point back at the proxy.
        headers = dict(request.headers)
        body = await request.read()
        async with self._client.request(
            request.method,
            f"{self.upstream}{request.path_qs}",
            headers=headers,
            data=body if body else None,
            allow_redirects=False,
        ) as upstream:
            data = await upstream.read()
            for rule in self.rules:
                if rule.applies(request.method, request.path):
                    data = rule.transform(data)
            self.journal.append(
                Entry(request.method, request.path, upstream.status, request.headers.get("Range"))
            )
            out_headers = {
                k: v
                for k, v in upstream.headers.items()
                if k.lower() not in ("transfer-encoding", "content-length", "connection")
            }
            if request.method == "HEAD":
                response = web.Response(status=upstream.status, headers=out_headers)
                if "Content-Length" in upstream.headers:
                    response.headers["Content-Length"] = upstream.headers["Content-Length"]
                return response
            return web.Response(status=upstream.status, headers=out_headers, body=data)
