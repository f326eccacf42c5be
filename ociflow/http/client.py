"""One registry host: its base URL (scheme decided once) and its stack of HTTP layers.

Scheme rule (design.md "CLI conventions"; reliability.md §2.2.8, T1): ``plain_http`` means
http; any other host is https only; a loopback registry (localhost, 127.0.0.0/8, ::1) is tried
with https first and falls back to http only when the server does not speak TLS at all, as
Docker does. A certificate error never falls back (CVE-2014-5277). The probe runs once per
client and its answer is kept.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping

from multidict import CIMultiDict
from yarl import URL

from ociflow.http.auth import Authenticator, AuthLayer, CredentialSource
from ociflow.http.credentials import Credentials
from ociflow.http.errors import NotTLSError
from ociflow.http.headers import HeadersLayer
from ociflow.http.message import Body, Handler, Request, Response
from ociflow.http.options import HttpOptions
from ociflow.http.redirect import RedirectLayer
from ociflow.http.retrylayer import HostBackoff, RetryLayer
from ociflow.reference import RegistryReference

Headers = Mapping[str, str] | Iterable[tuple[str, str]]


def build_stack(
    transport: Handler,
    options: HttpOptions,
    backoff: HostBackoff | None = None,
    auth: Authenticator | None = None,
) -> tuple[Handler, Handler]:
    """The layers over ``transport``: returns (full stack, stack without redirects or auth).

    Order, top down: retries (a retry re-runs the whole redirect chain, so an expired
    pre-signed URL is resolved afresh), redirects (each hop goes through every layer below, so
    the auth layer sees the real target of every hop and sends credentials to the registry's
    origin only), auth (``auth``'s token requests take the same stack without it), headers,
    the transport. Both stacks share
    ``backoff``, the host's rate-limit state (a new one when not given).
    """
    if backoff is None:
        backoff = HostBackoff(options.retry.jitter)
    base: Handler = HeadersLayer(transport, options.user_agent)
    plain = RetryLayer(RedirectLayer(base), options.retry, backoff)
    full: Handler = plain
    if auth is not None:
        auth.token_handler = plain
        full = RetryLayer(RedirectLayer(AuthLayer(base, auth)), options.retry, backoff)
    return full, RetryLayer(base, options.retry, backoff)


class RegistryClient:
    """Sends requests to one registry (``host`` is its API host, ``host[:port]``).

    ``backoff`` is the host's shared rate-limit state (the :class:`Session` gives every client
    of one host the same; a new one when not given). ``credentials`` is asked for this
    registry's credentials the first time it asks for them (None: anonymous only).

    Code that retries at its own level (a resumed body, an upload chunk) should
    ``await client.backoff.wait()`` before sending and call ``client.backoff.defer(seconds)``
    after a 429, as the retry layer does.
    """

    def __init__(
        self,
        ref: RegistryReference,
        options: HttpOptions,
        transport: Handler,
        backoff: HostBackoff | None = None,
        credentials: CredentialSource | None = None,
    ) -> None:
        self.host = ref.api_host
        self.options = options
        self._loopback = ref.is_loopback
        self.backoff = backoff if backoff is not None else HostBackoff(options.retry.jitter)
        self._base: URL | None = None
        self.auth = Authenticator(lambda: self._base, credentials or _anonymous)
        self.handler, self._probe_handler = build_stack(
            transport, options, self.backoff, self.auth
        )
        self._lock = asyncio.Lock()

    @property
    def scheme(self) -> str | None:
        """``"https"`` or ``"http"`` once decided, ``None`` before the first request."""
        return self._base.scheme if self._base is not None else None

    async def base_url(self, context: str) -> URL:
        """``scheme://host[:port]``; decides the scheme on first call (``context`` names the
        operation in a probe failure)."""
        if self._base is not None:
            return self._base
        async with self._lock:
            if self._base is None:
                self._base = URL(f"{await self._decide_scheme(context)}://{self.host}")
        return self._base

    async def _decide_scheme(self, context: str) -> str:
        if self.options.plain_http:
            return "http"
        if not self._loopback:
            return "https"
        probe = Request("GET", URL(f"https://{self.host}/v2/"), context)
        try:
            response = await self._probe_handler.send(probe)
        except NotTLSError:
            return "http"
        # Any HTTP answer (200, 401, 404) proves the server speaks TLS.
        response.release()
        return "https"

    async def send(
        self,
        method: str,
        target: str | URL,
        *,
        context: str,
        headers: Headers | None = None,
        query: Mapping[str, str] | None = None,
        body: Body = None,
    ) -> Response:
        """Send a request through the stack.

        ``target`` is a path on the registry (``/v2/...``, built from validated names only) or
        an absolute URL the registry handed out (an upload ``Location``), used as given.
        ``query`` parameters are added, encoded.
        ``context`` (``"<reference>: <operation>"``) prefixes every error.
        """
        if isinstance(target, URL):
            url = target
        else:
            url = URL(f"{await self.base_url(context)}{target}", encoded=True)
        if query:
            url = url.update_query(query)
        request = Request(method, url, context, CIMultiDict(headers or ()), body)
        return await self.handler.send(request)


async def _anonymous() -> Credentials | None:
    return None
