"""The OCI image layout target: a directory read as a Source and written as a Destination.

Layout (image-spec image-layout.md, protocol.md §2.7): ``oci-layout``, ``index.json`` (an image
index whose entries carry tags as ``org.opencontainers.image.ref.name``) and
``blobs/<alg>/<encoded>``.

Safety (reliability.md I1, L1-L5, L8): blob paths are built only from validated digests and
opened one component at a time without following symlinks, so a symlink, FIFO or directory in
``blobs/`` is refused and nothing outside the layout root is read; ``ref.name`` is never a
path; ``oci-layout`` and ``index.json`` reads are capped (CVE-2023-25153). Writes stream into
``.ociflow-ingest/`` (outside ``blobs/``, so other tools never see partial files), are fsync'd,
then renamed into place; ``index.json`` is replaced atomically under an exclusive ``flock`` on
``.ociflow.lock`` so concurrent writers lose no entries. Renames into ``blobs/<alg>`` are made
durable once per :meth:`LayoutTarget.push_root` (before ``index.json`` refers to them), not per
blob. All file I/O runs in worker threads.

*Resumable partial files* (reliability.md P20, L1, L7). A blob is written to
``.ociflow-ingest/<alg>-<encoded>.partial``, a name stable per digest, ``flock``'d while a
process writes it. An interrupted write (cancellation, Ctrl-C, a network failure that outlived
the retries, SIGKILL) leaves it there; the next write of that blob re-hashes its bytes (in
worker threads, a few MiB a hop, so cancellation stays prompt) and, when the opener is a
:class:`~ociflow.target.ResumableOpener`, asks the source only for the rest: the whole blob is
still verified once, in order, before the rename. A partial whose blob turns out wrong is
removed before the error propagates (the engine's one re-fetch then starts from zero); so is a
partial longer than the blob, one left by a write that failed for any other reason (content,
disk full: no retry), and one that is empty. When another process holds the partial's lock, this
one writes a private ``<alg>-<encoded>.<random>.partial`` beside it (the first to finish wins;
the other's rename is skipped), which is never resumed and is removed on failure. Abandoned
private files are swept when a layout is first written; abandoned per-digest partials are kept
for :data:`PARTIAL_MAX_AGE`, unless their blob is already complete. Written bytes go straight to
the file with ``os.write`` (no user-space buffer to lose on a kill); a partial is not fsync'd on
interruption, because its bytes are never trusted without the re-hash.

``index.json`` is read with the manifest cap (:data:`~ociflow.manifest.MAX_MANIFEST_SIZE`)
rather than a larger one, because it is validated with :func:`~ociflow.manifest.parse_manifest`,
which refuses anything bigger.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import stat
import time
from collections.abc import AsyncGenerator, Callable, Mapping
from contextlib import aclosing
from dataclasses import dataclass, replace
from typing import Any, ParamSpec, TypeVar

from ociflow import mediatypes
from ociflow.descriptor import Descriptor
from ociflow.digest import Digest, Verifier, verify_bytes
from ociflow.errors import (
    DigestMismatchError,
    InvalidDigestError,
    InvalidManifestError,
    InvalidReferenceError,
    LayoutError,
    NotFoundError,
    RegistryError,
    TransportError,
)
from ociflow.manifest import MAX_MANIFEST_SIZE, Manifest, check_manifest_size, parse_manifest
from ociflow.reference import LayoutReference, Reference, is_valid_ref_name
from ociflow.target import (
    CHUNK_SIZE,
    BlobStream,
    Capabilities,
    Opener,
    ResumableOpener,
    Source,
)
from ociflow.targets import fsutil

OCI_LAYOUT_FILE = "oci-layout"
INDEX_FILE = "index.json"
BLOBS_DIR = "blobs"
INGEST_DIR = ".ociflow-ingest"
LOCK_FILE = ".ociflow.lock"
PARTIAL_SUFFIX = ".partial"
LAYOUT_VERSION = "1.0.0"
REF_NAME = "org.opencontainers.image.ref.name"
# containerd (and Docker's containerd store) record the full image name here (protocol.md §2.7).
CONTAINERD_NAME = "io.containerd.image.name"
MAX_OCI_LAYOUT_SIZE = 64 * 1024
PARTIAL_MAX_AGE = 7 * 24 * 3600
"""Seconds after its last write that an abandoned per-digest partial file is swept."""
# Bytes of a partial file re-hashed per worker-thread hop: large enough that the hop is cheap,
# small enough that a cancellation waits for at most a few milliseconds of hashing.
REHASH_STEP = 4 * CHUNK_SIZE
MAX_INDEX_SIZE = MAX_MANIFEST_SIZE
log = logging.getLogger(__name__)

_P = ParamSpec("_P")
_R = TypeVar("_R")

_OCI_LAYOUT_BYTES = json.dumps({"imageLayoutVersion": LAYOUT_VERSION}).encode()
_EMPTY_INDEX = {"schemaVersion": 2, "mediaType": mediatypes.OCI_INDEX, "manifests": []}
# Names ociflow itself may have left in a directory before it became a complete layout.
_OWN_NAMES = frozenset({INDEX_FILE, BLOBS_DIR, INGEST_DIR, LOCK_FILE})
# fsutil.atomic_write names its temp files ".<name>.<random>.tmp".
_ROOT_TEMP_PREFIXES = (f".{INDEX_FILE}.", f".{OCI_LAYOUT_FILE}.")
# Failures after which a partial file is worth keeping: the bytes written are as good as they
# were, only the transfer stopped (interrupted, or the network/registry failed past the retries).
_RESUMABLE_FAILURES = (asyncio.CancelledError, KeyboardInterrupt, TransportError, RegistryError)


def partial_name(digest: Digest) -> str:
    """The per-digest name of a blob's resumable partial file in ``.ociflow-ingest/``."""
    return f"{digest.algorithm}-{digest.encoded}{PARTIAL_SUFFIX}"


