"""The small protocols every target implements, and ``open_source`` / ``open_destination``.

A *Source* resolves its reference and hands out manifests (exact, verified bytes) and blob
streams (raw chunks; the engine verifies them). A *Destination* says what it already has, takes
blobs from a re-openable stream, and takes manifests; the root manifest last, with its tag.
Targets declare :class:`Capabilities`; the engine adapts to them and never sniffs target types.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from ociflow.descriptor import Descriptor
from ociflow.reference import LayoutReference, Reference, RegistryReference, parse_reference

if TYPE_CHECKING:
    from ociflow.http.transport import HttpOptions, Session

# Chunks of this size are read from sources and handed to destinations: large enough that a
# worker-thread hop per chunk is cheap, small enough that jobs x 2 chunks stays a few MiB.
CHUNK_SIZE = 1024 * 1024

BlobStream = AsyncGenerator[bytes, None]
"""Chunks of one blob, in order. Close it with ``aclose()`` when not read to the end."""

Opener = Callable[[], BlobStream]
"""Returns a fresh stream of a blob's content, *verified*: a stream whose content does not match
its descriptor raises :class:`~ociflow.errors.DigestMismatchError` instead of yielding its last
chunk, so a destination that commits only after the stream ends never commits bad bytes."""


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a destination can do; the engine adapts to it."""

    concurrent_writes: bool = True
    """Blobs may be pushed concurrently (false for a single tar stream)."""
    mount: bool = False
    """Blobs can be mounted from another repository of the same registry."""


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

    def fetch_blob(self, desc: Descriptor) -> BlobStream:
        """The raw content of a blob, in chunks of up to :data:`CHUNK_SIZE`; not verified."""
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
        """Store a blob from a verified stream; visible only once the stream ended cleanly."""
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
    ref: str | Reference, session: Session, options: HttpOptions | None = None
) -> Destination:
    """A Destination for ``ref``."""
    return _open(ref, session, options, source=False)  # type: ignore[return-value]


def _open(
    ref: str | Reference, session: Session, options: HttpOptions | None, *, source: bool
) -> Source | Destination:
    parsed = parse_reference(ref) if isinstance(ref, str) else ref
    if isinstance(parsed, LayoutReference):
        from ociflow.targets.layout import LayoutTarget

        return LayoutTarget(parsed, create=not source)
    if isinstance(parsed, RegistryReference):
        from ociflow.targets.registry import RegistryTarget

        return RegistryTarget(parsed, session.registry(parsed, options))
    raise TypeError(f"not a reference: {parsed!r}")
