"""Per-registry HTTP settings (:class:`HttpOptions`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ociflow.http.retry import RetryPolicy


def _default_user_agent() -> str:
    # Imported on call: ``ociflow/__init__`` may import modules that import this one.
    from ociflow import __version__

    return f"ociflow/{__version__}"


@dataclass(frozen=True)
class HttpOptions:
    """How to talk to a registry.

    ``plain_http`` forces ``http://``; ``insecure`` skips TLS certificate verification.
    ``stall_timeout`` is the longest wait for *any* bytes on an open connection, not a cap on a
    whole transfer (a total timeout would kill a healthy slow download; reliability.md P14/P15).
    ``retry`` is the retry budget and backoff for requests and resumed bodies.
    """

    plain_http: bool = False
    insecure: bool = False
    stall_timeout: float = 60.0
    connect_timeout: float = 30.0
    user_agent: str = field(default_factory=_default_user_agent)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