def _partial_digest(name: str) -> Digest | None:
    """The digest a per-digest partial file name stands for; None for any other name."""
    if not name.endswith(PARTIAL_SUFFIX):
        return None
    algorithm, sep, encoded = name.removesuffix(PARTIAL_SUFFIX).partition("-")
    if not sep:
        return None
    try:
        return Digest(f"{algorithm}:{encoded}")
    except InvalidDigestError:
        return None


@dataclass(slots=True)
class _Partial:
    """A locked temp file in the ingest directory, and that directory's descriptor.

    ``resumable``: the per-digest name, kept after an interruption; ``length``: the bytes it
    held from an earlier run when it was opened (0 for a new or private file).
    """

    fd: int
    name: str
    ingest_fd: int
    resumable: bool = False
    length: int = 0

    def has_data(self) -> bool:
        return os.fstat(self.fd).st_size > 0

    def close(self, *, discard: bool) -> None:
        # Runs on the event loop, also while a task is being cancelled: one unlink and two
        # closes, too small to be worth a thread hop that cancellation could skip.
        try:
            if discard:
                fsutil.unlink_quietly(self.name, self.ingest_fd)
        finally:
            os.close(self.fd)
            os.close(self.ingest_fd)


class LayoutTarget:
    """An OCI image layout directory, as a :class:`Source` and a :class:`Destination`.

    With ``create``, writing creates the layout if the directory is missing or empty. With
    ``resume`` (the default), an interrupted blob write leaves its partial file for the next run
    to continue; without it, partial files are private and removed on any failure.
    """

    def __init__(
        self, reference: LayoutReference, *, create: bool = False, resume: bool = True
    ) -> None:
        self.reference: Reference = reference
        self.capabilities = Capabilities(concurrent_writes=True, mount=False)
        self._ref = reference
        self._path = reference.path
        self._where = f"oci:{reference.path}"
        self._create = create
        self._resume = resume
        self._prepared = False
        self._prepare_lock = asyncio.Lock()
        # blobs/<alg> directories holding renames not yet made durable (fsync'd in push_root).
        self._dirty: set[str] = set()

    # ---- Source ------------------------------------------------------------------------------

    async def resolve(self) -> Descriptor:
        """The index.json entry named by the reference: by digest, else tag, else the only one."""
        index = await asyncio.to_thread(self._guard("reading the layout", self._read_layout))
        return without_names(select_entry(self._ref, index.manifests))

    async def fetch_manifest(self, desc: Descriptor) -> bytes:
        """The verified bytes of the manifest blob ``desc`` (at most MAX_MANIFEST_SIZE)."""
        digest = Digest(desc.digest)
        check_manifest_size(desc, self._where)
        read = self._guard(f"reading manifest {digest}", self._read_manifest)
        return await asyncio.to_thread(read, digest, desc.size)

    async def fetch_blob(
        self, desc: Descriptor, *, offset: int = 0
    ) -> AsyncGenerator[bytes, None]:
        """The raw content of blob ``desc`` from byte ``offset`` on, in chunks of CHUNK_SIZE
        (verified by the caller).

        The file must be a regular file of exactly ``desc.size`` bytes, checked before reading.
        The next chunk is read in a worker thread while the consumer handles the current one.
        """
        digest = Digest(desc.digest)
        if not 0 <= offset <= desc.size:
            raise ValueError(f"offset {offset} outside the blob's {desc.size} bytes")
        loop = asyncio.get_running_loop()
        read = self._guard(f"reading blob {digest}", os.read)
        fd = await asyncio.to_thread(
            self._guard(f"opening blob {digest}", self._open_blob), digest, desc.size, offset
        )
        remaining = desc.size - offset
        pending: asyncio.Future[bytes] | None = None
        try:
            if remaining:
                pending = loop.run_in_executor(None, read, fd, min(CHUNK_SIZE, remaining))
            while pending is not None:
                # shield: a cancelled await must not look like a finished read, or the fd
                # would be closed under the worker thread still reading it.
                chunk = await asyncio.shield(pending)
                pending = None
                if not chunk:
                    break  # truncated under us: the verifier reports the short stream
                remaining -= len(chunk)
                if remaining > 0:
                    pending = loop.run_in_executor(None, read, fd, min(CHUNK_SIZE, remaining))
                yield chunk
        finally:
            _after(pending, lambda: os.close(fd))

    # ---- Destination -------------------------------------------------------------------------

    async def exists(self, desc: Descriptor) -> bool:
        """A regular file of ``desc.size`` bytes is at the blob path (a symlink is an error)."""
        digest = Digest(desc.digest)
        # A few local syscalls (open, lstat, close): cheaper than the thread hop around them,
        # which for an image of many small blobs costs more than the blobs' own I/O.
        return self._guard(f"checking blob {digest}", self._exists)(digest, desc.size)

    async def mount(self, desc: Descriptor, source: Source) -> bool:
        """Layouts cannot mount; the engine pushes instead."""
        return False

    async def push_blob(self, desc: Descriptor, open_stream: Opener) -> None:
        """Store a blob from a verified stream; it appears at its final path only when complete.

        A blob already present is left untouched and its stream never opened. A partial file
        of the blob left by an interrupted run is re-hashed and continued when ``open_stream``
        is a :class:`~ociflow.target.ResumableOpener` (see the module docstring).
        """
        await self._prepare()
        if await self.exists(desc):
            return
        await self._ingest(desc, open_stream, resumable=self._resume)

    async def push_manifest(self, desc: Descriptor, data: bytes) -> None:
        """Verify ``data`` against ``desc`` and store it as a blob."""
        digest = Digest(desc.digest)
        await asyncio.to_thread(verify_bytes, data, digest, desc.size, f"{self._where}: manifest")
        await self._prepare()
        if await self.exists(desc):
            return
        await self._ingest(desc, lambda: _single(data), resumable=False)

    async def push_root(self, desc: Descriptor, data: bytes, tag: str | None) -> None:
        """Store the root manifest, then record it in index.json (tagged, or untagged).

        A tag moves: other entries with the same ``ref.name`` are removed. Other entries are
        written back exactly as read, unknown fields included.
        """
        if tag is not None and not is_valid_ref_name(tag):
            raise InvalidReferenceError(f"{self._where}: invalid tag {tag!r} for an OCI layout")
        await self.push_manifest(desc, data)
        await asyncio.to_thread(self._guard(f"updating {INDEX_FILE}", self._publish), desc, tag)

    async def close(self) -> None:
        """Remove the ingest directory if this target wrote and left it empty."""
        if self._prepared:
            await asyncio.to_thread(self._guard("cleaning up", self._remove_ingest_dir))

    # ---- reading (worker threads) ------------------------------------------------------------

    def _guard(self, operation: str, fn: Callable[_P, _R]) -> Callable[_P, _R]:
        """``fn``, with an OSError (ENOSPC, EACCES, ...) raised as a LayoutError naming the
        layout and ``operation``."""

        def call(*args: _P.args, **kwargs: _P.kwargs) -> _R:
            try:
                return fn(*args, **kwargs)
            except OSError as exc:
                detail = exc.strerror or str(exc)
                if exc.filename is not None:
                    detail += f": {os.fsdecode(exc.filename)}"
                raise LayoutError(f"{self._where}: {operation}: {detail}") from exc

        return call

    def _open_root(self) -> int:
        try:
            return fsutil.open_root(self._path, self._where)
        except FileNotFoundError:
            raise LayoutError(
                f"{self._where}: not an OCI image layout (no such directory)"
            ) from None

    def _read_layout(self) -> Manifest:
        root = self._open_root()
        try:
            return self._check_layout(root)
        finally:
            os.close(root)

    def _check_layout(self, root: int) -> Manifest:
        """Validate ``oci-layout`` and return the parsed ``index.json``."""
        marker = fsutil.read_file(
            OCI_LAYOUT_FILE, root, f"{self._where}: {OCI_LAYOUT_FILE}", MAX_OCI_LAYOUT_SIZE
        )
        if marker is None:
            raise LayoutError(f"{self._where}: not an OCI image layout (no {OCI_LAYOUT_FILE})")
        check_layout_marker(marker, self._where)
        index, _ = self._read_index(root)
        return index

    def _read_index(self, root: int) -> tuple[Manifest, bytes]:
        data = fsutil.read_file(INDEX_FILE, root, f"{self._where}: {INDEX_FILE}", MAX_INDEX_SIZE)
        if data is None:
            raise LayoutError(f"{self._where}: not an OCI image layout (no {INDEX_FILE})")
        return parse_index(data, self._where), data

    def _blob_dir(self, root: int, digest: Digest, *, create: bool = False) -> int:
        """``blobs/<alg>`` opened without following symlinks (FileNotFoundError if missing)."""
        blobs = fsutil.open_dir(BLOBS_DIR, root, f"{self._where}: {BLOBS_DIR}", create=create)
        try:
            return fsutil.open_dir(
                digest.algorithm,
                blobs,
                f"{self._where}: {BLOBS_DIR}/{digest.algorithm}",
                create=create,
            )
        finally:
            os.close(blobs)

    def _open_blob(self, digest: Digest, size: int, offset: int = 0, what: str = "blob") -> int:
        """Open a blob for reading at ``offset``; it must be a regular file of ``size`` bytes."""
        root = self._open_root()
        try:
            alg = self._blob_dir(root, digest)
            try:
                fd, st = fsutil.open_regular(digest.encoded, alg, f"{self._where}: {what} {digest}")
            finally:
                os.close(alg)
        except FileNotFoundError:
            raise NotFoundError(f"{self._where}: {what} {digest} not found in the layout") from None
        finally:
            os.close(root)
        if st.st_size != size:
            os.close(fd)
            raise DigestMismatchError(
                f"{self._where}: {what} {digest}: size mismatch, expected {size} bytes, "
                f"the layout holds {st.st_size}"
            )
        if offset:
            try:
                os.lseek(fd, offset, os.SEEK_SET)
            except BaseException:
                os.close(fd)
                raise
        return fd

    def _read_manifest(self, digest: Digest, size: int) -> bytes:
        fd = self._open_blob(digest, size, what="manifest")
        try:
            data = fsutil.read_limited(fd, size)
        finally:
            os.close(fd)
        verify_bytes(data, digest, size, f"{self._where}: manifest")
        return data

    # ---- writing (worker threads) ------------------------------------------------------------

    def _exists(self, digest: Digest, size: int) -> bool:
        try:
            root = fsutil.open_root(self._path, self._where)
        except FileNotFoundError:
            return False
        try:
            alg = self._blob_dir(root, digest)
        except FileNotFoundError:
            return False
        finally:
            os.close(root)
        try:
            st = fsutil.lstat_regular(digest.encoded, alg, f"{self._where}: blob {digest}")
        finally:
            os.close(alg)
        return st is not None and st.st_size == size

    async def _prepare(self) -> None:
        """Check (or create) the layout once, and sweep temp files abandoned by dead writers."""
        async with self._prepare_lock:
            if not self._prepared:
                await asyncio.to_thread(self._guard("preparing the layout", self._prepare_sync))
                self._prepared = True

    def _prepare_sync(self) -> None:
        if self._create:
            try:
                os.makedirs(self._path, exist_ok=True)
            except FileExistsError:
                raise LayoutError(f"{self._where}: not a directory") from None
        root = self._open_root()
        try:
            names = set(os.listdir(root))
            if OCI_LAYOUT_FILE not in names:
                if not self._create:
                    raise LayoutError(
                        f"{self._where}: not an OCI image layout (no {OCI_LAYOUT_FILE})"
                    )
                foreign = sorted(n for n in names if not _is_own(n))
                if foreign:
                    raise LayoutError(
                        f"{self._where}: the directory is neither empty nor an OCI image layout "
                        f"(it holds {', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''})"
                    )
                with fsutil.exclusive_lock(LOCK_FILE, root):
                    self._create_layout(root)
            self._check_layout(root)
            os.close(fsutil.open_dir(BLOBS_DIR, root, f"{self._where}: {BLOBS_DIR}", create=True))
            try:
                ingest = fsutil.open_dir(INGEST_DIR, root, f"{self._where}: {INGEST_DIR}")
            except FileNotFoundError:
                return
            try:
                fsutil.sweep_abandoned(
                    PARTIAL_SUFFIX, ingest, keep=lambda name, st: self._keep_partial(root, name, st)
                )
            finally:
                os.close(ingest)
        finally:
            os.close(root)

    def _keep_partial(self, root: int, name: str, st: os.stat_result) -> bool:
        """Whether an abandoned partial file is worth keeping for a later run: a per-digest
        one, written to recently, whose blob is not complete in the layout yet."""
        digest = _partial_digest(name)
        if digest is None or time.time() - st.st_mtime > PARTIAL_MAX_AGE:
            return False
        try:
            alg = self._blob_dir(root, digest)
        except (FileNotFoundError, LayoutError):
            return True
        try:
            done = os.stat(digest.encoded, dir_fd=alg, follow_symlinks=False)
        except FileNotFoundError:
            return True
        finally:
            os.close(alg)
        return not stat.S_ISREG(done.st_mode)

    def _create_layout(self, root: int) -> None:
        """Make ``root`` a layout; called under the lock, so a racing creator finds it done."""
        _remove_stale_temps(root)
        names = set(os.listdir(root))
        if OCI_LAYOUT_FILE in names:
            return
        os.close(fsutil.open_dir(BLOBS_DIR, root, f"{self._where}: {BLOBS_DIR}", create=True))
        if INDEX_FILE in names:
            self._read_index(root)  # keep a valid index left by an interrupted creation
        else:
            fsutil.atomic_write(INDEX_FILE, root, _dump(_EMPTY_INDEX))
        # oci-layout last: its presence says the layout is complete.
        fsutil.atomic_write(OCI_LAYOUT_FILE, root, _OCI_LAYOUT_BYTES)

    async def _ingest(self, desc: Descriptor, open_stream: Opener, *, resumable: bool) -> None:
        """Stream into a locked partial file, fsync it, and rename it to ``blobs/<alg>/<enc>``.

        Writing chunk i in a worker thread overlaps producing chunk i+1. With ``resumable``, the
        per-digest partial is used: continued if an earlier run left one, and kept after an
        interruption or a network failure. On any other failure the file is removed. Nothing
        ever appears at the final path unless complete and verified.
        """
        digest = Digest(desc.digest)
        size = desc.size
        loop = asyncio.get_running_loop()
        operation = f"writing blob {digest}"
        write = self._guard(operation, fsutil.write_all)
        begin = loop.run_in_executor(
            None, self._guard(operation, self._begin), digest, size, resumable
        )
        try:
            partial = await asyncio.shield(begin)
        except asyncio.CancelledError:
            begin.add_done_callback(_release_partial)
            raise
        inflight: asyncio.Future[Any] | None = None
        committed = keep = False
        try:
            verifier: Verifier | None = None
            if partial.length and not isinstance(open_stream, ResumableOpener):
                # This opener can only start from byte 0: the earlier bytes are of no use.
                inflight = loop.run_in_executor(None, self._guard(operation, _restart), partial)
                await asyncio.shield(inflight)
            elif partial.length:
                verifier = Verifier(digest, size, f"blob {desc.media_type}")
                rehash = self._guard(f"re-reading the partial file of blob {digest}", _rehash)
                for start in range(0, partial.length, REHASH_STEP):
                    step = min(REHASH_STEP, partial.length - start)
                    inflight = loop.run_in_executor(
                        None, rehash, partial.fd, start, step, verifier
                    )
                    await asyncio.shield(inflight)
                log.debug("%s: blob %s: continuing after the %d bytes of a partial file",
                          self._where, digest, verifier.received)
            if verifier is not None:
                assert isinstance(open_stream, ResumableOpener)
                stream = open_stream.resume(verifier)
            else:
                stream = open_stream()
            written = verifier.received if verifier is not None else 0
            # Each chunk is written when the next one arrives, so the last one is written by
            # the same worker call that commits the blob: one thread hop fewer per blob.
            held = b""
            async with aclosing(_closable(stream)) as chunks:
                async for chunk in chunks:
                    written += len(chunk)
                    if written > size:
                        raise DigestMismatchError(
                            f"{self._where}: blob {digest}: received more than the expected "
                            f"{size} bytes"
                        )
                    if inflight is not None:
                        await asyncio.shield(inflight)
                        inflight = None
                    if held:
                        inflight = loop.run_in_executor(None, write, partial.fd, held)
                    held = chunk
                if inflight is not None:
                    await asyncio.shield(inflight)
            if written != size:
                raise DigestMismatchError(
                    f"{self._where}: blob {digest}: size mismatch, expected {size} bytes, "
                    f"received {written}"
                )
            commit = self._guard(operation, self._commit)
            inflight = loop.run_in_executor(None, commit, partial, digest, size, held)
            await asyncio.shield(inflight)
            committed = True
        except BaseException as exc:
            # Keep what was written only when the bytes are not in doubt (L1, L7).
            keep = partial.resumable and isinstance(exc, _RESUMABLE_FAILURES)
            raise
        finally:
            try:
                if inflight is not None and not inflight.done():
                    # A worker thread cannot be interrupted: let it finish before cleaning up.
                    await asyncio.wait({inflight})
            finally:
                # Cancelled again while waiting: clean up when the worker is done.
                _after(
                    inflight,
                    lambda: partial.close(
                        discard=not committed and not (keep and partial.has_data())
                    ),
                )

    def _begin(self, digest: Digest, size: int, resumable: bool) -> _Partial:
        root = self._open_root()
        try:
            # Create blobs/<alg> now, so that a layout error surfaces before any transfer.
            os.close(self._blob_dir(root, digest, create=True))
            attempts = 5
            while True:
                try:
                    return self._open_partial(root, digest, size, resumable)
                except FileNotFoundError:
                    # Another writer's close() removed the empty ingest directory between
                    # our mkdir and create; once our file is in it, it cannot be removed.
                    attempts -= 1
                    if not attempts:
                        raise
        finally:
            os.close(root)

    def _open_partial(self, root: int, digest: Digest, size: int, resumable: bool) -> _Partial:
        """The per-digest partial file, locked (with the length it holds), when ``resumable``
        and no other process is writing it; else a new private one."""
        ingest = fsutil.open_dir(INGEST_DIR, root, f"{self._where}: {INGEST_DIR}", create=True)
        try:
            if resumable:
                name = partial_name(digest)
                opened = fsutil.open_locked(
                    name, ingest, f"{self._where}: {INGEST_DIR}/{name}"
                )
                if opened is not None:
                    fd, length = opened
                    try:
                        if length > size:
                            # Not a prefix of this blob, whatever it is.
                            os.ftruncate(fd, 0)
                            length = 0
                        os.lseek(fd, length, os.SEEK_SET)
                    except BaseException:
                        os.close(fd)
                        raise
                    return _Partial(fd, name, ingest, resumable=True, length=length)
                log.debug("%s: blob %s is being written by another process; writing a "
                          "private copy", self._where, digest)
            fd, name = fsutil.create_locked_temp(
                f"{digest.algorithm}-{digest.encoded}", PARTIAL_SUFFIX, ingest
            )
        except BaseException:
            os.close(ingest)
            raise
        return _Partial(fd, name, ingest)

    def _commit(self, partial: _Partial, digest: Digest, size: int, last: bytes = b"") -> None:
        """Write ``last`` (the blob's final chunk), fsync, and rename the partial into place."""
        if last:
            fsutil.write_all(partial.fd, last)
        os.fsync(partial.fd)
        root = self._open_root()
        try:
            alg = self._blob_dir(root, digest, create=True)
        finally:
            os.close(root)
        try:
            present = fsutil.lstat_regular(digest.encoded, alg, f"{self._where}: blob {digest}")
            if present is not None and present.st_size == size:
                # Another writer won the race with the same verified content: keep its file.
                fsutil.unlink_quietly(partial.name, partial.ingest_fd)
                return
            os.replace(partial.name, digest.encoded, src_dir_fd=partial.ingest_fd, dst_dir_fd=alg)
            self._dirty.add(digest.algorithm)
        finally:
            os.close(alg)

    def _sync_blob_dirs(self, root: int) -> None:
        """Make the blob renames so far durable (before index.json refers to them)."""
        if not self._dirty:
            return
        blobs = fsutil.open_dir(BLOBS_DIR, root, f"{self._where}: {BLOBS_DIR}")
        try:
            for algorithm in sorted(self._dirty):
                fd = fsutil.open_dir(algorithm, blobs, f"{self._where}: {BLOBS_DIR}/{algorithm}")
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
                self._dirty.discard(algorithm)
            os.fsync(blobs)
        finally:
            os.close(blobs)

    def _publish(self, desc: Descriptor, tag: str | None) -> None:
        root = self._open_root()
        try:
            self._sync_blob_dirs(root)
            # Read-modify-write under the lock, all in this one thread call, so that a
            # cancelled caller can never leave the lock held (L3).
            with fsutil.exclusive_lock(LOCK_FILE, root):
                _remove_stale_temps(root)
                _, data = self._read_index(root)
                # parse_manifest validated it (no duplicate keys); re-read as plain dicts so
                # that fields ociflow does not model are written back unchanged.
                document: dict[str, Any] = json.loads(data)
                entries: list[Any] = document["manifests"]
                updated = _updated_entries(entries, desc, tag)
                if updated is None:
                    return
                document["schemaVersion"] = 2
                document.setdefault("mediaType", mediatypes.OCI_INDEX)
                document["manifests"] = updated
                fsutil.atomic_write(INDEX_FILE, root, _dump(document))
        finally:
            os.close(root)

    def _remove_ingest_dir(self) -> None:
        try:
            root = fsutil.open_root(self._path, self._where)
        except (FileNotFoundError, LayoutError):
            return
        try:
            os.rmdir(INGEST_DIR, dir_fd=root)
        except OSError:
            pass  # not empty (another writer is busy) or already gone
        finally:
            os.close(root)


