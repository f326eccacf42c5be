"""Per-registry HTTP settings (:class:`HttpOptions`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ociflow.http.credentials import AzureAD, Credentials
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
    ``credentials`` are used when the registry asks for them (an :class:`AzureAD` sign-in is
    exchanged for an ACR token); None looks them up in the Docker config (``auth_file``, else
    the default places; :mod:`ociflow.http.dockerconfig`).
    """

    plain_http: bool = False
    insecure: bool = False
    stall_timeout: float = 60.0
    connect_timeout: float = 30.0
    user_agent: str = field(default_factory=_default_user_agent)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    credentials: Credentials | AzureAD | None = None
    auth_file: str | None = None
    # Blob transfer knobs (ociflow.targets.blob_download / blob_upload); sizes in bytes.
    chunk_size: int = 64 * 1024 * 1024
    """PATCH size of a chunked upload (raised to the registry's OCI-Chunk-Min-Length); under
    the 100 MB request bodies some proxies cap."""
    chunked_threshold: int = 256 * 1024 * 1024
    """Blobs of at least this size are uploaded in chunks; smaller ones in one PUT."""
    range_parallel: int | None = None
    """Connections fetching one large blob as byte ranges; 1 turns ranged downloads off. None:
    4, but 1 for a loopback registry (no per-connection cap to beat there; CPU is the limit)."""
    range_threshold: int = 64 * 1024 * 1024
    """Blobs larger than this are fetched as parallel ranges."""
    range_size: int = 8 * 1024 * 1024
    """Bytes per ranged request of a parallel download."""
