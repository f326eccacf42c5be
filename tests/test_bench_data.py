"""The committed sample image and the benchmark image generator (``bench_data/``).

Checks use only the standard library, skopeo and umoci -- never ociflow -- because these layouts
are the yardstick ociflow is tested against.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import subprocess
import sys
import tarfile
import zlib
from pathlib import Path
from typing import Any

import pytest

from bench_data import generate as gen
from tests.conftest import SAMPLE_LAYOUT

BENCH_DATA = SAMPLE_LAYOUT.parent
INDEX = "application/vnd.oci.image.index.v1+json"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"
TAR = "application/vnd.oci.image.layer.v1.tar"
TAR_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
REF_NAME = "org.opencontainers.image.ref.name"

# -- helpers ----------------------------------------------------------------------------------


def blob(layout: Path, desc: dict[str, Any]) -> bytes:
    """The blob a descriptor names, checked against its size and digest."""
    algorithm, hexdigest = desc["digest"].split(":")
    assert algorithm == "sha256"
    data: bytes = (layout / "blobs" / "sha256" / hexdigest).read_bytes()
    assert len(data) == desc["size"], desc
    assert hashlib.sha256(data).hexdigest() == hexdigest, desc
    return data


def tagged(layout: Path, tag: str) -> dict[str, Any]:
    """The descriptor ``index.json`` holds for ``tag`` (exactly one)."""
    index = json.loads((layout / "index.json").read_bytes())
    assert json.loads((layout / "oci-layout").read_bytes()) == {"imageLayoutVersion": "1.0.0"}
    found = [m for m in index["manifests"] if m.get("annotations", {}).get(REF_NAME) == tag]
    assert len(found) == 1, index
    result: dict[str, Any] = found[0]
    return result


def uncompressed(layout: Path, desc: dict[str, Any]) -> bytes:
    data = blob(layout, desc)
    if desc["mediaType"] == TAR_GZIP:
        return gzip.decompress(data)
    assert desc["mediaType"] == TAR
    return data


def check_image(layout: Path, desc: dict[str, Any]) -> list[dict[str, Any]]:
    """Verify a manifest, its config and layers (digests, sizes, diff_ids); return the layers."""
    assert desc["mediaType"] == MANIFEST
    manifest = json.loads(blob(layout, desc))
    assert manifest["mediaType"] == MANIFEST
    assert manifest["schemaVersion"] == 2
    assert manifest["config"]["mediaType"] == CONFIG
    config = json.loads(blob(layout, manifest["config"]))
    assert config["os"] == "linux"
    if "platform" in desc:
        assert config["architecture"] == desc["platform"]["architecture"]
    assert config["rootfs"]["type"] == "layers"
    tars = [uncompressed(layout, layer) for layer in manifest["layers"]]
    assert config["rootfs"]["diff_ids"] == [
        "sha256:" + hashlib.sha256(tar).hexdigest() for tar in tars
    ]
    for tar in tars:  # each layer is a readable tar archive
        with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
            assert archive.getmembers()
    layers: list[dict[str, Any]] = manifest["layers"]
    return layers


def check_blob_names(layout: Path) -> None:
    """Every file under blobs/sha256 hashes to its name; no temporary files are left behind."""
    files = sorted((layout / "blobs" / "sha256").iterdir())
    assert files
    for path in files:
        assert hashlib.sha256(path.read_bytes()).hexdigest() == path.name
    assert not [p for p in layout.rglob("*") if ".tmp" in p.name]


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=60)


# -- the committed sample -------------------------------------------------------------------------


def test_make_sample_reproduces_the_committed_layout_byte_for_byte(tmp_path: Path) -> None:
    out = tmp_path / "sample"
    result = run(sys.executable, BENCH_DATA / "make_sample.py", out)
    assert result.returncode == 0, result.stderr
    assert tree(out) == tree(SAMPLE_LAYOUT)
    assert tagged(out, "1.0")["digest"] in result.stdout


def test_make_sample_drops_stale_blobs(tmp_path: Path) -> None:
    stale = tmp_path / "blobs" / "sha256" / ("0" * 64)
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"old")
    assert run(sys.executable, BENCH_DATA / "make_sample.py", tmp_path).returncode == 0
    assert not stale.exists()
    assert tree(tmp_path) == tree(SAMPLE_LAYOUT)


def test_sample_blobs_hash_to_their_names(sample_layout: Path) -> None:
    check_blob_names(sample_layout)
    assert sum(len(data) for data in tree(sample_layout).values()) < 200 * 1024


def test_sample_is_a_two_platform_index_sharing_its_base_layer(sample_layout: Path) -> None:
    root = tagged(sample_layout, "1.0")
    assert root["mediaType"] == INDEX
    index = json.loads(blob(sample_layout, root))
    assert index["mediaType"] == INDEX
    assert index["annotations"]["org.opencontainers.image.title"]
    platforms = [(m["platform"]["os"], m["platform"]["architecture"]) for m in index["manifests"]]
    assert platforms == [("linux", "amd64"), ("linux", "arm64")]

    amd64, arm64 = (check_image(sample_layout, m) for m in index["manifests"])
    assert [layer["mediaType"] for layer in amd64 + arm64] == [TAR_GZIP] * 6
    assert amd64[0] == arm64[0]
    assert amd64[1]["digest"] != arm64[1]["digest"]
    assert amd64[2]["digest"] != arm64[2]["digest"]


def test_sample_layers_are_realistic_reproducible_tar_gzip(sample_layout: Path) -> None:
    index = json.loads(blob(sample_layout, tagged(sample_layout, "1.0")))
    manifest = json.loads(blob(sample_layout, index["manifests"][0]))
    members: list[tarfile.TarInfo] = []
    for layer in manifest["layers"]:
        data = blob(sample_layout, layer)
        # gzip header (RFC 1952): MTIME is zero and no FNAME flag, so the bytes reproduce.
        assert data[:3] == b"\x1f\x8b\x08"
        assert data[3] & 0x08 == 0
        assert data[4:8] == b"\0\0\0\0"
        with tarfile.open(fileobj=io.BytesIO(gzip.decompress(data))) as archive:
            members += archive.getmembers()
    kinds = {m.type for m in members}
    assert {tarfile.DIRTYPE, tarfile.REGTYPE, tarfile.SYMTYPE} <= kinds
    assert len({m.mtime for m in members}) == 1
    assert all(m.uid in (0, 1000) and m.mode & 0o7000 in (0, 0o1000) for m in members)
    hello = next(m for m in members if m.name == "usr/local/bin/hello")
    assert hello.mode == 0o755


@pytest.mark.integration
def test_skopeo_reads_the_sample_index(sample_layout: Path, skopeo: str) -> None:
    result = run(skopeo, "inspect", "--raw", f"oci:{sample_layout}:1.0")
    assert result.returncode == 0, result.stderr
    assert result.stdout.encode() == blob(sample_layout, tagged(sample_layout, "1.0"))


@pytest.mark.integration
def test_skopeo_copies_all_platforms_unchanged(
    sample_layout: Path, skopeo: str, tmp_path: Path
) -> None:
    out = tmp_path / "copy"
    result = run(skopeo, "copy", "--all", f"oci:{sample_layout}:1.0", f"oci:{out}:1.0")
    assert result.returncode == 0, result.stderr
    assert tagged(out, "1.0")["digest"] == tagged(sample_layout, "1.0")["digest"]
    assert tree(out / "blobs") == tree(sample_layout / "blobs")


@pytest.mark.integration
def test_umoci_unpacks_the_arm64_image(
    sample_layout: Path, skopeo: str, umoci: str, tmp_path: Path
) -> None:
    # umoci 0.4.7 refuses an index ("tag is ambiguous"), so skopeo picks one platform first.
    single = tmp_path / "arm64"
    result = run(
        skopeo, "copy", "--override-os", "linux", "--override-arch", "arm64",
        f"oci:{sample_layout}:1.0", f"oci:{single}:1.0",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    bundle = tmp_path / "bundle"
    result = run(umoci, "unpack", "--rootless", "--image", f"{single}:1.0", bundle)
    assert result.returncode == 0, result.stderr
    rootfs = bundle / "rootfs"
    assert (rootfs / "etc" / "sample" / "platform").read_text() == "linux/arm64\n"
    assert (rootfs / "etc" / "os-release").is_file()
    assert not (rootfs / "etc" / "motd").exists()  # removed by the top layer's whiteout
    assert (rootfs / "bin").is_symlink()
    assert (rootfs / "usr" / "local" / "bin" / "hello").stat().st_mode & 0o111


# -- the generator --------------------------------------------------------------------------------

GENERATED: dict[str, dict[str, Any]] = {
    "small": {},
    "multi": {},
    "big": {"big_mib": 4},
    "typical": {"typical_mb": 3},
}


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """One layout per kind, generated once for the module (each takes well under a second)."""
    base = tmp_path_factory.mktemp("generated")
    return {kind: gen.generate(kind, base / kind, **opts) for kind, opts in GENERATED.items()}


def images(summary: dict[str, Any]) -> tuple[Path, dict[str, Any], list[list[dict[str, Any]]]]:
    """The layout, its tagged root, and the verified layers of each image under it."""
    layout = Path(summary["path"])
    root = tagged(layout, summary["tag"])
    assert root["digest"] == summary["root"]
    if root["mediaType"] == INDEX:
        index = json.loads(blob(layout, root))
        return layout, root, [check_image(layout, m) for m in index["manifests"]]
    return layout, root, [check_image(layout, root)]


@pytest.mark.parametrize("kind", list(GENERATED))
def test_generated_blobs_verify(generated: dict[str, dict[str, Any]], kind: str) -> None:
    summary = generated[kind]
    layout, _root, _layers = images(summary)
    check_blob_names(layout)
    files = list((layout / "blobs" / "sha256").iterdir())
    assert summary["blobs"] == len(files)
    assert summary["bytes"] == sum(p.stat().st_size for p in files)
    assert summary["kind"] == kind and summary["tag"] == "bench"


@pytest.mark.integration
@pytest.mark.parametrize("kind", list(GENERATED))
def test_skopeo_reads_generated(
    generated: dict[str, dict[str, Any]], kind: str, skopeo: str
) -> None:
    layout, root, _layers = images(generated[kind])
    result = run(skopeo, "inspect", "--raw", f"oci:{layout}:bench")
    assert result.returncode == 0, result.stderr
    assert result.stdout.encode() == blob(layout, root)


def test_big_is_one_incompressible_tar_layer(generated: dict[str, dict[str, Any]]) -> None:
    layout, _root, [layers] = images(generated["big"])
    [layer] = layers
    assert layer["mediaType"] == TAR
    assert layer["size"] > 4 * 1024 * 1024
    with tarfile.open(layout / "blobs" / "sha256" / layer["digest"][7:]) as archive:
        [member] = [m for m in archive.getmembers() if m.isfile()]
        assert member.size == 4 * 1024 * 1024
        content = archive.extractfile(member)
        assert content is not None
        sample = content.read(1024 * 1024)
    assert len(zlib.compress(sample, 6)) > len(sample)


def test_small_has_64_layers_of_about_8_kib(generated: dict[str, dict[str, Any]]) -> None:
    _layout, _root, [layers] = images(generated["small"])
    assert len(layers) == 64
    assert all(layer["mediaType"] == TAR_GZIP for layer in layers)
    assert all(7 * 1024 <= layer["size"] <= 9 * 1024 for layer in layers)
    assert len({layer["digest"] for layer in layers}) == 64


def test_multi_is_a_two_platform_index_with_a_shared_layer(
    generated: dict[str, dict[str, Any]],
) -> None:
    layout, root, [amd64, arm64] = images(generated["multi"])
    assert root["mediaType"] == INDEX
    index = json.loads(blob(layout, root))
    assert [m["platform"]["architecture"] for m in index["manifests"]] == ["amd64", "arm64"]
    assert amd64[0] == arm64[0]
    assert not {layer["digest"] for layer in amd64[1:]} & {layer["digest"] for layer in arm64[1:]}
    assert 1024 * 1024 < generated["multi"]["bytes"] < 16 * 1024 * 1024


def test_typical_holds_real_files_from_this_machine(
    generated: dict[str, dict[str, Any]],
) -> None:
    layout, _root, [layers] = images(generated["typical"])
    assert [layer["mediaType"] for layer in layers] == [TAR_GZIP] * 5
    assert 2_000_000 < sum(layer["size"] for layer in layers) < 5_000_000
    checked = 0
    for layer in layers:
        with tarfile.open(fileobj=io.BytesIO(uncompressed(layout, layer))) as archive:
            files = [m for m in archive.getmembers() if m.isfile()]
            assert files
            for member in files[:: max(1, len(files) // 5)]:
                content = archive.extractfile(member)
                assert content is not None
                assert content.read() == (Path("/") / member.name).read_bytes()
                checked += 1
    assert checked >= 5


def test_generate_is_deterministic_and_keeps_other_tags(tmp_path: Path) -> None:
    first = gen.generate("multi", tmp_path, tag="one")
    second = gen.generate("multi", tmp_path, tag="two")
    other_seed = gen.generate("multi", tmp_path, tag="three", seed=1)
    assert first["root"] == second["root"] != other_seed["root"]
    assert tagged(tmp_path, "one")["digest"] == tagged(tmp_path, "two")["digest"]
    assert tagged(tmp_path, "three")["digest"] == other_seed["root"]
    check_blob_names(tmp_path)


def test_generate_rejects_bad_options(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown kind"):
        gen.generate("huge", tmp_path)
    with pytest.raises(ValueError, match="invalid tag"):
        gen.generate("small", tmp_path, tag="../x")
    assert not (tmp_path / "index.json").exists()


def test_generate_command_line_prints_a_summary(tmp_path: Path) -> None:
    result = run(sys.executable, BENCH_DATA / "generate.py", "small", tmp_path, "--tag", "t1")
    assert result.returncode == 0, result.stderr
    root = tagged(tmp_path, "t1")["digest"]
    assert result.stdout.startswith("small: 66 blobs, ")
    assert root in result.stdout
    bad = run(sys.executable, BENCH_DATA / "generate.py", "nope", tmp_path)
    assert bad.returncode == 2