def _is_own(name: str) -> bool:
    """A name ociflow creates in a layout's root (its files, or their temporary versions)."""
    temp = name.startswith(_ROOT_TEMP_PREFIXES) and name.endswith(".tmp")
    return temp or name in _OWN_NAMES


def _remove_stale_temps(root: int) -> None:
    """Remove temp versions of index.json and oci-layout left by a writer that died.

    Only call under the layout lock: every writer of these files holds it (L2).
    """
    for name in os.listdir(root):
        if name.startswith(_ROOT_TEMP_PREFIXES) and name.endswith(".tmp"):
            fsutil.unlink_quietly(name, root)


def _release_partial(begin: asyncio.Future[_Partial]) -> None:
    """Close the file a cancelled ``_begin`` opened after its caller stopped waiting: a
    resumable partial is kept (unless empty), a private one removed."""
    if not begin.cancelled() and begin.exception() is None:
        partial = begin.result()
        partial.close(discard=not (partial.resumable and partial.has_data()))


def _restart(partial: _Partial) -> None:
    """Empty a partial file, to be written from byte 0."""
    os.ftruncate(partial.fd, 0)
    os.lseek(partial.fd, 0, os.SEEK_SET)
    partial.length = 0


def _rehash(fd: int, start: int, count: int, verifier: Verifier) -> None:
    """Feed bytes ``start`` to ``start + count`` of a partial file to ``verifier``."""
    while count > 0:
        data = os.pread(fd, min(count, CHUNK_SIZE), start)
        if not data:
            # Cannot happen while we hold the lock on a file of that length (unless another
            # program ignores the lock); the partial is then discarded.
            raise OSError(errno.EIO, f"the file ended at byte {start}, before its known length")
        verifier.update(data)
        start += len(data)
        count -= len(data)


