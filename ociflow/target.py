"""The small protocols every target implements, and ``open_source`` / ``open_destination``.

A *Source* resolves its reference and hands out manifests (exact, verified bytes) and blob
streams (raw chunks, from any offset; the engine verifies them). A *Destination* says what it
already has, takes blobs from a re-openable stream, and takes manifests; the root manifest last,
with its tag. Targets declare :class:`Capabilities`; the engine adapts to them and never sniffs
target types.

*Resume points.* A destination holding the first bytes of a blob from an interrupted run (a
layout's partial file) continues it through :class:`ResumableOpener`: it feeds those bytes to a
:class:`~ociflow.digest.Verifier` and asks for the rest, which the opener fetches from that
offset and verifies through the same verifier, so the whole blob is still checked once, in
order. This is an optional extension of :data:`Opener` (a plain zero-argument callable stays a
valid opener; a destination then starts from byte 0), so that simple callers need not care.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from ociflow.descriptor import Descriptor
from ociflow.digest import Verifier
from ociflow.reference import LayoutReference, Reference, RegistryReference, parse_reference

if TYPE_CHECKING:
    from ociflow.http.transport import HttpOptions, Session
    from ociflow.targets.blob_upload import SessionStore

# Chunks of this size are read from sources and handed to destinations. Measured on the 2-core
# dev box (benchmarks/run.py, 4 jobs): 2 MiB pulls a 512 MiB blob as fast as 4 MiB and ~8 %
# faster than 1 MiB, and keeps peak RSS at 81 MB pushing five layers, where 4 MiB reached
# 106 MB (over the 100 MB budget).
CHUNK_SIZE = 2 * 1024 * 1024

BlobStream = AsyncGenerator[bytes, None]
"""Chunks of one blob, in order. Close it with ``aclose()`` when not read to the end."""

Opener = Callable[[], BlobStream]
"""Returns a fresh stream of a blob's content, *verified*: a stream whose content does not match
its descriptor raises :class:`~ociflow.errors.DigestMismatchError` instead of yielding its last
chunk, so a destination that commits only after the stream ends never commits bad bytes."""


@runtime_checkable
class ResumableOpener(Protocol):
    """An :data:`Opener` that can also continue a blob the destination holds in part."""

    def __call__(self) -> BlobStream:
        """A fresh verified stream of the whole blob."""
        ...

    def resume(self, verifier: Verifier) -> BlobStream:
        """The blob from byte ``verifier.received`` on, verified through ``verifier`` (which
        has consumed the bytes before that): it raises DigestMismatchError instead of its last
        chunk when the whole blob, old bytes and new, does not match."""
        ...


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a destination can do; the engine adapts to it."""

    concurrent_writes: bool = True
    """Blobs may be pushed concurrently (false for a single tar stream)."""
    mount: bool = False
    """Blobs can be mounted from another repository of the same registry."""
    single_image: bool = False
    """Holds one image, not an index (a docker archive): an index needs a platform chosen."""


@runtime_checkable
class Source(Protocol):
    @property
    def reference(self) -> Reference:
        """The reference this target was opened for."""
        ...

    async def resolve(self) -> Descriptor:
        """The descriptor of the manifest or index the reference names."""
        ...

    async def fetch_manifest(self, desc: Descriptor) -> bytes:
        """The exact bytes of a manifest, verified against ``desc`` (size capped)."""
        ...

    def fetch_blob(self, desc: Descriptor, *, offset: int = 0) -> BlobStream:
        """The raw content of a blob from byte ``offset`` (0 to ``desc.size``) on, in chunks of
        up to :data:`CHUNK_SIZE`; not verified."""
        ...

    async def close(self) -> None: ...


@runtime_checkable
class Destination(Protocol):
    capabilities: Capabilities

    @property
    def reference(self) -> Reference:
        """The reference this target was opened for (its tag is what the root is tagged)."""
        ...

    async def exists(self, desc: Descriptor) -> bool:
        """Whether the destination already holds this blob or manifest."""
        ...

    async def mount(self, desc: Descriptor, source: Source) -> bool:
        """Try to mount a blob from ``source``; False when it cannot (then it is pushed)."""
        ...

    async def push_blob(self, desc: Descriptor, open_stream: Opener) -> None:
        """Store a blob from a verified stream; visible only once the stream ended cleanly.

        ``open_stream`` may be a :class:`ResumableOpener`; a destination that kept part of the
        blob from an interrupted run may then ask only for the rest."""
        ...

    async def push_manifest(self, desc: Descriptor, data: bytes) -> None:
        """Store a non-root manifest by digest (its children are already there)."""
        ...

    async def push_root(self, desc: Descriptor, data: bytes, tag: str | None) -> None:
        """Store the root manifest and point ``tag`` at it (or record it untagged)."""
        ...

    async def close(self) -> None: ...


def open_source(
    ref: str | Reference, session: Session, options: HttpOptions | None = None
) -> Source:
    """A Source for ``ref`` (a string with a transport prefix, or a parsed reference)."""
    return _open(ref, session, options, source=True)  # type: ignore[return-value]


def open_destination(
    ref: str | Reference,
    session: Session,
    options: HttpOptions | None = None,
    *,
    resume: bool = True,
    sessions: SessionStore | None = None,
) -> Destination:
    """A Destination for ``ref``.

    ``resume``: what an interrupted write leaves behind is kept for the next run to continue
    (a layout's partial files); False discards it. ``sessions``: where a registry destination
    records its open upload sessions (None: not recorded, and a cancelled upload is deleted).
    """
    return _open(  # type: ignore[return-value]
        ref, session, options, source=False, resume=resume, sessions=sessions
    )


def _open(
    ref: str | Reference,
    session: Session,
    options: HttpOptions | None,
    *,
    source: bool,
    resume: bool = True,
    sessions: SessionStore | None = None,
) -> Source | Destination:
    parsed = parse_reference(ref) if isinstance(ref, str) else ref
    if isinstance(parsed, LayoutReference) and parsed.archive:
        from ociflow.targets.archive import (
            DockerArchiveWriter,
            OciArchiveReader,
            OciArchiveWriter,
        )

        if source:  # Docker's own archives (v25 on) are OCI layouts too
            return OciArchiveReader(parsed)
        if parsed.transport == "docker-archive":
            return DockerArchiveWriter(parsed)
        return OciArchiveWriter(parsed)
    if isinstance(parsed, LayoutReference):
        from ociflow.targets.layout import LayoutTarget

        return LayoutTarget(parsed, create=not source, resume=resume)
    if isinstance(parsed, RegistryReference):
        from ociflow.targets.registry import RegistryTarget

        return RegistryTarget(parsed, session.registry(parsed, options), sessions=sessions)
    raise TypeError(f"not a reference: {parsed!r}")
