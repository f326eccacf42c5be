"""``oci-archive:`` targets: OCI layouts in a tar file, written and read by ociflow and checked
with skopeo; what a failed write leaves (nothing) and what a bad archive gets (a clear error)."""

from __future__ import annotations

import asyncio
import gzip
import io
import json
import subprocess
import tarfile
from pathlib import Path

import pytest

import ociflow
from ociflow.digest import Digest
from ociflow.errors import DigestMismatchError, LayoutError, NotFoundError
from ociflow.reference import LayoutReference, parse_reference
from tests.fault_proxy import Fault, FaultProxy
from tests.layouts import tagged
from tests.registry_server import RegistryServer
from tests.test_copy_errors import corrupt_copy

pytestmark = pytest.mark.integration


def root_digest(layout: Path, tag: str) -> str:
    return str(tagged(layout, tag)["digest"])


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if "ociflow-tmp" in p.name)


def test_reference_grammar() -> None:
    ref = parse_reference("oci-archive:/tmp/a.tar:v1")
    assert ref == LayoutReference("/tmp/a.tar", "v1", None, "oci-archive")
    assert str(ref) == "oci-archive:/tmp/a.tar:v1"


async def test_written_archive_is_read_by_skopeo_and_by_ociflow(
    sample_layout: Path, tmp_path: Path, skopeo: str
) -> None:
    archive = tmp_path / "sample.tar"
    result = await ociflow.copy(f"oci:{sample_layout}:1.0", f"oci-archive:{archive}:1.0")
    assert result.digest == root_digest(sample_layout, "1.0")
    assert leftovers(tmp_path) == []
    with tarfile.open(archive) as tar:
        names = tar.getnames()
    assert names[0] == "oci-layout" and names[-1] == "index.json"
    subprocess.run([skopeo, "copy", "--all", f"oci-archive:{archive}:1.0",
                    f"oci:{tmp_path / 'by-skopeo'}:1.0"], check=True, capture_output=True)
    assert root_digest(tmp_path / "by-skopeo", "1.0") == result.digest
    back = tmp_path / "back"
    await ociflow.copy(f"oci-archive:{archive}:1.0", f"oci:{back}:1.0")
    assert root_digest(back, "1.0") == result.digest
    for blob in (sample_layout / "blobs" / "sha256").iterdir():
        assert (back / "blobs" / "sha256" / blob.name).read_bytes() == blob.read_bytes()
    # the same image gives the same archive, byte for byte
    again = tmp_path / "again.tar"
    await ociflow.copy(f"oci:{sample_layout}:1.0", f"oci-archive:{again}:1.0")
    assert again.read_bytes() == archive.read_bytes()


async def test_archive_written_by_skopeo_is_read(
    sample_layout: Path, tmp_path: Path, skopeo: str
) -> None:
    archive = tmp_path / "skopeo.tar"
    subprocess.run([skopeo, "copy", "--all", f"oci:{sample_layout}:1.0",
                    f"oci-archive:{archive}:1.0"], check=True, capture_output=True)
    out = tmp_path / "out"
    result = await ociflow.copy(f"oci-archive:{archive}", f"oci:{out}:1.0")
    assert result.digest == root_digest(sample_layout, "1.0")


async def test_registry_round_trip_and_platform(
    registry: RegistryServer, sample_layout: Path, tmp_path: Path, repo: str
) -> None:
    await ociflow.copy(f"oci:{sample_layout}:1.0", f"docker://{registry.address}/{repo}:1.0")
    archive = tmp_path / "arm.tar"
    single = await ociflow.copy(f"docker://{registry.address}/{repo}:1.0",
                                f"oci-archive:{archive}:arm", platform="linux/arm64")
    pushed = await ociflow.copy(f"oci-archive:{archive}:arm",
                                f"docker://{registry.address}/{repo}:arm")
    assert pushed.digest == single.digest


