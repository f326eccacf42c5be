"""OCI image layouts in a tar file: ``oci-archive:PATH[:TAG|@DIGEST]``, as skopeo names them,
and ``docker-archive:PATH[:NAME:TAG]``, the same layout plus ``docker save``'s ``manifest.json``
(:class:`DockerArchiveWriter`).

*Writing* (:class:`OciArchiveWriter`, a Destination). A tar file is one stream, so entries are
written one at a time (``concurrent_writes`` is false, and a lock orders them): ``oci-layout``,
then each blob and manifest as it is pushed — its header carries the descriptor's size, its
body streams from the engine's verified stream, whose last chunk comes only once the digest
checked out — then ``index.json`` and the end-of-archive blocks. Headers have fixed owners,
modes and times, so the same image gives the same archive. The tar is written to a temporary
file beside PATH, fsync'd, and renamed over PATH only when complete: a failed or interrupted
copy leaves PATH as it was and removes the temporary file. An entry that fails half-way (a
blob that does not verify) is cut off again, so the engine's one re-fetch can write it anew.
A tar stream cannot be continued after a crash, so an interrupted write is not resumable; the
temporary file a crash leaves is removed by the next write to the same PATH once an hour old.

*Reading* (:class:`OciArchiveReader`, a Source; also for ``docker-archive:``, whose older
``docker save`` form without ``index.json`` gets its image manifest made up from
``manifest.json`` and the config). The archive (a plain tar, as skopeo and umoci
write; a compressed one is refused with a clear error) is indexed once: member names must be
relative and free of ``..``, the layout's files must be regular files listed once, and their
data must lie inside the file. Manifests and blobs are then read where they lie (``pread`` in a
worker thread), never extracted.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import hashlib
import json
import os
import stat
import tarfile
import time
import uuid
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

from ociflow import mediatypes
from ociflow.descriptor import Descriptor
from ociflow.digest import Digest, verify_bytes
from ociflow.errors import (
    DigestMismatchError,
    InvalidReferenceError,
    LayoutError,
    NotFoundError,
)
from ociflow.manifest import check_manifest_size, parse_manifest
from ociflow.reference import LayoutReference, Reference, parse_docker_reference
from ociflow.target import CHUNK_SIZE, Capabilities, Opener
from ociflow.targets import fsutil
from ociflow.targets.layout import (
    INDEX_FILE,
    LAYOUT_VERSION,
    MAX_INDEX_SIZE,
    OCI_LAYOUT_FILE,
    REF_NAME,
    check_layout_marker,
    parse_index,
    select_entry,
    without_names,
)

BLOCK = tarfile.BLOCKSIZE
TEMP_SUFFIX = ".ociflow-tmp"
SAVED_MANIFEST = "manifest.json"
MAX_CONFIG_SIZE = 16 * 1024 * 1024
ABANDONED_AFTER = 3600.0
"""Seconds after its last write that a crashed write's temporary archive is removed."""
_T = TypeVar("_T")
_LAYOUT_JSON = json.dumps({"imageLayoutVersion": LAYOUT_VERSION}).encode()


def _header(name: str, size: int, *, directory: bool = False) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = 0 if directory else size
    info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    info.mode = 0o755 if directory else 0o644
    info.mtime = 0
    return info.tobuf(tarfile.PAX_FORMAT, encoding="utf-8", errors="strict")


def _padding(size: int) -> bytes:
    return b"\0" * (-size % BLOCK)


def _sweep_abandoned(directory: Path, name: str) -> None:
    """Remove temporary files of writes to ``name`` that a crash left behind: untouched for
    :data:`ABANDONED_AFTER` seconds (a live writer touches its file all the time)."""
    now = time.time()
    for leftover in directory.glob(f".{glob.escape(name)}.*{TEMP_SUFFIX}"):
        with contextlib.suppress(OSError):
            st = leftover.lstat()
            if stat.S_ISREG(st.st_mode) and now - st.st_mtime > ABANDONED_AFTER:
                leftover.unlink()


