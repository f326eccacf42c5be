"""The OCI image layout target: write a layout through the Destination API, read it back through
the Source API, and check that umoci and skopeo accept what was written and that a layout they
wrote reads back. Unsafe and malformed layouts fail with typed errors and leave nothing behind.
"""

from __future__ import annotations

import asyncio
import fcntl
import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import textwrap
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ociflow import mediatypes
from ociflow.descriptor import Descriptor
from ociflow.digest import Digest
from ociflow.errors import (
    DigestMismatchError,
    LayoutError,
    NotFoundError,
    OciflowError,
)
from ociflow.reference import LayoutReference
from ociflow.streams import drain, verified
from ociflow.target import CHUNK_SIZE, Destination, Opener, Source
from ociflow.targets.layout import LayoutTarget

REPO_ROOT = Path(__file__).resolve().parent.parent
REF_NAME = "org.opencontainers.image.ref.name"
FILE_CONTENT = b"hello from ociflow\n" * 1000


# ---- building an image in memory -------------------------------------------------------------


@dataclass
class Image:
    config: bytes
    layer: bytes
    manifest: bytes

    @property
    def config_desc(self) -> Descriptor:
        return _desc(mediatypes.OCI_CONFIG, self.config)

    @property
    def layer_desc(self) -> Descriptor:
        return _desc(mediatypes.OCI_LAYER_GZIP, self.layer)

    @property
    def manifest_desc(self) -> Descriptor:
        return _desc(mediatypes.OCI_MANIFEST, self.manifest)


def _desc(media_type: str, data: bytes) -> Descriptor:
    return Descriptor(media_type, Digest.of(data), len(data))


