"""The headers layer: what every request carries."""

from __future__ import annotations

from ociflow.http.message import Handler, Layer, Request, Response


class HeadersLayer(Layer):
    """Sets ``User-Agent`` and ``Accept-Encoding: identity`` unless the request has its own.

    Responses are never decompressed (the session runs with ``auto_decompress=False``, so
    digests and byte ranges apply to stored bytes; reliability.md §2.2.5). Asking for identity
    keeps a registry or proxy from sending an encoding nothing would decode.
    """

    def __init__(self, inner: Handler, user_agent: str) -> None:
        super().__init__(inner)
        self.user_agent = user_agent

    async def send(self, request: Request) -> Response:
        request.headers.setdefault("User-Agent", self.user_agent)
        request.headers.setdefault("Accept-Encoding", "identity")
        return await self.inner.send(request)