async def test_failed_write_leaves_nothing_and_keeps_the_old_archive(
    sample_layout: Path, tmp_path: Path
) -> None:
    src, _ = corrupt_copy(sample_layout, tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    archive = out / "image.tar"
    with pytest.raises(DigestMismatchError):
        await ociflow.copy(f"oci:{src}:1.0", f"oci-archive:{archive}:1.0")
    assert list(out.iterdir()) == []
    archive.write_bytes(b"the old archive")
    with pytest.raises(DigestMismatchError):
        await ociflow.copy(f"oci:{src}:1.0", f"oci-archive:{archive}:1.0")
    assert archive.read_bytes() == b"the old archive" and leftovers(out) == []


async def test_cancelled_write_leaves_nothing(
    registry: RegistryServer, tmp_path: Path, repo: str
) -> None:
    layout = tmp_path / "big"
    from bench_data.generate import generate

    generate("big", layout, big_mib=8, tag="1")
    await ociflow.copy(f"oci:{layout}:1", f"docker://{registry.address}/{repo}:1")
    async with FaultProxy(registry.url) as proxy:
        proxy.add("GET", "/blobs/", Fault(throttle=2 * 1024 * 1024))
        out = tmp_path / "out"
        out.mkdir()
        task = asyncio.create_task(
            ociflow.copy(f"docker://{proxy.address}/{repo}:1", f"oci-archive:{out}/x.tar:1"))
        for _ in range(200):
            await asyncio.sleep(0.05)
            if any(p.name.endswith("ociflow-tmp") and p.stat().st_size > 1 << 20
                   for p in out.iterdir()):
                break
        task.cancel()
        with pytest.raises(ociflow.CancelledTransferError):
            await task
    assert list(out.iterdir()) == []


def write_tar(path: Path, members: list[tuple[str, bytes]], *, symlink: str | None = None
              ) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        if symlink is not None:
            info = tarfile.TarInfo(symlink)
            info.type = tarfile.SYMTYPE
            info.linkname = "/etc/passwd"
            tar.addfile(info)


def layout_members(sample_layout: Path) -> list[tuple[str, bytes]]:
    members = [("oci-layout", (sample_layout / "oci-layout").read_bytes()),
               ("index.json", (sample_layout / "index.json").read_bytes())]
    members += [(f"blobs/sha256/{p.name}", p.read_bytes())
                for p in sorted((sample_layout / "blobs" / "sha256").iterdir())]
    return members


@pytest.mark.parametrize(
    ("case", "error", "needle"),
    [
        ("gzip", LayoutError, "compressed archive"),
        ("traversal", LayoutError, "unsafe member name"),
        ("no-index", NotFoundError, "index.json not found"),
        ("duplicate", LayoutError, "appears twice"),
        ("symlink", LayoutError, "not a regular file"),
        ("truncated", LayoutError, "past the archive's end"),
        ("missing", LayoutError, "no such archive"),
        ("wrong-tag", NotFoundError, "available: 1.0"),
        ("bad-blob", DigestMismatchError, "digest mismatch"),
    ],
)
async def test_bad_archives_are_clear_errors(
    sample_layout: Path, tmp_path: Path, case: str, error: type[Exception], needle: str
) -> None:
    members = layout_members(sample_layout)
    archive = tmp_path / "bad.tar"
    blobs = [n for n, _ in members if n.startswith("blobs/")]
    largest = max(members, key=lambda m: len(m[1]))
    if case == "gzip":
        write_tar(archive, members)
        archive.write_bytes(gzip.compress(archive.read_bytes()))
    elif case == "traversal":
        write_tar(archive, [*members, ("../evil", b"x")])
    elif case == "no-index":
        write_tar(archive, [m for m in members if m[0] != "index.json"])
    elif case == "duplicate":
        write_tar(archive, [*members, ("index.json", b"{}")])
    elif case == "symlink":
        write_tar(archive, [m for m in members if m[0] != largest[0]], symlink=largest[0])
    elif case == "truncated":  # cut in the middle of the largest blob's data
        write_tar(archive, members)
        with tarfile.open(archive) as tar:
            info = tar.getmember(largest[0])
        archive.write_bytes(archive.read_bytes()[: info.offset_data + info.size // 2])
    elif case == "bad-blob":
        flipped = bytearray(largest[1])
        flipped[len(flipped) // 2] ^= 0xFF
        write_tar(archive, [(n, bytes(flipped) if n == largest[0] else d) for n, d in members])
    elif case == "wrong-tag":
        write_tar(archive, members)
    assert blobs
    tag = "nope" if case == "wrong-tag" else "1.0"
    target = tmp_path / "nothing" if case == "missing" else archive
    out = tmp_path / "out"
    with pytest.raises(error, match=needle):
        await ociflow.copy(f"oci-archive:{target}:{tag}", f"oci:{out}:1.0")
    if out.exists():
        assert json.loads((out / "index.json").read_text())["manifests"] == []


async def test_destination_must_be_a_regular_file_and_keeps_its_mode(
    sample_layout: Path, tmp_path: Path
) -> None:
    """A symlink, FIFO or directory at the destination is refused, not replaced; an archive
    that is replaced keeps its permissions (a private image stays private)."""
    import os

    (tmp_path / "elsewhere.tar").write_bytes(b"keep")
    link = tmp_path / "link.tar"
    link.symlink_to(tmp_path / "elsewhere.tar")
    fifo = tmp_path / "fifo.tar"
    os.mkfifo(fifo)
    for target in (link, fifo, tmp_path):
        with pytest.raises(LayoutError, match="not a regular file"):
            await ociflow.copy(f"oci:{sample_layout}:1.0", f"oci-archive:{target}:1.0")
    assert link.is_symlink() and (tmp_path / "elsewhere.tar").read_bytes() == b"keep"
    private = tmp_path / "private.tar"
    private.write_bytes(b"old")
    private.chmod(0o600)
    await ociflow.copy(f"oci:{sample_layout}:1.0", f"oci-archive:{private}:1.0")
    assert private.stat().st_mode & 0o777 == 0o600 and leftovers(tmp_path) == []


async def test_a_source_that_is_not_a_regular_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(LayoutError, match="not a regular file"):
        await ociflow.copy(f"oci-archive:{tmp_path}:1.0", f"oci:{tmp_path / 'out'}:1.0")


async def test_hard_links_share_their_target_s_data(sample_layout: Path, tmp_path: Path) -> None:
    """GNU tar stores a second copy of a file as a hard link; skopeo reads those, so do we."""
    members = layout_members(sample_layout)
    archive = tmp_path / "linked.tar"
    with tarfile.open(archive, "w") as tar:
        for name, data in members:
            if name == "index.json":
                info = tarfile.TarInfo("saved-index.json")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
                link = tarfile.TarInfo("index.json")
                link.type = tarfile.LNKTYPE
                link.linkname = "saved-index.json"
                tar.addfile(link)
            else:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    result = await ociflow.copy(f"oci-archive:{archive}:1.0", f"oci:{tmp_path / 'out'}:1.0")
    assert result.digest == root_digest(sample_layout, "1.0")


async def test_a_crashed_write_s_temporary_file_is_swept_later(
    sample_layout: Path, tmp_path: Path
) -> None:
    import os
    import time

    stale = tmp_path / ".x.tar.0123456789ab.ociflow-tmp"
    fresh = tmp_path / ".x.tar.ba9876543210.ociflow-tmp"
    other = tmp_path / ".y.tar.0123456789ab.ociflow-tmp"
    for path in (stale, fresh, other):
        path.write_bytes(b"partial")
    two_hours_ago = time.time() - 7200
    for path in (stale, other):
        os.utime(path, (two_hours_ago, two_hours_ago))
    await ociflow.copy(f"oci:{sample_layout}:1.0", f"oci-archive:{tmp_path / 'x.tar'}:1.0")
    assert not stale.exists() and fresh.exists() and other.exists()


async def test_docker_archive_is_read_by_skopeo_and_names_the_image(
    sample_layout: Path, tmp_path: Path, skopeo: str
) -> None:
    """``docker-archive:PATH:NAME:TAG`` writes what ``docker load`` reads (Docker v25's own
    format: the OCI layout plus ``manifest.json``). skopeo reads it, decompressing the layers to
    exactly the config's ``diff_ids``; ociflow reads it back as the same image."""
    archive = tmp_path / "app.tar"
    result = await ociflow.copy(f"oci:{sample_layout}:1.0",
                                f"docker-archive:{archive}:example.com/team/app:2",
                                platform="linux/amd64")
    with tarfile.open(archive) as tar:
        saved = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
        manifest = json.loads(tar.extractfile(  # type: ignore[union-attr]
            f"blobs/sha256/{result.digest.encoded}").read())
        config_name = f"blobs/sha256/{manifest['config']['digest'].split(':')[1]}"
        config = json.loads(tar.extractfile(config_name).read())  # type: ignore[union-attr]
    assert saved == [{
        "Config": config_name,
        "RepoTags": ["example.com/team/app:2"],
        "Layers": [f"blobs/sha256/{layer['digest'].split(':')[1]}"
                   for layer in manifest["layers"]],
    }]
    out = tmp_path / "by-skopeo"
    subprocess.run([skopeo, "copy", f"docker-archive:{archive}", f"oci:{out}:x"],
                   check=True, capture_output=True)
    got = json.loads((out / "blobs" / "sha256" / root_digest(out, "x").split(":")[1])
                     .read_text())
    # skopeo rewrites the config on the way (its digest changes); the layers it read are ours
    got_config = json.loads((out / "blobs" / "sha256" / got["config"]["digest"].split(":")[1])
                            .read_text())
    assert got_config["rootfs"]["diff_ids"] == config["rootfs"]["diff_ids"]
    # and each layer skopeo stored (recompressed for its OCI layout) unpacks to our diff_id
    unpacked = []
    for layer in got["layers"]:
        data = (out / "blobs" / "sha256" / layer["digest"].split(":")[1]).read_bytes()
        unpacked.append(str(Digest.of(gzip.decompress(data) if data[:2] == b"\x1f\x8b"
                                      else data)))
    assert unpacked == config["rootfs"]["diff_ids"]
    back = await ociflow.copy(f"docker-archive:{archive}:example.com/team/app:2",
                              f"oci:{tmp_path / 'back'}:1")
    assert back.digest == result.digest


async def test_docker_archive_of_an_index_needs_a_platform(
    sample_layout: Path, tmp_path: Path
) -> None:
    with pytest.raises(ociflow.InvalidReferenceError, match="choose one with --platform"):
        await ociflow.copy(f"oci:{sample_layout}:1.0", f"docker-archive:{tmp_path}/x.tar:app:1")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("text", "name", "tag"),
    [
        ("docker-archive:/tmp/a.tar", None, None),
        ("docker-archive:/tmp/a.tar:app", "app:latest", "latest"),
        ("docker-archive:/tmp/a.tar:docker.io/library/app:1", "app:1", "1"),
        ("docker-archive:/tmp/a.tar:org/app:1", "org/app:1", "1"),
        ("docker-archive:/tmp/a.tar:localhost:5000/app:1", "localhost:5000/app:1", "1"),
    ],
)
def test_docker_archive_references(text: str, name: str | None, tag: str | None) -> None:
    ref = parse_reference(text)
    assert isinstance(ref, LayoutReference) and ref.transport == "docker-archive"
    assert (ref.path, ref.image_name, ref.tag) == ("/tmp/a.tar", name, tag)


async def test_an_older_docker_save_is_read(
    registry: RegistryServer, sample_layout: Path, tmp_path: Path, repo: str, skopeo: str
) -> None:
    """skopeo 1.9 writes the pre-v25 ``docker save`` format (manifest.json, ``<hex>.tar``
    layers, no index.json). ociflow makes up its manifest: the config as saved, the layers as
    stored, each checked against its diff_id while it streams."""
    archive = tmp_path / "legacy.tar"
    subprocess.run([skopeo, "copy", f"oci:{sample_layout}:1.0",
                    f"docker-archive:{archive}:app:1"], check=True, capture_output=True)
    with tarfile.open(archive) as tar:
        assert "index.json" not in tar.getnames()
        saved = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
        config = json.loads(tar.extractfile(saved[0]["Config"]).read())  # type: ignore[union-attr]
    pushed = await ociflow.copy(f"docker-archive:{archive}:app:1",
                                f"docker://{registry.address}/{repo}:1")
    assert pushed.media_type == "application/vnd.docker.distribution.manifest.v2+json"
    raw = subprocess.run([skopeo, "inspect", "--raw", "--tls-verify=false",
                          f"docker://{registry.address}/{repo}:1"],
                         check=True, capture_output=True).stdout
    manifest = json.loads(raw)
    assert manifest["config"]["digest"] == "sha256:" + saved[0]["Config"].removesuffix(".json")
    assert [layer["digest"] for layer in manifest["layers"]] == config["rootfs"]["diff_ids"]
    with pytest.raises(NotFoundError, match="no image saved as other:2"):
        await ociflow.copy(f"docker-archive:{archive}:other:2", f"oci:{tmp_path / 'x'}:1")


async def test_an_older_docker_save_with_a_wrong_layer_is_refused(
    sample_layout: Path, tmp_path: Path, skopeo: str
) -> None:
    archive = tmp_path / "legacy.tar"
    subprocess.run([skopeo, "copy", f"oci:{sample_layout}:1.0",
                    f"docker-archive:{archive}"], check=True, capture_output=True)
    rewritten = tmp_path / "bad.tar"
    with tarfile.open(archive) as src, tarfile.open(rewritten, "w") as dst:
        saved = json.loads(src.extractfile("manifest.json").read())  # type: ignore[union-attr]
        first_layer = saved[0]["Layers"][0]
        for info in src.getmembers():
            data = src.extractfile(info).read() if info.isreg() else None  # type: ignore[union-attr]
            if info.name == first_layer and data is not None:
                flipped = bytearray(data)
                flipped[600] ^= 0xFF
                data = bytes(flipped)
            dst.addfile(info, io.BytesIO(data) if data is not None else None)
    out = tmp_path / "out"
    with pytest.raises(DigestMismatchError):
        await ociflow.copy(f"docker-archive:{rewritten}", f"oci:{out}:1")
    # the layer that does not match its diff_id is nowhere; no image is tagged
    assert not (out / "blobs" / "sha256" / first_layer.removesuffix(".tar")).exists()
    assert json.loads((out / "index.json").read_text())["manifests"] == []
