"""The bottom of the HTTP stack, and the :class:`Session` that owns the connections of a copy.

:class:`AiohttpTransport` sends one request with aiohttp and nothing else: no redirects
(``allow_redirects=False``; :mod:`ociflow.http.redirect` follows them), no decompression, and
every aiohttp or OS exception mapped to :class:`~ociflow.errors.TransportError` here, at the
boundary. :class:`Session` owns the single ``aiohttp.ClientSession`` and hands out one
:class:`~ociflow.http.client.RegistryClient` per registry.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import aiohttp

from ociflow.closing import AsyncClosing
from ociflow.http.auth import CredentialSource
from ociflow.http.client import RegistryClient
from ociflow.http.credentials import AzureAD, Credentials
from ociflow.http.errors import transport_error
from ociflow.http.message import Request, Response
from ociflow.http.options import HttpOptions
from ociflow.http.redact import redact_url
from ociflow.http.retrylayer import HostBackoff
from ociflow.reference import RegistryReference

if TYPE_CHECKING:
    from ociflow.http.dockerconfig import Keychain

__all__ = ["AiohttpTransport", "HttpOptions", "Session"]

log = logging.getLogger(__name__)

# Large socket reads: the body arrives in pieces of up to this size instead of aiohttp's
# 64-256 KiB, so a 4 MiB chunk (target.CHUNK_SIZE) takes a few reads (design.md "the data
# path"). Measured: 4 MiB read buffers were no faster than 2 MiB.
READ_BUFSIZE = 2 * 1024 * 1024
# Connections beyond the transfers themselves: manifest GETs, HEADs, POSTs, DELETEs.
METADATA_CONNECTIONS = 4


class AiohttpTransport:
    """Sends a :class:`Request` once over a shared ``aiohttp.ClientSession``.

    ``verify_tls=False`` skips certificate verification (``--insecure``). ``timeout`` bounds the
    connect and each socket read, never the whole exchange.
    """

    def __init__(
        self,
        session: Callable[[], aiohttp.ClientSession],
        *,
        verify_tls: bool = True,
        timeout: aiohttp.ClientTimeout | None = None,
    ) -> None:
        self._session = session
        self._ssl = verify_tls
        self._timeout = timeout or aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=60)

    async def send(self, request: Request) -> Response:
        try:
            raw = await self._session().request(
                request.method,
                request.url,
                headers=request.headers,
                data=request.body,
                allow_redirects=False,
                ssl=self._ssl,
                timeout=self._timeout,
            )
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            log.debug("%s %s failed: %s", request.method, redact_url(request.url),
                      type(exc).__name__)
            raise transport_error(exc, request.context) from None
        log.debug("%s %s -> %d", request.method, redact_url(request.url), raw.status)
        return Response(raw, request)


class Session(AsyncClosing):
    """The HTTP state of one copy: one connection pool, one client per registry.

    Use as ``async with Session(options, jobs=jobs) as session``. The pool holds enough
    connections for every job to stream its GETs (one per parallel range) into a PUT, plus a
    few for metadata requests, so transfers never wait on each other for a connection.
    """

    def __init__(self, options: HttpOptions | None = None, *, jobs: int = 4) -> None:
        self.options = options or HttpOptions()
        self.jobs = max(1, jobs)
        self._client_session: aiohttp.ClientSession | None = None
        self._clients: dict[tuple[str, HttpOptions], RegistryClient] = {}
        # Rate-limit state per API host, shared by every client of that host whatever its
        # options: a 429 slows down everything sent to the host (reliability.md P11, C6).
        self._backoffs: dict[str, HostBackoff] = {}
        self._keychains: dict[str | None, Keychain] = {}
        self._closed = False

    def _aiohttp_session(self) -> aiohttp.ClientSession:
        # Created on first use, inside the running loop (aiohttp requires one).
        if self._closed:
            raise RuntimeError("the HTTP session is closed")
        if self._client_session is None:
            # Each job may hold a GET (or, for one large blob, one per parallel range) and a PUT.
            from ociflow.targets.blob_download import DEFAULT_RANGE_PARALLEL

            ranges = self.options.range_parallel or DEFAULT_RANGE_PARALLEL
            connector = aiohttp.TCPConnector(
                limit=self.jobs * (ranges + 1) + METADATA_CONNECTIONS, limit_per_host=0
            )
            self._client_session = aiohttp.ClientSession(
                connector=connector,
                auto_decompress=False,
                read_bufsize=READ_BUFSIZE,
                # Cookies would cross origins (a CDN's cookie sent back to the registry); proxies
                # from the environment are honoured only when configured (reliability.md T4).
                cookie_jar=aiohttp.DummyCookieJar(),
                trust_env=False,
                timeout=aiohttp.ClientTimeout(total=None),
            )
        return self._client_session

    def registry(
        self, ref: RegistryReference, options: HttpOptions | None = None
    ) -> RegistryClient:
        """The client for ``ref``'s registry, shared by every target of that registry.

        Clients are keyed by API host *and* options: targets that need different settings for
        the same host (one ``plain_http``, one not) must not silently share one.
        """
        opts = options or self.options
        key = (ref.api_host, opts)
        client = self._clients.get(key)
        if client is None:
            transport = AiohttpTransport(
                self._aiohttp_session,
                verify_tls=not opts.insecure,
                timeout=aiohttp.ClientTimeout(
                    total=None, sock_connect=opts.connect_timeout, sock_read=opts.stall_timeout
                ),
            )
            backoff = self._backoffs.get(ref.api_host)
            if backoff is None:
                backoff = self._backoffs[ref.api_host] = HostBackoff(opts.retry.jitter)
            client = RegistryClient(ref, opts, transport, backoff, self._credentials(ref, opts))
            self._clients[key] = client
        return client

    def _credentials(self, ref: RegistryReference, options: HttpOptions) -> CredentialSource:
        """Where ``ref``'s client gets its credentials: ``options.credentials`` when given (an
        Azure AD sign-in is exchanged for an ACR refresh token first), else the Docker config
        (read once per session and file; helpers run in a thread)."""

        async def lookup() -> Credentials | None:
            given = options.credentials
            if isinstance(given, AzureAD):
                from ociflow.http.azure import exchange

                client = self.registry(ref, options)
                context = f"{ref.registry}: signing in with Azure AD"
                base = await client.base_url(context)
                challenge = client.auth.challenge
                service = challenge.service if challenge and challenge.service else ref.host
                return await exchange(given, base, service, client.auth.token_handler, context)
            if given is not None:
                return given
            keychain = self._keychains.get(options.auth_file)
            if keychain is None:
                from ociflow.http.dockerconfig import Keychain

                keychain = self._keychains[options.auth_file] = Keychain(options.auth_file)
            return await asyncio.to_thread(keychain.lookup, ref.registry)

        return lookup

    async def close(self) -> None:
        """Close every connection. The session cannot be used afterwards."""
        self._closed = True
        self._clients.clear()
        if self._client_session is not None:
            session, self._client_session = self._client_session, None
            await session.close()
