"""The redirect layer: follow redirects by hand, with the rules aiohttp cannot be trusted with.

Registries redirect blob GETs to object storage (protocol.md §5.3). The bottom transport never
follows redirects (``allow_redirects=False``); this layer does, for GET and HEAD only (a body
cannot be re-sent, and 301/302 would turn a PUT into a GET), at most :data:`MAX_REDIRECTS` hops
(reliability.md R3). It refuses https→http (R1) and drops credentials once the origin changes
(distribution-spec: MUST NOT forward ``Authorization`` across hosts; R5/R6 — aiohttp dropped
only the first of duplicate headers, and kept them across a port change, until 2026).
"""

from __future__ import annotations

import dataclasses

from yarl import URL

from ociflow.errors import RegistryError
from ociflow.http.addresses import is_local, is_local_address
from ociflow.http.message import Layer, Request, Response
from ociflow.http.redact import redact_url

MAX_REDIRECTS = 10
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
FOLLOWED_METHODS = frozenset({"GET", "HEAD"})
# Headers that carry credentials and so stay with the origin they were meant for.
CREDENTIAL_HEADERS = ("Authorization", "Proxy-Authorization", "Cookie")


def origin(url: URL) -> tuple[str, str, int | None]:
    """(scheme, host, port) with the default port filled in (RFC 6454)."""
    return (url.scheme, (url.host or "").lower(), url.port)


class RedirectLayer(Layer):
    """Follows 301/302/303/307/308 for GET/HEAD; other methods get the 3xx response as is."""

    async def send(self, request: Request) -> Response:
        response = await self.inner.send(request)
        hops = 0
        while response.status in REDIRECT_STATUSES and request.method in FOLLOWED_METHODS:
            location = response.headers.get("Location")
            if not location:
                return response  # the caller maps a bare 3xx like any unexpected status
            status = response.status
            response.release()
            hops += 1
            if hops > MAX_REDIRECTS:
                raise RegistryError(
                    f"{request.context}: more than {MAX_REDIRECTS} redirects", status=status
                )
            target = _resolve(request, location, status)
            if is_local_address(target.host or "") and not is_local(request.url.host or ""):
                # A public name pivoting to a private or link-local address (SSRF, R2).
                raise RegistryError(
                    f"{request.context}: refusing a redirect from {request.url.host} to the "
                    f"private address {target.host}",
                    status=status,
                )
            if request.url.scheme == "https" and target.scheme != "https":
                raise RegistryError(
                    f"{request.context}: refusing a redirect from https to "
                    f"{redact_url(target)} (downgrade)",
                    status=status,
                )
            headers = request.headers.copy()
            if origin(target) != origin(request.url):
                for name in CREDENTIAL_HEADERS:
                    headers.popall(name, None)  # every copy of it, not just the first
            request = dataclasses.replace(request, url=target, headers=headers)
            response = await self.inner.send(request)
        return response


def _resolve(request: Request, location: str, status: int) -> URL:
    try:
        target = request.url.join(URL(location, encoded=True))
    except ValueError:
        target = None
    if target is None or target.scheme not in ("http", "https") or not target.host:
        raise RegistryError(
            f"{request.context}: invalid redirect location {redact_url(location)}", status=status
        )
    return target