def _after(future: asyncio.Future[Any] | None, cleanup: Callable[[], None]) -> None:
    """Run ``cleanup()`` now, or once ``future`` (a worker using the resource) is done."""
    if future is None or future.done():
        if future is not None and not future.cancelled():
            future.exception()  # mark it retrieved; the error, if any, was already raised
        cleanup()
        return

    def done(f: asyncio.Future[Any]) -> None:
        if not f.cancelled():
            f.exception()
        cleanup()

    future.add_done_callback(done)


def _annotation(desc: Descriptor, key: str) -> str | None:
    return desc.annotations.get(key) if desc.annotations else None


def _tags(entries: tuple[Descriptor, ...]) -> str:
    names = sorted({t for e in entries if (t := _annotation(e, REF_NAME)) is not None})
    return ", ".join(names) or "none"


def check_layout_marker(data: bytes, where: str) -> None:
    """Refuse an ``oci-layout`` file that does not say layout version 1."""
    try:
        version = json.loads(data).get("imageLayoutVersion")
    except (ValueError, UnicodeDecodeError, AttributeError, RecursionError):
        version = None
    if not isinstance(version, str) or version.split(".")[0] != "1":
        raise LayoutError(
            f"{where}: invalid {OCI_LAYOUT_FILE}: expected imageLayoutVersion {LAYOUT_VERSION!r}"
        )