def build_image(content: bytes = FILE_CONTENT, extra: int = 0) -> Image:
    """A one-layer image whose layer holds ``etc/greeting`` (and ``extra`` random bytes)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in (("etc/greeting", content), ("random.bin", os.urandom(extra))):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 1_700_000_000
            tar.addfile(info, io.BytesIO(data))
    uncompressed = raw.getvalue()
    layer = gzip.compress(uncompressed, mtime=0)
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Cmd": ["/bin/sh"]},
            "rootfs": {
                "type": "layers",
                "diff_ids": ["sha256:" + hashlib.sha256(uncompressed).hexdigest()],
            },
        }
    ).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": mediatypes.OCI_MANIFEST,
            "config": _desc(mediatypes.OCI_CONFIG, config).to_json(),
            "layers": [_desc(mediatypes.OCI_LAYER_GZIP, layer).to_json()],
        },
        indent=2,
    ).encode()
    return Image(config, layer, manifest)


async def chunks_of(data: bytes, size: int = 4096) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def opener(data: bytes, desc: Descriptor) -> Opener:
    """What the copy engine hands a destination: a re-openable, verified stream."""
    return lambda: verified(chunks_of(data), desc)


async def write_image(path: Path, image: Image, tag: str | None = "1.0") -> None:
    dst = LayoutTarget(LayoutReference(str(path), tag), create=True)
    try:
        await dst.push_blob(image.config_desc, opener(image.config, image.config_desc))
        await dst.push_blob(image.layer_desc, opener(image.layer, image.layer_desc))
        await dst.push_root(image.manifest_desc, image.manifest, tag)
    finally:
        await dst.close()


async def read_all(stream: AsyncIterator[bytes]) -> bytes:
    return b"".join([chunk async for chunk in stream])


def source(path: Path, tag: str | None = None, digest: Digest | None = None) -> LayoutTarget:
    return LayoutTarget(LayoutReference(str(path), tag, digest))


def blob_path(layout: Path, digest: str) -> Path:
    algorithm, _, encoded = digest.partition(":")
    return layout / "blobs" / algorithm / encoded


def index_of(layout: Path) -> dict[str, Any]:
    document = json.loads((layout / "index.json").read_bytes())
    assert isinstance(document, dict)
    return document


def entries_of(layout: Path) -> list[dict[str, Any]]:
    manifests = index_of(layout)["manifests"]
    assert isinstance(manifests, list)
    return manifests


def tags_of(layout: Path) -> dict[str, str]:
    return {
        e["annotations"][REF_NAME]: e["digest"]
        for e in entries_of(layout)
        if REF_NAME in e.get("annotations", {})
    }


@pytest.fixture(scope="module")
def image() -> Image:
    # A layer over two chunks, so chunking and multi-chunk writes are exercised.
    return build_image(extra=CHUNK_SIZE + 12345)


@pytest.fixture()
async def written(tmp_path: Path, image: Image) -> Path:
    layout = tmp_path / "layout"
    await write_image(layout, image)
    return layout


# ---- write, then read back -----------------------------------------------------------------


def test_layout_target_implements_both_protocols(tmp_path: Path) -> None:
    target = LayoutTarget(LayoutReference(str(tmp_path)), create=True)
    src: Source = target
    dst: Destination = target
    assert isinstance(src, Source)
    assert isinstance(dst, Destination)
    assert (dst.capabilities.concurrent_writes, dst.capabilities.mount) == (True, False)


async def test_written_layout_has_the_spec_files(written: Path, image: Image) -> None:
    assert json.loads((written / "oci-layout").read_bytes()) == {"imageLayoutVersion": "1.0.0"}
    index = index_of(written)
    assert index["schemaVersion"] == 2
    assert index["mediaType"] == mediatypes.OCI_INDEX
    assert entries_of(written) == [
        {**image.manifest_desc.to_json(), "annotations": {REF_NAME: "1.0"}}
    ]
    for data in (image.config, image.layer, image.manifest):
        assert blob_path(written, Digest.of(data)).read_bytes() == data
    # Temp files live outside blobs/, and the emptied ingest directory is removed on close.
    assert not (written / ".ociflow-ingest").exists()
    assert sorted(p.name for p in (written / "blobs" / "sha256").iterdir()) == sorted(
        Digest.of(d).encoded for d in (image.config, image.layer, image.manifest)
    )


async def test_read_back_by_tag_digest_and_sole_entry(written: Path, image: Image) -> None:
    by_tag = source(written, "1.0")
    desc = await by_tag.resolve()
    assert (desc.media_type, desc.digest, desc.size) == (
        mediatypes.OCI_MANIFEST,
        image.manifest_desc.digest,
        image.manifest_desc.size,
    )
    assert not (desc.annotations or {}).get(REF_NAME)
    assert await source(written, digest=desc.digest).resolve() == desc
    assert await source(written).resolve() == desc

    assert await by_tag.fetch_manifest(desc) == image.manifest
    assert await read_all(by_tag.fetch_blob(image.config_desc)) == image.config
    chunks = [c async for c in by_tag.fetch_blob(image.layer_desc)]
    assert b"".join(chunks) == image.layer
    assert len(chunks) == 2 and len(chunks[0]) == CHUNK_SIZE
    # The stream passes verification as the copy engine applies it.
    await drain(verified(by_tag.fetch_blob(image.layer_desc), image.layer_desc))
    await by_tag.close()


async def test_exists_and_rewriting_is_idempotent(written: Path, image: Image) -> None:
    dst = LayoutTarget(LayoutReference(str(written), "1.0"), create=True)
    assert await dst.exists(image.layer_desc)
    assert not await dst.exists(_desc(mediatypes.OCI_LAYER_GZIP, b"absent"))
    # Same size, different digest: not present.
    wrong = Descriptor(image.layer_desc.media_type, Digest.of(b"x"), image.layer_desc.size)
    assert not await dst.exists(wrong)
    before = blob_path(written, image.layer_desc.digest).stat()
    before_index = (written / "index.json").read_bytes()

    def never_opened() -> AsyncIterator[bytes]:
        raise AssertionError("an existing blob's stream was opened")

    await dst.push_blob(image.layer_desc, never_opened)
    await dst.push_root(image.manifest_desc, image.manifest, "1.0")
    await dst.close()
    after = blob_path(written, image.layer_desc.digest).stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert (written / "index.json").read_bytes() == before_index


async def test_tags_move_and_untagged_roots_are_recorded_once(written: Path, image: Image) -> None:
    other = build_image(b"second image\n")
    await write_image(written, other, "2.0")
    await write_image(written, other, "1.0")  # 1.0 moves to the second image
    moved = other.manifest_desc.digest
    assert tags_of(written) == {"1.0": moved, "2.0": moved}
    await write_image(written, image, None)
    await write_image(written, image, None)
    untagged = [e for e in entries_of(written) if "annotations" not in e]
    assert [e["digest"] for e in untagged] == [image.manifest_desc.digest]
    # With several entries and no tag, the reference is ambiguous.
    with pytest.raises(NotFoundError, match=r":TAG or @DIGEST \(available: 1.0, 2.0\)"):
        await source(written).resolve()


async def test_index_update_keeps_unknown_fields(written: Path, image: Image) -> None:
    document = index_of(written)
    [entry] = document["manifests"]
    entry["x-vendor"] = {"nested": [1, 2, 3]}
    entry["annotations"] = {REF_NAME: "1.0", "org.example.note": "keep me"}
    entry["platform"] = {"os": "linux", "architecture": "amd64", "os.features": ["x"]}
    document["annotations"] = {"org.example.index": "top"}
    document["x-top-level"] = True
    (written / "index.json").write_text(json.dumps(document))

    await write_image(written, build_image(b"another\n"), "2.0")
    updated = index_of(written)
    assert updated["x-top-level"] is True
    assert updated["annotations"] == {"org.example.index": "top"}
    assert entries_of(written)[0] == entry
    assert set(tags_of(written)) == {"1.0", "2.0"}


async def test_layout_written_is_unpacked_by_umoci(
    written: Path, umoci: str, tmp_path: Path
) -> None:
    bundle = tmp_path / "bundle"
    result = subprocess.run(
        [umoci, "unpack", "--rootless", "--image", f"{written}:1.0", str(bundle)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert (bundle / "rootfs" / "etc" / "greeting").read_bytes() == FILE_CONTENT


async def test_skopeo_reads_the_exact_manifest_bytes(
    written: Path, image: Image, skopeo: str
) -> None:
    result = subprocess.run(
        [skopeo, "inspect", "--raw", f"oci:{written}:1.0"], capture_output=True, timeout=60
    )
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout == image.manifest


async def test_reads_a_layout_written_by_skopeo(
    written: Path, image: Image, skopeo: str, tmp_path: Path
) -> None:
    copied = tmp_path / "by-skopeo"
    result = subprocess.run(
        [skopeo, "--insecure-policy", "copy", f"oci:{written}:1.0", f"oci:{copied}:copied"],
        capture_output=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr.decode()
    src = source(copied, "copied")
    desc = await src.resolve()
    manifest = await src.fetch_manifest(desc)
    assert json.loads(manifest)["layers"][0]["digest"] == image.layer_desc.digest
    config_desc = Descriptor.from_json(json.loads(manifest)["config"])
    config = await read_all(verified(src.fetch_blob(config_desc), config_desc))
    assert json.loads(config)["rootfs"] == json.loads(image.config)["rootfs"]
    layer = await read_all(verified(src.fetch_blob(image.layer_desc), image.layer_desc))
    assert layer == image.layer
    with pytest.raises(NotFoundError, match=r"tag not found in the layout \(available: copied\)"):
        await source(copied, "1.0").resolve()


# ---- malformed layouts ---------------------------------------------------------------------


async def test_missing_layout_directory(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(LayoutError, match=f"oci:{missing}: not an OCI image layout"):
        await source(missing, "1.0").resolve()
    # A destination that must not create does not either.
    dst = LayoutTarget(LayoutReference(str(missing), "1.0"))
    with pytest.raises(LayoutError):
        await dst.push_manifest(_desc(mediatypes.OCI_MANIFEST, b"{}"), b"{}")
    assert not missing.exists()


async def test_directory_without_index_json(written: Path) -> None:
    (written / "index.json").unlink()
    message = rf"oci:{written}: not an OCI image layout \(no index.json\)"
    with pytest.raises(LayoutError, match=message):
        await source(written, "1.0").resolve()


async def test_directory_without_oci_layout_file(written: Path) -> None:
    (written / "oci-layout").unlink()
    with pytest.raises(LayoutError, match=r"no oci-layout"):
        await source(written, "1.0").resolve()


@pytest.mark.parametrize(
    "index",
    [
        b'{"schemaVersion":2,"manifests":[],"manifests":[]}',  # duplicate key
        b'{"schemaVersion":2,"manifests":[{"mediaType":"x","digest":"sha256:../x","size":1}]}',
        b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{}}',
        b" " * (4 * 1024 * 1024 + 1),  # over the cap, refused before parsing
    ],
    ids=["duplicate-key", "traversal-digest", "not-an-index", "oversized"],
)
async def test_invalid_index_json(written: Path, index: bytes) -> None:
    (written / "index.json").write_bytes(index)
    with pytest.raises(LayoutError, match=rf"oci:{written}: .*index.json"):
        await source(written, "1.0").resolve()


async def test_missing_tag_lists_the_available_ones(written: Path, image: Image) -> None:
    await write_image(written, image, "latest")
    with pytest.raises(
        NotFoundError,
        match=rf"^oci:{written}:2.0: tag not found in the layout \(available: 1.0, latest\)$",
    ):
        await source(written, "2.0").resolve()
    with pytest.raises(NotFoundError, match=r"is not listed in index\.json"):
        await source(written, digest=Digest.of(b"other")).resolve()


async def test_tag_matched_by_containerd_image_name(tmp_path: Path, image: Image) -> None:
    layout = tmp_path / "containerd"
    await write_image(layout, image, None)
    document = index_of(layout)
    [entry] = document["manifests"]
    entry["annotations"] = {"io.containerd.image.name": "docker.io/library/app:3.1"}
    (layout / "index.json").write_text(json.dumps(document))
    desc = await source(layout, "3.1").resolve()
    assert desc.digest == image.manifest_desc.digest
    assert not desc.annotations


async def test_blob_not_matching_its_digest(written: Path, image: Image) -> None:
    path = blob_path(written, image.layer_desc.digest)
    corrupt = bytearray(path.read_bytes())
    corrupt[len(corrupt) // 2] ^= 0xFF
    path.write_bytes(bytes(corrupt))
    src = source(written, "1.0")
    with pytest.raises(DigestMismatchError, match="digest mismatch"):
        await drain(verified(src.fetch_blob(image.layer_desc), image.layer_desc))

    manifest = blob_path(written, image.manifest_desc.digest)
    manifest.write_bytes(image.manifest.replace(b"schemaVersion", b"schemaVersioN"))
    with pytest.raises(DigestMismatchError, match=f"oci:{written}: manifest"):
        await src.fetch_manifest(image.manifest_desc)


async def test_blob_of_the_wrong_size_is_refused_before_reading(
    written: Path, image: Image
) -> None:
    with blob_path(written, image.layer_desc.digest).open("ab") as f:
        f.write(b"trailing")
    stream = source(written, "1.0").fetch_blob(image.layer_desc)
    with pytest.raises(DigestMismatchError, match="size mismatch"):
        await stream.__anext__()


async def test_missing_blob_is_not_found(written: Path, image: Image) -> None:
    blob_path(written, image.config_desc.digest).unlink()
    with pytest.raises(NotFoundError, match=f"oci:{written}: blob {image.config_desc.digest}"):
        await read_all(source(written).fetch_blob(image.config_desc))


# ---- unsafe layouts (reliability.md L4) ------------------------------------------------------

_opened: list[str] | None = None


def _audit(event: str, args: tuple[object, ...]) -> None:
    if _opened is not None and event == "open" and isinstance(args[0], str | bytes | os.PathLike):
        _opened.append(os.fsdecode(args[0]))


sys.addaudithook(_audit)


@pytest.fixture()
def opened_paths() -> Iterator[list[str]]:
    """Every path passed to ``open`` while the test runs (the interpreter's audit events)."""
    global _opened
    _opened = []
    try:
        yield _opened
    finally:
        _opened = None


async def test_symlinked_blob_pointing_outside_is_refused_unopened(
    written: Path, image: Image, tmp_path: Path, opened_paths: list[str]
) -> None:
    outside = tmp_path / "host-secret"
    outside.write_bytes(image.layer)  # even content that would verify must not be read
    path = blob_path(written, image.layer_desc.digest)
    path.unlink()
    path.symlink_to(outside)
    opened_paths.clear()  # from here on, only ociflow opens files
    src = source(written, "1.0")
    message = rf"oci:{written}: blob {image.layer_desc.digest} is not a regular file \(symlink\)"
    with pytest.raises(LayoutError, match=message):
        await read_all(src.fetch_blob(image.layer_desc))
    with pytest.raises(LayoutError, match=r"\(symlink\)"):
        await src.exists(image.layer_desc)
    dst = LayoutTarget(LayoutReference(str(written), "1.0"), create=True)
    with pytest.raises(LayoutError, match=r"\(symlink\)"):
        await dst.push_blob(image.layer_desc, opener(image.layer, image.layer_desc))
    assert opened_paths, "the audit hook saw no opens at all"
    assert not [p for p in opened_paths if p in (str(outside), path.name, str(path))]
    assert path.is_symlink() and outside.read_bytes() == image.layer


async def test_manifest_symlink_is_refused(written: Path, image: Image, tmp_path: Path) -> None:
    outside = tmp_path / "manifest-outside"
    outside.write_bytes(image.manifest)
    path = blob_path(written, image.manifest_desc.digest)
    path.unlink()
    path.symlink_to(outside)
    with pytest.raises(LayoutError, match=r"is not a regular file \(symlink\)"):
        await source(written, "1.0").fetch_manifest(image.manifest_desc)


@pytest.mark.parametrize("kind", ["fifo", "directory"])
async def test_special_files_in_blobs_are_refused(written: Path, image: Image, kind: str) -> None:
    path = blob_path(written, image.config_desc.digest)
    path.unlink()
    if kind == "fifo":
        os.mkfifo(path)
    else:
        path.mkdir()
    with pytest.raises(LayoutError, match=rf"is not a regular file \({kind}\)"):
        await read_all(source(written, "1.0").fetch_blob(image.config_desc))


@pytest.mark.parametrize("component", ["blobs", "blobs/sha256"])
async def test_symlinked_blob_directories_are_refused(
    written: Path, image: Image, tmp_path: Path, component: str
) -> None:
    moved = tmp_path / "moved-away"
    (written / component).rename(moved)
    (written / component).symlink_to(moved)
    message = rf"oci:{written}: {component} is not a directory \(symlink\)"
    with pytest.raises(LayoutError, match=message):
        await read_all(source(written, "1.0").fetch_blob(image.config_desc))
    with pytest.raises(LayoutError, match=r"\(symlink\)"):
        await write_image(written, image, "again")


async def test_existing_non_layout_directory_is_refused(tmp_path: Path, image: Image) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    message = r"neither empty nor an OCI image layout \(it holds notes\.txt\)"
    with pytest.raises(LayoutError, match=message):
        await write_image(tmp_path, image)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


async def test_filesystem_errors_are_layout_errors(tmp_path: Path, image: Image) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(LayoutError, match=rf"^oci:{blocker}/layout: preparing the layout: "):
        await write_image(blocker / "layout", image)


# ---- failed and concurrent writes (L1, L3) ---------------------------------------------------


def _leftovers(layout: Path) -> list[str]:
    ingest = layout / ".ociflow-ingest"
    return sorted(p.name for p in ingest.iterdir()) if ingest.exists() else []


async def test_stream_failing_midway_leaves_nothing(tmp_path: Path, image: Image) -> None:
    layout = tmp_path / "layout"
    dst = LayoutTarget(LayoutReference(str(layout), "1.0"), create=True)
    final = blob_path(layout, image.layer_desc.digest)

    # Content that does not verify: the verified stream raises instead of its last chunk.
    bad = bytearray(image.layer)
    bad[-1] ^= 0xFF
    with pytest.raises(DigestMismatchError):
        await dst.push_blob(image.layer_desc, opener(bytes(bad), image.layer_desc))
    assert not final.exists() and _leftovers(layout) == []

    # A source that breaks after some chunks.
    async def broken() -> AsyncIterator[bytes]:
        yield image.layer[:CHUNK_SIZE]
        yield image.layer[CHUNK_SIZE : CHUNK_SIZE + 10]
        raise OciflowError("connection reset")

    with pytest.raises(OciflowError, match="connection reset"):
        await dst.push_blob(image.layer_desc, lambda: verified(broken(), image.layer_desc))
    assert not final.exists() and _leftovers(layout) == []

    # A manifest that does not match its descriptor is refused before anything is written.
    with pytest.raises(DigestMismatchError):
        await dst.push_manifest(image.manifest_desc, image.manifest + b" ")
    assert not blob_path(layout, image.manifest_desc.digest).exists()

    await dst.close()
    assert not (layout / ".ociflow-ingest").exists()
    # The layout is still valid and usable afterwards.
    await write_image(layout, image)
    assert await source(layout, "1.0").fetch_manifest(image.manifest_desc) == image.manifest


async def test_cancelled_push_without_resume_leaves_nothing(tmp_path: Path, image: Image) -> None:
    # With resume (the default) the partial file is kept: tests/test_crash_resume.py.
    layout = tmp_path / "layout"
    dst = LayoutTarget(LayoutReference(str(layout), "1.0"), create=True, resume=False)
    started = asyncio.Event()

    async def stalls() -> AsyncIterator[bytes]:
        yield image.layer[:CHUNK_SIZE]
        started.set()
        await asyncio.Event().wait()
        yield b""  # pragma: no cover

    task = asyncio.create_task(dst.push_blob(image.layer_desc, stalls))
    await started.wait()
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # Cleanup of a cancelled write may finish once its worker thread is done.
    for _ in range(100):
        if not _leftovers(layout):
            break
        await asyncio.sleep(0.01)
    assert _leftovers(layout) == []
    assert not blob_path(layout, image.layer_desc.digest).exists()


async def test_abandoned_temp_files_are_swept_unless_in_use(tmp_path: Path, image: Image) -> None:
    layout = tmp_path / "layout"
    await write_image(layout, image)
    ingest = layout / ".ociflow-ingest"
    ingest.mkdir()
    abandoned = ingest / f"sha256-{'a' * 64}.dead.partial"
    abandoned.write_bytes(b"left by a killed process")
    busy = ingest / f"sha256-{'b' * 64}.live.partial"
    busy.write_bytes(b"being written by a live process")
    unrelated = ingest / "README"
    unrelated.write_text("not ours")
    with busy.open("rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        await write_image(layout, build_image(b"next\n"), "2.0")
        assert not abandoned.exists()
        assert busy.exists() and unrelated.exists()


_WRITER = textwrap.dedent(
    """
    import asyncio, json, sys
    from ociflow import mediatypes
    from ociflow.descriptor import Descriptor
    from ociflow.digest import Digest
    from ociflow.reference import LayoutReference
    from ociflow.targets.layout import LayoutTarget

    async def main(path, prefix, count):
        for i in range(count):
            data = json.dumps({"schemaVersion": 2, "mediaType": mediatypes.OCI_INDEX,
                               "manifests": [], "annotations": {"n": f"{prefix}{i}"}}).encode()
            desc = Descriptor(mediatypes.OCI_INDEX, Digest.of(data), len(data))
            dst = LayoutTarget(LayoutReference(path, f"{prefix}{i}"), create=True)
            await dst.push_root(desc, data, f"{prefix}{i}")
            await dst.close()

    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
    """
)


def test_two_processes_writing_one_layout_lose_no_tags(tmp_path: Path) -> None:
    layout = tmp_path / "shared"  # does not exist yet: both processes also race to create it
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    count = 15
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(layout), prefix, str(count)],
            env=env,
            stderr=subprocess.PIPE,
        )
        for prefix in ("a", "b")
    ]
    for writer in writers:
        _, stderr = writer.communicate(timeout=60)
        assert writer.returncode == 0, stderr.decode()
    expected = {f"{p}{i}" for p in "ab" for i in range(count)}
    assert set(tags_of(layout)) == expected
    assert len(entries_of(layout)) == 2 * count
    assert _leftovers(layout) == []