def _json(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _blob_name(digest: Digest) -> str:
    return f"blobs/{digest.algorithm}/{digest.encoded}"


async def _single(data: bytes) -> AsyncGenerator[bytes, None]:
    yield data


class _Threads:
    """Blocking calls in worker threads, remembered while they run: a cancelled ``await`` does
    not stop a thread, so a file descriptor is closed only once every call using it returned
    (else a late write could land in whatever file reuses the number)."""

    def __init__(self) -> None:
        self._running: set[asyncio.Future[Any]] = set()

    def start(self, fn: Callable[..., _T], *args: Any) -> asyncio.Future[_T]:
        future = asyncio.get_running_loop().run_in_executor(None, fn, *args)
        self._running.add(future)
        future.add_done_callback(self._running.discard)
        return future

    async def run(self, fn: Callable[..., _T], *args: Any) -> _T:
        return await asyncio.shield(self.start(fn, *args))

    async def settle(self) -> None:
        """Return once no call is running (cancelled or not)."""
        while self._running:
            await asyncio.wait(set(self._running))


class OciArchiveWriter:
    """Writes one image (or index) into a new OCI archive at ``reference.path``."""

    capabilities = Capabilities(concurrent_writes=False)

    def __init__(self, reference: LayoutReference) -> None:
        self._ref = reference
        self._path = Path(reference.path)
        self._where = f"{reference.transport}:{reference.path}"
        self._fd: int | None = None
        self._temp: Path | None = None
        self._lock = asyncio.Lock()
        self._written: set[str] = set()
        self._dirs: set[str] = set()
        self._failed = False
        self._committed = False
        self._threads = _Threads()

    @property
    def reference(self) -> Reference:
        return self._ref

    def __repr__(self) -> str:
        return f"OciArchiveWriter({self._where!r})"

    async def exists(self, desc: Descriptor) -> bool:
        """Whether this archive already holds ``desc`` (only what this copy wrote: the archive
        is new)."""
        return str(desc.digest) in self._written

    async def mount(self, desc: Descriptor, source: object) -> bool:
        return False

    async def push_blob(self, desc: Descriptor, open_stream: Opener) -> None:
        async with self._lock:
            if str(desc.digest) not in self._written:
                await self._entry(desc, open_stream())

    async def push_manifest(self, desc: Descriptor, data: bytes) -> None:
        verify_bytes(data, desc.digest, desc.size, f"{self._where}: manifest")
        async with self._lock:
            if str(desc.digest) not in self._written:
                await self._entry(desc, _single(data))

    async def push_root(self, desc: Descriptor, data: bytes, tag: str | None) -> None:
        """Write the root manifest, ``index.json`` naming it (as ``tag``), and finish."""
        metadata = self._metadata(desc, data, tag)
        await self.push_manifest(desc, data)
        async with self._lock:
            fd = await self._open()
            await self._guarded(self._finish, fd, metadata)
            self._committed = True

    def _metadata(self, desc: Descriptor, data: bytes, tag: str | None) -> list[tuple[str, bytes]]:
        """The files written after the blobs: ``index.json``."""
        entry = desc.to_json()
        if tag is not None:
            entry["annotations"] = {**entry.get("annotations", {}), REF_NAME: tag}
        index = {"schemaVersion": 2, "mediaType": mediatypes.OCI_INDEX, "manifests": [entry]}
        return [(INDEX_FILE, _json(index))]

    async def close(self) -> None:
        """Remove the temporary file of an archive that was not finished (once no worker
        thread uses it any more)."""
        await self._threads.settle()
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)
        if not self._committed and self._temp is not None:
            self._temp.unlink(missing_ok=True)

    # -- the tar stream ------------------------------------------------------------------

    async def _open(self) -> int:
        if self._failed:
            raise LayoutError(f"{self._where}: an earlier write failed; the archive is abandoned")
        if self._fd is None:
            await self._guarded(self._create)
        assert self._fd is not None
        return self._fd

    def _create(self) -> None:
        parent = self._path.parent
        if not parent.is_dir():
            raise LayoutError(f"{self._where}: the directory {parent} does not exist")
        try:
            old = os.lstat(self._path)
        except FileNotFoundError:
            old = None
        if old is not None and not stat.S_ISREG(old.st_mode):
            # A symlink, FIFO, device or directory is not replaced by a file behind its back.
            raise LayoutError(f"{self._where}: exists and is not a regular file "
                              f"({fsutil.kind_of(old.st_mode)})")
        _sweep_abandoned(parent, self._path.name)
        temp = parent / f".{self._path.name}.{uuid.uuid4().hex[:12]}{TEMP_SUFFIX}"
        # A new archive gets the usual permissions (0644 less the umask, applied by open); one
        # replaced keeps its own (a private image stays private), and its temporary file is
        # private until then. (Reading the umask would mean setting it: process-wide, racy.)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        self._fd = os.open(temp, flags, 0o600 if old else 0o644)
        self._temp = temp
        if old:
            os.fchmod(self._fd, stat.S_IMODE(old.st_mode))
        fsutil.write_all(self._fd, _header(OCI_LAYOUT_FILE, len(_LAYOUT_JSON)) + _LAYOUT_JSON
                         + _padding(len(_LAYOUT_JSON)) + _header("blobs", 0, directory=True))

    async def _entry(self, desc: Descriptor, chunks: AsyncGenerator[bytes, None]) -> None:
        fd = await self._open()
        digest = Digest(desc.digest)
        start = os.lseek(fd, 0, os.SEEK_CUR)
        new_dir = digest.algorithm not in self._dirs
        head = _header(f"blobs/{digest.algorithm}", 0, directory=True) if new_dir else b""
        head += _header(_blob_name(digest), desc.size)
        written = 0
        threads = self._threads
        inflight = threads.start(fsutil.write_all, fd, head)
        try:
            async with aclosing(chunks):
                async for chunk in chunks:
                    written += len(chunk)
                    if written > desc.size:
                        raise DigestMismatchError(
                            f"{self._where}: blob {digest}: more than the expected "
                            f"{desc.size} bytes"
                        )
                    await asyncio.shield(inflight)
                    inflight = threads.start(fsutil.write_all, fd, chunk)
            await asyncio.shield(inflight)
            if written != desc.size:
                raise DigestMismatchError(
                    f"{self._where}: blob {digest}: size mismatch, expected {desc.size} "
                    f"bytes, received {written}"
                )
            await threads.run(fsutil.write_all, fd, _padding(desc.size))
        except BaseException as exc:
            # Cut the stream back to where this entry began, so that the entry can be written
            # again (the engine re-fetches a blob that failed verification once) or the next
            # one follows a whole entry. A write still running in a worker thread ends first.
            await threads.settle()
            try:
                os.ftruncate(fd, start)
                os.lseek(fd, start, os.SEEK_SET)
            except OSError:
                self._failed = True
            if isinstance(exc, OSError):  # a full disk, say
                self._failed = True
                raise LayoutError(f"{self._where}: writing blob {digest}: "
                                  f"{exc.strerror or exc}") from None
            raise
        if new_dir:
            self._dirs.add(digest.algorithm)
        self._written.add(str(digest))

    def _finish(self, fd: int, files: list[tuple[str, bytes]]) -> None:
        for name, content in files:
            fsutil.write_all(fd, _header(name, len(content)) + content + _padding(len(content)))
        fsutil.write_all(fd, b"\0" * (2 * BLOCK))
        os.fsync(fd)
        os.close(fd)
        self._fd = None
        assert self._temp is not None
        os.replace(self._temp, self._path)
        dir_fd = os.open(self._path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    async def _guarded(self, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return await self._threads.run(fn, *args)
        except OSError as exc:
            self._failed = True
            raise LayoutError(f"{self._where}: writing the archive: "
                              f"{exc.strerror or exc}") from None


class DockerArchiveWriter(OciArchiveWriter):
    """Writes one image into a tar file ``docker load`` reads: the OCI layout above plus the
    ``manifest.json`` of ``docker save`` (config and layers by their paths in ``blobs/``, the
    reference's ``NAME:TAG`` as its repo tag), the format Docker itself writes since v25. Layers
    stay as the registry holds them, compressed: ``docker load`` and skopeo decompress them."""

    capabilities = Capabilities(concurrent_writes=False, single_image=True)

    def _metadata(self, desc: Descriptor, data: bytes, tag: str | None) -> list[tuple[str, bytes]]:
        manifest = parse_manifest(data, desc.media_type)
        if manifest.config is None:  # the engine refuses an index first; this is the guard
            raise LayoutError(f"{self._where}: a docker archive holds one image, not an index")
        repo_tags = [self._ref.image_name] if self._ref.image_name else []
        saved = [{
            "Config": _blob_name(Digest(manifest.config.digest)),
            "RepoTags": repo_tags,
            "Layers": [_blob_name(Digest(layer.digest)) for layer in manifest.layers],
        }]
        return [*super()._metadata(desc, data, tag), ("manifest.json", _json(saved))]


@dataclass(frozen=True)
class _Member:
    offset: int
    size: int
    regular: bool


class OciArchiveReader:
    """Reads the image or index that ``reference`` names from an OCI archive."""

    def __init__(self, reference: LayoutReference) -> None:
        self._ref = reference
        self._where = f"{reference.transport}:{reference.path}"
        self._fd: int | None = None
        self._members: dict[str, _Member] | None = None
        self._lock = asyncio.Lock()
        self._threads = _Threads()
        # An older ``docker save`` (no index.json): its manifest is made up here, and its
        # blobs are found by the paths manifest.json gives, not under blobs/.
        self._paths: dict[str, str] = {}
        self._made: dict[str, bytes] = {}

    @property
    def reference(self) -> Reference:
        return self._ref

    def __repr__(self) -> str:
        return f"OciArchiveReader({self._where!r})"

    async def resolve(self) -> Descriptor:
        await self._index()
        assert self._members is not None
        if INDEX_FILE not in self._members and SAVED_MANIFEST in self._members:
            result: Descriptor = await self._threads.run(self._from_docker_save)
            return result
        marker = await self._threads.run(self._read, OCI_LAYOUT_FILE, 4096)
        check_layout_marker(marker, self._where)
        data = await self._threads.run(self._read, INDEX_FILE, MAX_INDEX_SIZE)
        index = parse_index(data, self._where)
        return without_names(select_entry(self._ref, index.manifests))

    async def fetch_manifest(self, desc: Descriptor) -> bytes:
        digest = Digest(desc.digest)
        check_manifest_size(desc, self._where)
        await self._index()
        made = self._made.get(str(digest))
        if made is not None:
            return made
        self._sized(digest, desc.size, "manifest")
        data = await self._threads.run(self._read, self._name(digest), desc.size)
        verify_bytes(data, digest, desc.size, f"{self._where}: manifest")
        return data

    async def fetch_blob(
        self, desc: Descriptor, *, offset: int = 0
    ) -> AsyncGenerator[bytes, None]:
        """The blob's bytes from ``offset`` on, read where they lie in the archive."""
        digest = Digest(desc.digest)
        if not 0 <= offset <= desc.size:
            raise ValueError(f"offset {offset} outside the blob's {desc.size} bytes")
        await self._index()
        member = self._sized(digest, desc.size, "blob")
        assert self._fd is not None
        fd = self._fd
        position, end = member.offset + offset, member.offset + member.size
        while position < end:
            chunk = await self._threads.run(os.pread, fd, min(CHUNK_SIZE, end - position),
                                            position)
            if not chunk:
                raise LayoutError(f"{self._where}: blob {digest}: the archive ends early")
            position += len(chunk)
            yield chunk

    async def close(self) -> None:
        await self._threads.settle()
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def _from_docker_save(self) -> Descriptor:
        """Make the image manifest an older ``docker save`` archive implies: its config, and
        its layers as stored (an uncompressed layer's digest is its diff_id, checked as it
        streams; a compressed one is hashed here)."""
        try:
            saved = json.loads(self._read(SAVED_MANIFEST, MAX_INDEX_SIZE))
        except (ValueError, UnicodeDecodeError, RecursionError):
            saved = None
        entry = _docker_save_entry(saved, self._ref, self._where)
        config_name, layer_names = entry.get("Config"), entry.get("Layers")
        if not isinstance(config_name, str) or not isinstance(layer_names, list):
            raise LayoutError(f"{self._where}: invalid {SAVED_MANIFEST}")
        config = self._read(config_name, MAX_CONFIG_SIZE)
        try:
            diff_ids = json.loads(config)["rootfs"]["diff_ids"]
        except (ValueError, KeyError, TypeError, RecursionError):
            diff_ids = None
        if not isinstance(diff_ids, list) or len(diff_ids) != len(layer_names):
            raise LayoutError(f"{self._where}: the config does not list one diff_id a layer")
        config_digest = Digest.of(config)
        self._paths[str(config_digest)] = config_name
        layers = []
        for name, diff_id in zip(layer_names, diff_ids, strict=True):
            member = self._member(str(name), f"layer {name}")
            assert self._fd is not None
            head = os.pread(self._fd, 4, member.offset)
            if head.startswith((b"\x1f\x8b", b"\x28\xb5\x2f\xfd")):
                media_type = (mediatypes.DOCKER_LAYER_GZIP if head[0] == 0x1F
                              else mediatypes.OCI_LAYER_ZSTD)
                digest = self._hash(member)
            else:
                media_type, digest = mediatypes.DOCKER_LAYER, Digest(str(diff_id))
            self._paths[str(digest)] = str(name)
            layers.append({"mediaType": media_type, "size": member.size, "digest": digest})
        manifest = _json({
            "schemaVersion": 2,
            "mediaType": mediatypes.DOCKER_MANIFEST,
            "config": {"mediaType": mediatypes.DOCKER_CONFIG, "size": len(config),
                       "digest": config_digest},
            "layers": layers,
        })
        digest = Digest.of(manifest)
        self._made[str(digest)] = manifest
        return Descriptor(mediatypes.DOCKER_MANIFEST, digest, len(manifest))

    def _hash(self, member: _Member) -> Digest:
        assert self._fd is not None
        hasher = hashlib.sha256()
        position, end = member.offset, member.offset + member.size
        while position < end:
            chunk = os.pread(self._fd, min(CHUNK_SIZE, end - position), position)
            if not chunk:
                raise LayoutError(f"{self._where}: a layer: the archive ends early")
            hasher.update(chunk)
            position += len(chunk)
        return Digest(f"sha256:{hasher.hexdigest()}")

    # -- the index of members ------------------------------------------------------------

    async def _index(self) -> None:
        async with self._lock:
            if self._members is None:
                self._members = await self._threads.run(self._scan)

    def _scan(self) -> dict[str, _Member]:
        try:
            fd = os.open(self._ref.path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except FileNotFoundError:
            raise LayoutError(f"{self._where}: no such archive") from None
        except OSError as exc:
            raise LayoutError(f"{self._where}: {exc.strerror or exc}") from None
        try:
            members = self._members_of(fd)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return members

    def _members_of(self, fd: int) -> dict[str, _Member]:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise LayoutError(f"{self._where}: not a regular file "
                              f"({fsutil.kind_of(st.st_mode)})")
        size = st.st_size
        magic = os.pread(fd, 6, 0)
        if magic.startswith((b"\x1f\x8b", b"\x28\xb5\x2f\xfd", b"BZh", b"\xfd7zXZ")):
            raise LayoutError(f"{self._where}: a compressed archive; decompress it first")
        members: dict[str, _Member] = {}
        try:
            with os.fdopen(os.dup(fd), "rb") as file, tarfile.open(fileobj=file, mode="r:") as tar:
                for info in tar:
                    name = _member_name(info.name, self._where)
                    if name is None:
                        continue
                    if name in members and (members[name].regular or info.isreg()):
                        raise LayoutError(f"{self._where}: {name} appears twice in the archive")
                    if info.islnk():
                        # A hard link to an earlier member shares its data (GNU tar writes
                        # these for identical files; skopeo reads them).
                        target = _member_name(info.linkname, self._where)
                        linked = members.get(target) if target is not None else None
                        members[name] = linked or _Member(0, 0, regular=False)
                        continue
                    if info.offset_data + info.size > size:
                        raise LayoutError(f"{self._where}: {name} lies past the archive's end")
                    regular = info.isreg() and not info.issparse()
                    members[name] = _Member(info.offset_data, info.size, regular)
        except (tarfile.TarError, OSError, MemoryError) as exc:
            # MemoryError: a crafted header declaring a huge long name or PAX record.
            raise LayoutError(f"{self._where}: not a readable tar archive "
                              f"({type(exc).__name__})") from None
        return members

    def _member(self, name: str, what: str) -> _Member:
        assert self._members is not None
        member = self._members.get(name)
        if member is None:
            raise NotFoundError(f"{self._where}: {what} not found in the archive")
        if not member.regular:
            raise LayoutError(f"{self._where}: {name} is not a regular file")
        return member

    def _name(self, digest: Digest) -> str:
        return self._paths.get(str(digest)) or _blob_name(digest)

    def _sized(self, digest: Digest, size: int, what: str) -> _Member:
        member = self._member(self._name(digest), f"{what} {digest}")
        if member.size != size:
            raise DigestMismatchError(
                f"{self._where}: {what} {digest}: size mismatch, expected {size} bytes, the "
                f"archive holds {member.size}"
            )
        return member

    def _read(self, name: str, limit: int) -> bytes:
        member = self._member(name, name)
        if member.size > limit:
            raise LayoutError(f"{self._where}: {name} is larger than {limit} bytes")
        assert self._fd is not None
        data = os.pread(self._fd, member.size, member.offset)
        if len(data) != member.size:
            raise LayoutError(f"{self._where}: {name}: the archive ends early")
        return data


def _docker_save_entry(saved: Any, ref: LayoutReference, where: str) -> dict[str, Any]:
    """The entry of an older ``docker save``'s manifest.json that ``ref`` names: by its
    ``NAME:TAG`` among the repo tags, else the only one."""
    if not isinstance(saved, list) or not all(isinstance(e, dict) for e in saved) or not saved:
        raise LayoutError(f"{where}: invalid {SAVED_MANIFEST}")
    if ref.image_name is not None:
        wanted = _normalized(ref.image_name)
        for entry in saved:
            tags = entry.get("RepoTags") or []
            if isinstance(tags, list) and any(_normalized(t) == wanted for t in tags):
                return dict(entry)
        raise NotFoundError(f"{ref}: no image saved as {ref.image_name} in the archive")
    if len(saved) > 1:
        raise NotFoundError(f"{ref}: the archive holds {len(saved)} images; name one")
    return dict(saved[0])


def _normalized(name: object) -> tuple[str, str, str | None] | None:
    """``NAME:TAG`` as (registry, repository, tag), Docker-normalised; None if unparsable."""
    if not isinstance(name, str):
        return None
    try:
        ref = parse_docker_reference(name)
    except InvalidReferenceError:
        return None
    return ref.registry, ref.repository, ref.tag


def _member_name(raw: str, where: str) -> str | None:
    """The layout path of a member (``./`` dropped); None for the root directory. A name that
    is absolute or climbs out with ``..`` makes the archive unsafe to read."""
    path = PurePosixPath(raw)
    if path.is_absolute() or ".." in path.parts:
        raise LayoutError(f"{where}: unsafe member name {raw[:120]!r} in the archive")
    name = str(path)
    return None if name in (".", "") else name