def parse_index(data: bytes, where: str) -> Manifest:
    """The parsed ``index.json`` of a layout (a LayoutError when it is not a valid index)."""
    try:
        return parse_manifest(data, mediatypes.OCI_INDEX)
    except InvalidManifestError as exc:
        raise LayoutError(f"{where}: invalid {INDEX_FILE}: {exc}") from None


def select_entry(ref: LayoutReference, entries: tuple[Descriptor, ...]) -> Descriptor:
    """The ``index.json`` entry ``ref`` names: by digest, else by tag, else the only one."""
    if ref.digest is not None:
        for entry in entries:
            if entry.digest == ref.digest:
                return entry
        raise NotFoundError(f"{ref}: manifest {ref.digest} is not listed in {INDEX_FILE}")
    if ref.tag is not None:
        matches = [e for e in entries if _annotation(e, REF_NAME) == ref.tag] or [
            e
            for e in entries
            if (_annotation(e, CONTAINERD_NAME) or "").endswith(f":{ref.tag}")
        ]
        if not matches:
            raise NotFoundError(
                f"{ref}: tag not found in the layout (available: {_tags(entries)})"
            )
        if len({m.digest for m in matches}) > 1:
            raise LayoutError(
                f"{ref}: the tag names {len(matches)} different manifests in {INDEX_FILE}"
            )
        return matches[0]
    if len(entries) == 1:
        return entries[0]
    if not entries:
        raise NotFoundError(f"{ref}: the layout's {INDEX_FILE} lists no images")
    raise NotFoundError(
        f"{ref}: the layout holds {len(entries)} images; name one with :TAG or @DIGEST "
        f"(available: {_tags(entries)})"
    )


