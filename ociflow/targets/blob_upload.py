"""Uploading one blob into a registry: one PUT or chunks, resumed from the registry's offset.

How (protocol.md §1.6, §5.1, §6.3):

- Below ``options.chunked_threshold``: ``POST``, then one ``PUT <location>&digest=`` carrying the
  whole stream (the most widely supported form; Google Artifact Registry accepts nothing else).
- From the threshold up, and after a one-PUT upload failed: ``PATCH`` chunks of
  ``options.chunk_size`` bytes (raised to the registry's ``OCI-Chunk-Min-Length``, capped at
  :data:`MAX_CHUNK_SIZE`, U8) with ``Content-Range: <first>-<last>`` (inclusive, no unit), and
  the last chunk carried by the closing ``PUT``: one request fewer, and that PUT has a one-shot
  body, so no layer below re-sends it behind our back (a second PUT after a commit is a 404).
- Every request goes to the newest ``Location``, its query kept byte for byte (§1.6.6). A PATCH
  answered 201 (ECR) counts as accepted. The ``Range`` of a PATCH answer is not trusted (ECR's
  goes stale); a 202 means the chunk is stored, and anything else is settled by asking.

Recovery, after a failure that is not the source's:

- Transport failure, 408/429/5xx, 416 (U2) or 401 (an expired token, U13): if it was the
  closing PUT, ``HEAD`` the blob first: there → done, no second upload (U4). Else ``GET
  <location>``: 204 with ``Range: 0-<last>`` → continue from ``last + 1`` (U1), from a fresh
  source stream with that many bytes skipped (the source streams are verified from byte 0, so
  every byte is still hashed).
- 404 or ``BLOB_UPLOAD_UNKNOWN``/``BLOB_UPLOAD_INVALID`` anywhere, or a status answer without a
  usable ``Range``: the session is gone; ``DELETE`` it (ignoring failures) and ``POST`` anew, from
  byte 0 (U3). distribution 2.8 invalidates a session whose data grew past the offset sealed in
  its ``_state`` — after any PATCH that reached it in part, or whose answer was lost — so with it
  this is the usual path; the status path serves registries that keep sessions (and a session
  whose last request never arrived).
- Any other error status (``DIGEST_INVALID`` on the closing PUT: the verified bytes were changed
  in transit, U5; 403, ...) fails at once, and the session is deleted.
- The source stream failing (a digest mismatch, a broken source download) is never retried here:
  the session is deleted and the source's own error raised; the engine decides.

The budget is ``options.retry``: ``attempts`` consecutive failures, backoff in between; a chunk
the registry accepted resets the count. Cancellation (U15, C5) deletes the session (best effort,
bounded by :data:`CANCEL_DELETE_TIMEOUT`), unless a :class:`SessionStore` records sessions: then
it is left open for the next run to continue. Memory: one source chunk at a time; chunk bodies
stream from the source.

*Crash resume.* A :class:`SessionStore` (the on-disk journal, :mod:`ociflow.journal`) is told
of every open session and confirmed offset as an :class:`UploadSession`, asked for one before a
new upload, and told to forget it once the blob is committed or the session abandoned. A session
found there is checked with ``GET <location>`` and continued from the registry's offset. Because
distribution 2.8 refuses a session a request reached in part (above), a cancelled upload that
records sessions lets the request carrying bytes *in flight* finish first, for at most
:data:`CANCEL_GRACE` seconds, and records where it ended: a Ctrl-C'd upload stays resumable. A
request still running after that is cut, and so is everything on a SIGKILL: the session recorded
last is then refused by distribution (the next run sees the ``GET`` fail, forgets it, and starts
the blob from byte 0), while registries that keep sessions continue it from their offset. A kill
that falls between two chunks is continued by any registry.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar
from urllib.parse import quote

from yarl import URL

from ociflow.descriptor import Descriptor
from ociflow.digest import Digest
from ociflow.errors import (
    DigestMismatchError,
    NotFoundError,
    OciflowError,
    RegistryError,
    TransportError,
)
from ociflow.http.client import RegistryClient
from ociflow.http.errors import error_from_response
from ociflow.http.message import Body, Response
from ociflow.http.options import HttpOptions
from ociflow.target import BlobStream, Opener
from ociflow.targets.content_digest import check_stored

log = logging.getLogger(__name__)
_T = TypeVar("_T")

MAX_CHUNK_SIZE = 256 * 1024 * 1024
"""Cap on the PATCH size, whatever ``OCI-Chunk-Min-Length`` asks for (reliability.md U8)."""

# How long a cancelled upload may spend deleting its session (C5: cancel within about 1 s).
CANCEL_DELETE_TIMEOUT = 1.0
CANCEL_GRACE = 1.0
"""How long a cancelled upload that records sessions waits for the request in flight to land, so
that the session is left at a chunk boundary (module docstring); then the request is cut."""

_SESSION_GONE_CODES = frozenset({"BLOB_UPLOAD_UNKNOWN", "BLOB_UPLOAD_INVALID"})
_OCTET_STREAM = "application/octet-stream"


@dataclass(frozen=True, slots=True)
class UploadSession:
    """An open upload session: enough to continue it from another process.

    ``location`` is the newest upload URL with its query (distribution's HMAC'd ``_state``):
    a secret, to be stored privately and never logged. ``offset`` is the number of bytes the
    registry confirmed. ``repository`` is ``host[:port]/name``.
    """

    repository: str
    digest: Digest
    size: int
    location: str
    offset: int


class SessionStore(Protocol):
    """Where open upload sessions are kept across runs. Called on the event loop: be quick."""

    def find(self, repository: str, digest: Digest) -> UploadSession | None:
        """A session recorded for this blob in this repository, if any."""
        ...

    def record(self, session: UploadSession) -> None:
        """Remember ``session`` (replacing any earlier record of the same blob)."""
        ...

    def forget(self, repository: str, digest: Digest) -> None:
        """The blob is committed, or its session abandoned."""
        ...


def chunk_length(configured: int, chunk_min: str | None) -> int:
    """The PATCH size: ``configured``, raised to a valid ``OCI-Chunk-Min-Length`` header value,
    at most :data:`MAX_CHUNK_SIZE` (a registry's number is a hint, never an allocation)."""
    length = configured
    if chunk_min is not None:
        value = chunk_min.strip()
        if value.isascii() and value.isdigit() and len(value) <= 20:
            length = max(length, int(value))
    return max(1, min(length, MAX_CHUNK_SIZE))


def parse_upload_range(value: str | None) -> int | None:
    """The registry's offset from an upload ``Range`` header (``0-<last>``, ``bytes=`` tolerated):
    ``last + 1``; None when absent or malformed.

    distribution answers ``0-0`` both for an empty session and for one holding a single byte;
    it is read as 0 (re-sending a byte is caught by the digest; skipping one would not be).
    """
    if value is None:
        return None
    text = value.strip().removeprefix("bytes=")
    first, sep, last = text.partition("-")
    if not sep or first != "0" or not last.isascii() or not last.isdigit() or len(last) > 20:
        return None
    end = int(last)
    return 0 if end == 0 else end + 1


def resolve_location(request_url: URL, location: str, context: str) -> URL:
    """An upload ``Location`` made absolute against the request that returned it, its query
    (distribution's ``_state``) kept byte for byte (protocol.md §1.6.6)."""
    try:
        url = request_url.join(URL(location, encoded=True)).with_fragment(None)
    except ValueError:
        url = None
    if url is None or url.scheme not in ("http", "https") or not url.host:
        raise RegistryError(f"{context}: the registry returned an invalid upload Location")
    if request_url.scheme == "https" and url.scheme != "https":
        # The layer's bytes and the session's state would cross the network in the clear.
        raise RegistryError(f"{context}: refusing an upload Location that downgrades to http")
    return url


def with_digest(upload: URL, digest: Digest) -> URL:
    """``upload`` plus ``digest=<digest>``, appended without re-encoding the existing query."""
    separator = "&" if upload.raw_query_string else "?"
    return URL(f"{upload}{separator}digest={quote(digest, safe='')}", encoded=True)


async def cancel_session(client: RegistryClient, upload: URL, context: str) -> None:
    """Best-effort ``DELETE`` of an upload session (distribution-spec end-14); errors ignored."""
    try:
        response = await client.send(
            "DELETE", upload, context=context, headers={"Content-Length": "0"}
        )
    except OciflowError:
        return
    response.release()


async def upload_blob(
    client: RegistryClient,
    repository: str,
    desc: Descriptor,
    open_stream: Opener,
    *,
    context: str,
    options: HttpOptions,
    exists: Callable[[], Awaitable[bool]],
    store: SessionStore | None = None,
) -> None:
    """Upload the blob ``desc`` into ``repository`` (a name on ``client``'s registry).

    ``open_stream`` returns a fresh verified stream from byte 0 on every call; ``exists``
    answers whether the registry already holds the blob (used to settle a closing PUT whose
    answer was lost). ``context`` prefixes every error.
    """
    await _Upload(client, repository, desc, open_stream, context, options, exists, store).run()


def _gave_up(error: OciflowError, failures: int) -> OciflowError:
    """``error`` (same class, status and codes), saying how many failures in a row it ended."""
    message = f"{error} (gave up after {failures} failed attempts)"
    if isinstance(error, RegistryError):
        return type(error)(message, status=error.status, codes=error.codes)
    return type(error)(message)


class _Failed(Exception):
    """A failed request the upload can recover from; ``error`` is raised when it cannot."""

    def __init__(self, error: OciflowError, *, closing: bool, gone: bool = False) -> None:
        super().__init__(str(error))
        self.error = error
        self.closing = closing  # the closing PUT: the blob may be committed anyway
        self.gone = gone  # the session no longer exists


class _Source:
    """The blob's verified stream, handed out as exact byte counts; rewound by reopening.

    An error the stream raises is kept in ``failure``: aiohttp replaces an exception from a
    request body with its own, and the caller must see the original. A request body abandoned
    mid-way may still be running in aiohttp's writer task; reopening starts a new generation,
    and a body of an older generation stops touching the shared position.
    """

    def __init__(self, open_stream: Opener, size: int, context: str) -> None:
        self._open = open_stream
        self._size = size
        self._context = context
        self._stream: BlobStream | None = None
        self._generation = 0
        self._carry = b""
        self.pos = 0
        self.failure: BaseException | None = None
        self.tainted = False  # a request body stopped mid-way: the stream's state is unknown

    async def seek(self, offset: int) -> None:
        """Position at ``offset``: onwards from here, or by reopening and skipping."""
        if self._stream is None or self.tainted or offset < self.pos:
            await self.close()
            self._stream = self._open()
            self._generation += 1
            self._carry = b""
            self.pos = 0
            self.tainted = False
        async for _ in self.take(offset - self.pos, check_end=False):
            pass

    async def take(self, count: int, *, check_end: bool = True) -> AsyncGenerator[bytes, None]:
        """The next ``count`` bytes. When they end the blob (and ``check_end``), the stream is
        read to its end before the last piece is handed out, so that piece leaves only once the
        whole stream verified."""
        stream, generation = self._stream, self._generation
        assert stream is not None
        left = count
        if left == 0 and check_end and self.pos == self._size:
            await self._expect_end(stream)
        while left > 0:
            if not self._carry:
                try:
                    chunk = await anext(stream)
                except StopAsyncIteration:
                    self.failure = DigestMismatchError(
                        f"{self._context}: the source ended after {self.pos} of "
                        f"{self._size} bytes"
                    )
                    raise self.failure from None
                except Exception as exc:
                    self.failure = exc
                    raise
                if generation != self._generation:
                    return
                self._carry = chunk
            piece, self._carry = self._carry[:left], self._carry[left:]
            self.pos += len(piece)
            left -= len(piece)
            if check_end and self.pos == self._size:
                await self._expect_end(stream)
            yield piece
            if generation != self._generation:
                return

    async def _expect_end(self, stream: BlobStream) -> None:
        """Read the stream to its end (so that it verifies); more bytes are an error."""
        if not self._carry:
            try:
                self._carry = await anext(stream)
            except StopAsyncIteration:
                return
            except Exception as exc:
                self.failure = exc
                raise
        self.failure = DigestMismatchError(
            f"{self._context}: the source is longer than {self._size} bytes"
        )
        raise self.failure

    async def close(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            try:
                await stream.aclose()
            except RuntimeError:
                pass  # still running inside an aborted request body; it ends with it
            except Exception as exc:  # a close that fails says nothing about the upload
                log.debug("closing the source stream failed: %s", type(exc).__name__)


class _Upload:
    def __init__(
        self,
        client: RegistryClient,
        repository: str,
        desc: Descriptor,
        open_stream: Opener,
        context: str,
        options: HttpOptions,
        exists: Callable[[], Awaitable[bool]],
        store: SessionStore | None,
    ) -> None:
        if options.chunk_size < 1:
            raise ValueError("chunk_size must be at least 1")
        self.client = client
        self.repository = repository
        self.key = f"{client.host}/{repository}"
        self.desc = desc
        self.size = desc.size
        self.context = context
        self.options = options
        self.retry = options.retry
        self.exists = exists
        self.store = store
        self.source = _Source(open_stream, desc.size, context)
        self.location: URL | None = None
        self.offset = 0
        self.chunk = chunk_length(options.chunk_size, None)
        self.failures = 0
        # Set when a request that landed during a cancellation's grace was refused for good:
        # the session is then not worth keeping.
        self.abandon = False

    async def run(self) -> None:
        try:
            await self._run()
        except asyncio.CancelledError:
            if self.location is not None and (self.store is None or self.abandon):
                await self._delete_bounded()
                self._forget()
            raise
        except Exception as exc:
            if self.location is not None and not (
                self.store is not None and isinstance(exc, TransportError)
            ):
                # Kept only when a store can continue it later and the network, not the
                # registry or the content, was at fault.
                await cancel_session(self.client, self.location, self.context)
                self._forget()
            raise
        finally:
            await self.source.close()

    async def _run(self) -> None:
        if not await self._resume_recorded():
            await self._post()
        chunked = self.size >= self.options.chunked_threshold or self.offset > 0
        while True:
            try:
                if chunked:
                    await self._send_chunks()
                else:
                    await self._send_whole()
                return
            except _Failed as failure:
                await self._count(failure.error)
                chunked = True
                if await self._recover(failure):
                    self._committed()
                    return

    def _committed(self) -> None:
        self.location = None  # nothing to cancel
        self._forget()

    # -- starting and recovering sessions ------------------------------------------------

    async def _post(self) -> None:
        response = await self.client.send(
            "POST",
            f"/v2/{self.repository}/blobs/uploads/",
            context=self.context,
            headers={"Content-Length": "0"},
        )
        async with response:
            if response.status != 202:
                raise await error_from_response(response, self.context)
            location = response.headers.get("Location")
            chunk_min = response.headers.get("OCI-Chunk-Min-Length")
            request_url = response.url
        if not location:
            raise RegistryError(
                f"{self.context}: the registry opened an upload without a Location", status=202
            )
        self.location = resolve_location(request_url, location, self.context)
        self.offset = 0
        self.chunk = chunk_length(self.options.chunk_size, chunk_min)
        self._record()

    async def _resume_recorded(self) -> bool:
        """Continue a session the store recorded, if the registry still has it."""
        if self.store is None:
            return False
        recorded = self.store.find(self.key, self.desc.digest)
        if recorded is None:
            return False
        try:
            location = URL(recorded.location, encoded=True)
        except ValueError:
            location = None
        base = await self.client.base_url(self.context)
        if (
            recorded.size != self.size
            or location is None
            or (location.scheme, location.host, location.port)
            != (base.scheme, base.host, base.port)
        ):
            # Another blob's, or another origin's: never trusted with our bytes.
            self.store.forget(self.key, self.desc.digest)
            return False
        self.location = location
        try:
            if await self._status():
                return True
        except OciflowError as exc:
            log.debug("%s: recorded upload session unusable: %s", self.context, exc)
        self.location = None
        self.store.forget(self.key, self.desc.digest)
        return False

    async def _status(self) -> bool:
        """``GET`` the session: True and ``offset`` set when the registry reports its progress,
        False when the session is gone or its answer unusable."""
        assert self.location is not None
        response = await self.client.send("GET", self.location, context=self.context)
        async with response:
            status = response.status
            if status not in (200, 204):
                error = await error_from_response(response, self.context)
                if self._retryable(error):
                    raise error
                return False
            offset = parse_upload_range(response.headers.get("Range"))
            location = response.headers.get("Location")
            request_url = response.url
        if offset is None or offset > self.size:
            return False
        if location:
            self.location = resolve_location(request_url, location, self.context)
        self.offset = offset
        self._record()
        return True

    async def _recover(self, failure: _Failed) -> bool:
        """Bring the session back in step after ``failure``; True when the blob is committed."""
        closing, gone = failure.closing, failure.gone
        while True:
            try:
                if closing and await self.exists():
                    return True
                closing = False
                if not gone and await self._status():
                    return False
                gone = True
                if self.location is not None:
                    await cancel_session(self.client, self.location, self.context)
                    self.location = None
                await self._post()
                return False
            except OciflowError as exc:
                if not self._retryable(exc):
                    raise
                await self._count(exc)

    async def _count(self, error: OciflowError) -> None:
        """One more failure in a row: raise ``error`` when the budget is spent, else wait."""
        self.failures += 1
        if self.failures >= self.retry.attempts:
            if self.failures == 1:
                raise error  # retries are off
            raise _gave_up(error, self.failures) from None
        log.info("%s: %s; continuing (attempt %d of %d)", self.context, error,
                 self.failures + 1, self.retry.attempts)
        await asyncio.sleep(self.retry.backoff(self.failures))

    def _retryable(self, error: OciflowError) -> bool:
        if isinstance(error, TransportError):
            return True
        return isinstance(error, RegistryError) and self.retry.retryable_status(error.status)

    # -- sending -------------------------------------------------------------------------

    async def _send_whole(self) -> None:
        assert self.location is not None
        await self.source.seek(0)
        await self._landing(
            self._close(
                {"Content-Type": _OCTET_STREAM, "Content-Length": str(self.size)},
                self.source.take(self.size),
            )
        )

    async def _send_chunks(self) -> None:
        while True:
            assert self.location is not None
            await self.source.seek(self.offset)
            remaining = self.size - self.offset
            if remaining <= self.chunk:
                # The last chunk travels with the closing PUT.
                headers = {"Content-Type": _OCTET_STREAM, "Content-Length": str(remaining)}
                if remaining:
                    headers["Content-Range"] = f"{self.offset}-{self.size - 1}"
                await self._landing(self._close(headers, self.source.take(remaining)))
                return
            await self._landing(self._patch(self.chunk))

    async def _patch(self, length: int) -> None:
        """PATCH the next ``length`` bytes; on acceptance, move and record the offset."""
        assert self.location is not None
        response = await self._send(
            "PATCH",
            self.location,
            {
                "Content-Type": _OCTET_STREAM,
                "Content-Length": str(length),
                # Inclusive, without a unit (distribution-spec "chunked upload").
                "Content-Range": f"{self.offset}-{self.offset + length - 1}",
            },
            self.source.take(length),
            closing=False,
        )
        async with response:
            if response.status not in (201, 202):
                raise await self._failure(response, closing=False)
            location = response.headers.get("Location")
            request_url = response.url
        if location:
            self.location = resolve_location(request_url, location, self.context)
        self.offset += length
        self.failures = 0
        self._record()

    async def _close(self, headers: dict[str, str], body: Body) -> None:
        """The closing PUT (with the last bytes); on success the upload is committed."""
        assert self.location is not None
        response = await self._send(
            "PUT", with_digest(self.location, self.desc.digest), headers, body, closing=True
        )
        await self._closed(response)
        self._committed()

    async def _landing(self, exchange: Coroutine[Any, Any, _T]) -> _T:
        """Run a request that carries blob bytes.

        Cancelled meanwhile while a store records sessions, the request is given
        :data:`CANCEL_GRACE` seconds to finish (it records its own outcome) before it is cut:
        a request that reaches distribution in part makes its session unusable, one that lands
        leaves the session resumable at the recorded offset (module docstring).
        """
        if self.store is None:
            return await exchange
        task = asyncio.ensure_future(exchange)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            try:
                if not task.done():
                    await asyncio.wait({task}, timeout=CANCEL_GRACE)
            finally:
                if not task.done():
                    task.cancel()
                    await asyncio.wait({task})
                if not task.cancelled():
                    error = task.exception()
                    # A refusal that retrying would not cure (DIGEST_INVALID, 403, the source's
                    # own error) or a vanished session leaves nothing to resume.
                    self.abandon = error is not None and not (
                        isinstance(error, _Failed) and not error.gone
                    )
            raise

    async def _send(
        self, method: str, url: URL, headers: dict[str, str], body: Body, *, closing: bool
    ) -> Response:
        """Send one request with a source body; the source's error wins over the request's."""
        try:
            response = await self.client.send(
                method, url, context=self.context, headers=headers, body=body
            )
        except TransportError as exc:
            self.source.tainted = True
            if self.source.failure is not None:
                raise self.source.failure from None
            raise _Failed(exc, closing=closing) from None
        if self.source.failure is not None:
            response.release()
            raise self.source.failure
        if self.source.pos != self._expected_pos(headers):
            # Answered before the body was sent in full: where the stream stands is unknown.
            self.source.tainted = True
        return response

    def _expected_pos(self, headers: dict[str, str]) -> int:
        return self.offset + int(headers["Content-Length"])

    async def _closed(self, response: Response) -> None:
        """Settle the closing PUT's answer: 201 with the right digest, or a failure."""
        async with response:
            if response.status != 201:
                raise await self._failure(response, closing=True)
            header = response.headers.get("Docker-Content-Digest")
        check_stored(header, self.desc.digest, self.context)

    async def _failure(self, response: Response, *, closing: bool) -> BaseException:
        """The error for a PATCH or closing PUT that was not accepted."""
        status = response.status
        self.source.tainted = True
        error = await error_from_response(response, self.context)
        codes = error.codes if isinstance(error, RegistryError) else ()
        if isinstance(error, NotFoundError) or _SESSION_GONE_CODES.intersection(codes):
            return _Failed(error, closing=closing, gone=True)
        if status in (401, 416) or self._retryable(error):
            # 401: a token that expired mid-upload (U13). The status request that follows is
            # replayable, so an auth layer can renew the token on it; a refusal that persists
            # spends the budget like any other failure.
            return _Failed(error, closing=closing)
        return error

    # -- bookkeeping ---------------------------------------------------------------------

    def _record(self) -> None:
        if self.store is not None and self.location is not None:
            self.store.record(
                UploadSession(
                    self.key, self.desc.digest, self.size, str(self.location), self.offset
                )
            )

    def _forget(self) -> None:
        if self.store is not None:
            self.store.forget(self.key, self.desc.digest)

    async def _delete_bounded(self) -> None:
        assert self.location is not None
        try:
            async with asyncio.timeout(CANCEL_DELETE_TIMEOUT):
                await cancel_session(self.client, self.location, self.context)
        except TimeoutError:
            pass
