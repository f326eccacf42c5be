"""The vocabulary of the HTTP stack: :class:`Request`, :class:`Response`, :class:`Handler`.

Every layer (headers, redirects, later auth and retry) is a :class:`Handler` wrapping the next
one, down to the aiohttp transport: ``send(request) -> response`` is the only call between them
(design.md principle 3). A :class:`Response` reads its body through methods that map aiohttp
exceptions to :class:`~ociflow.errors.TransportError`, so no aiohttp exception escapes the stack.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable
from dataclasses import dataclass, field
from typing import Protocol

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from ociflow.closing import AsyncClosing
from ociflow.http.errors import transport_error

Body = bytes | AsyncIterable[bytes] | None
"""A request body: bytes (replayable), an async stream of chunks (sent once), or none."""


@dataclass
class Request:
    """One HTTP request. ``context`` (``"<reference>: <operation>"``) prefixes every error."""

    method: str
    url: URL
    context: str
    # Not in repr: headers carry credentials, a body may be a token request's form.
    headers: CIMultiDict[str] = field(default_factory=CIMultiDict, repr=False)
    body: Body = field(default=None, repr=False)

    @property
    def replayable(self) -> bool:
        """Whether the request can be sent again (its body is not a one-shot stream)."""
        return self.body is None or isinstance(self.body, bytes)


class Response(AsyncClosing):
    """A response whose body has not been read yet; call :meth:`release` (or use ``async with``).

    ``url`` is the URL of the request that produced it (what a relative ``Location`` resolves
    against; protocol.md §1.6.6).
    """

    __slots__ = ("_raw", "request")

    def __init__(self, raw: aiohttp.ClientResponse, request: Request) -> None:
        self._raw = raw
        self.request = request

    @property
    def status(self) -> int:
        return self._raw.status

    @property
    def reason(self) -> str:
        return self._raw.reason or ""

    @property
    def headers(self) -> CIMultiDictProxy[str]:
        return self._raw.headers

    @property
    def url(self) -> URL:
        return self.request.url

    @property
    def content_length(self) -> int | None:
        """The ``Content-Length`` header as a number, ``None`` when absent or malformed.

        A hint only: never allocate from it (reliability.md P8).
        """
        value = self._raw.headers.get("Content-Length")
        if value is None or not value.isascii() or not value.isdigit():
            return None
        return int(value)

    async def read(self, limit: int) -> bytes:
        """Up to ``limit + 1`` bytes of the body: more than ``limit`` means it is over the cap."""
        chunks: list[bytes] = []
        total = 0
        try:
            while total <= limit:
                chunk = await self._raw.content.read(limit + 1 - total)
                if not chunk:
                    break
                chunks.append(chunk)
                total += len(chunk)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise transport_error(exc, self.request.context) from None
        return b"".join(chunks)

    async def read_exactly(self, n: int) -> bytes:
        """The next ``n`` bytes of the body; fewer only when the body ended first."""
        try:
            return await self._raw.content.readexactly(n)
        except asyncio.IncompleteReadError as exc:
            return exc.partial
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise transport_error(exc, self.request.context) from None

    def release(self) -> None:
        """Give the connection back (or close it, when the body was not read to the end)."""
        self._raw.release()

    async def close(self) -> None:
        """:meth:`release`, for ``async with``."""
        self.release()


class Handler(Protocol):
    """Anything that turns a request into a response: the transport or a layer over it."""

    async def send(self, request: Request) -> Response: ...


class Layer:
    """Base of a layer: holds the next handler down; subclasses override :meth:`send`."""

    def __init__(self, inner: Handler) -> None:
        self.inner = inner

    async def send(self, request: Request) -> Response:
        return await self.inner.send(request)