def without_names(desc: Descriptor) -> Descriptor:
    """The entry without the layout-local name annotations (they name it only in this index)."""
    if not desc.annotations:
        return desc
    rest = {k: v for k, v in desc.annotations.items() if k not in (REF_NAME, CONTAINERD_NAME)}
    return replace(desc, annotations=rest or None)


def _ref_name(entry: object) -> str | None:
    if isinstance(entry, Mapping):
        annotations = entry.get("annotations")
        if isinstance(annotations, Mapping):
            name = annotations.get(REF_NAME)
            return name if isinstance(name, str) else None
    return None


def _updated_entries(entries: list[Any], desc: Descriptor, tag: str | None) -> list[Any] | None:
    """The new ``manifests`` list of index.json, or None when it already says the same."""
    entry = desc.to_json()
    annotations = {k: v for k, v in entry.pop("annotations", {}).items() if k != REF_NAME}
    if tag is not None:
        annotations[REF_NAME] = tag
    if annotations:
        entry["annotations"] = annotations
    digest = str(desc.digest)
    if tag is None:
        if any(_ref_name(e) is None and e.get("digest") == digest for e in entries):
            return None
        return [*entries, entry]
    same = [e for e in entries if _ref_name(e) == tag]
    if len(same) == 1 and same[0].get("digest") == digest:
        return None
    return [*(e for e in entries if _ref_name(e) != tag), entry]


def _dump(document: Mapping[str, Any]) -> bytes:
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()


async def _single(data: bytes) -> AsyncGenerator[bytes, None]:
    yield data


async def _closable(stream: BlobStream) -> AsyncGenerator[bytes, None]:
    """``stream`` as an async generator, so it can be closed whether or not it has ``aclose``."""
    try:
        async for chunk in stream:
            yield chunk
    finally:
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            await aclose()
