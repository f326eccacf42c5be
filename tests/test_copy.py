"""End-to-end copies through the engine, against real registries and real layouts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import ociflow
from ociflow import mediatypes
from ociflow.digest import Digest
from tests.fault_proxy import FaultProxy
from tests.layouts import blob, tagged
from tests.registry_server import RegistryServer

pytestmark = pytest.mark.integration


def skopeo_raw(skopeo: str, ref: str) -> bytes:
    return subprocess.run(
        [skopeo, "inspect", "--raw", "--tls-verify=false", ref],
        check=True,
        capture_output=True,
    ).stdout


def all_blobs_verify(path: Path) -> None:
    for file in (path / "blobs" / "sha256").iterdir():
        assert Digest.of(file.read_bytes()) == f"sha256:{file.name}"


@pytest.fixture()
def sample_root(sample_layout: Path) -> dict:
    return tagged(sample_layout, "1.0")


async def test_layout_to_registry_to_layout_preserves_index(
    sample_layout: Path, sample_root: dict, registry: RegistryServer, repo: str,
    tmp_path: Path, skopeo: str,
) -> None:
    dst = f"docker://{registry.address}/{repo}:1.0"
    pushed = await ociflow.copy(f"oci:{sample_layout}:1.0", dst)
    assert pushed.digest == sample_root["digest"]
    assert pushed.media_type == mediatypes.OCI_INDEX
    assert pushed.blobs_copied > 0 and pushed.blobs_skipped == 0
    # skopeo sees the exact index bytes in the registry
    raw = skopeo_raw(skopeo, dst)
    assert raw == blob(sample_layout, sample_root["digest"])

    out = tmp_path / "pulled"
    pulled = await ociflow.copy(dst, f"oci:{out}:1.0")
    assert pulled.digest == pushed.digest
    assert tagged(out, "1.0")["digest"] == sample_root["digest"]
    # every blob of the sample arrived byte-identical
    for file in (sample_layout / "blobs" / "sha256").iterdir():
        assert (out / "blobs" / "sha256" / file.name).read_bytes() == file.read_bytes()
    all_blobs_verify(out)
    assert not any(p.name.endswith(".partial") for p in out.rglob("*"))


async def test_registry_to_registry_two_registries(
    sample_layout: Path, sample_root: dict, registry: RegistryServer,
    registry2: RegistryServer, repo: str, skopeo: str,
) -> None:
    src = f"docker://{registry.address}/{repo}:1.0"
    await ociflow.copy(f"oci:{sample_layout}:1.0", src)
    dst = f"docker://{registry2.address}/{repo}/mirror:1.0"
    result = await ociflow.copy(src, dst)
    assert result.digest == sample_root["digest"]
    assert result.blobs_mounted == 0 and result.blobs_copied > 0
    assert skopeo_raw(skopeo, dst) == skopeo_raw(skopeo, src)


async def test_registry_to_registry_same_registry_mounts(
    sample_layout: Path, registry: RegistryServer, repo: str,
) -> None:
    src = f"docker://{registry.address}/{repo}/a:1.0"
    first = await ociflow.copy(f"oci:{sample_layout}:1.0", src)
    proxy = FaultProxy(registry.url)
    await proxy.start()
    try:
        second = await ociflow.copy(
            f"docker://{proxy.address}/{repo}/a:1.0", f"docker://{proxy.address}/{repo}/b:1.0"
        )
    finally:
        await proxy.stop()
    assert second.digest == first.digest
    assert second.blobs_mounted == first.blobs_copied
    assert second.blobs_copied == 0
    # mounted, not uploaded: no blob PUT and no blob GET went through
    assert proxy.count("PUT", r"/blobs/uploads/") == 0
    assert proxy.count("GET", r"/blobs/sha256:") == 0
    assert proxy.count("POST", r"/blobs/uploads/") == second.blobs_mounted


async def test_layout_to_layout_and_platform_selection(
    sample_layout: Path, sample_root: dict, tmp_path: Path, umoci: str,
) -> None:
    whole = tmp_path / "whole"
    result = await ociflow.copy(f"oci:{sample_layout}:1.0", f"oci:{whole}:1.0")
    assert result.digest == sample_root["digest"]
    assert blob(whole, result.digest) == blob(sample_layout, result.digest)

    index = json.loads(blob(sample_layout, sample_root["digest"]))
    arm = next(m for m in index["manifests"] if m["platform"]["architecture"] == "arm64")
    single = tmp_path / "arm64"
    picked = await ociflow.copy(
        f"oci:{sample_layout}:1.0", f"oci:{single}:arm", platform="linux/arm64"
    )
    assert picked.digest == arm["digest"]
    assert picked.media_type == mediatypes.OCI_MANIFEST
    assert tagged(single, "arm")["digest"] == arm["digest"]
    all_blobs_verify(single)
    # only the arm64 image's blobs were copied
    manifest = json.loads(blob(single, arm["digest"]))
    expected = {arm["digest"], manifest["config"]["digest"]} | {
        layer["digest"] for layer in manifest["layers"]
    }
    present = {f"sha256:{p.name}" for p in (single / "blobs" / "sha256").iterdir()}
    assert present == expected
    # umoci unpacks the single image ociflow wrote
    bundle = tmp_path / "bundle"
    subprocess.run(
        [umoci, "unpack", "--rootless", "--image", f"{single}:arm", str(bundle)],
        check=True, capture_output=True,
    )
    assert (bundle / "rootfs").is_dir() and any((bundle / "rootfs").iterdir())


async def test_single_image_round_trip_through_registry(
    sample_layout: Path, registry: RegistryServer, repo: str, tmp_path: Path, skopeo: str,
) -> None:
    single = tmp_path / "single"
    picked = await ociflow.copy(
        f"oci:{sample_layout}:1.0", f"oci:{single}:x", platform="linux/amd64"
    )
    ref = f"docker://{registry.address}/{repo}:amd64"
    pushed = await ociflow.copy(f"oci:{single}:x", ref)
    assert pushed.digest == picked.digest
    assert skopeo_raw(skopeo, ref) == blob(single, picked.digest)
    back = tmp_path / "back"
    pulled = await ociflow.copy(ref, f"oci:{back}:x")
    assert pulled.digest == picked.digest
    assert blob(back, picked.digest) == blob(single, picked.digest)
    # --platform on a registry index source, tagged as the platform manifest
    await ociflow.copy(f"oci:{sample_layout}:1.0", f"docker://{registry.address}/{repo}:index")
    arm = await ociflow.copy(
        f"docker://{registry.address}/{repo}:index",
        f"docker://{registry.address}/{repo}:arm64",
        platform="linux/arm64",
    )
    assert arm.media_type == mediatypes.OCI_MANIFEST
    raw = skopeo_raw(skopeo, f"docker://{registry.address}/{repo}:arm64")
    assert Digest.of(raw) == arm.digest


async def test_second_copy_uploads_nothing(
    sample_layout: Path, registry: RegistryServer, repo: str,
) -> None:
    proxy = FaultProxy(registry.url)
    await proxy.start()
    try:
        dst = f"docker://{proxy.address}/{repo}:1.0"
        first = await ociflow.copy(f"oci:{sample_layout}:1.0", dst)
        uploads_before = proxy.count("PUT", r"/blobs/uploads/")
        assert uploads_before == first.blobs_copied
        second = await ociflow.copy(f"oci:{sample_layout}:1.0", dst)
    finally:
        await proxy.stop()
    assert proxy.count("PUT", r"/blobs/uploads/") == uploads_before
    assert proxy.count("POST", r"/blobs/uploads/") == first.blobs_copied
    assert second.blobs_copied == 0 and second.digest == first.digest


async def test_skopeo_reads_what_ociflow_wrote_and_ociflow_reads_skopeo(
    sample_layout: Path, sample_root: dict, registry: RegistryServer, repo: str,
    tmp_path: Path, skopeo: str,
) -> None:
    ours = tmp_path / "ours"
    await ociflow.copy(f"oci:{sample_layout}:1.0", f"oci:{ours}:1.0")
    # skopeo copies ociflow's layout, and the registry image ociflow pushed
    theirs = tmp_path / "theirs"
    subprocess.run(
        [skopeo, "copy", "--all", "--preserve-digests", f"oci:{ours}:1.0", f"oci:{theirs}:1.0"],
        check=True, capture_output=True,
    )
    ref = f"docker://{registry.address}/{repo}:1.0"
    await ociflow.copy(f"oci:{ours}:1.0", ref)
    from_registry = tmp_path / "from-registry"
    subprocess.run(
        [skopeo, "copy", "--all", "--preserve-digests", "--src-tls-verify=false", ref,
         f"oci:{from_registry}:1.0"],
        check=True, capture_output=True,
    )
    assert tagged(from_registry, "1.0")["digest"] == sample_root["digest"]
    # ociflow reads the layout skopeo wrote
    again = tmp_path / "again"
    result = await ociflow.copy(f"oci:{theirs}:1.0", f"oci:{again}:1.0")
    assert result.digest == sample_root["digest"]
    all_blobs_verify(again)


def test_copy_sync_and_json_cli(sample_layout: Path, sample_root: dict, tmp_path: Path) -> None:
    result = ociflow.copy_sync(f"oci:{sample_layout}:1.0", f"oci:{tmp_path / 'a'}:1.0", jobs=1)
    assert result.digest == sample_root["digest"]
    out = subprocess.run(
        [sys.executable, "-m", "ociflow", "copy", "--json", f"oci:{sample_layout}:1.0",
         f"oci:{tmp_path / 'b'}:1.0"],
        check=True, capture_output=True, text=True,
    )
    doc = json.loads(out.stdout)
    assert doc["digest"] == sample_root["digest"]
    assert doc["blobsCopied"] == result.blobs_copied
    quiet = subprocess.run(
        [sys.executable, "-m", "ociflow", "copy", "-q", f"oci:{sample_layout}:1.0",
         f"oci:{tmp_path / 'c'}:1.0"],
        check=True, capture_output=True, text=True,
    )
    assert quiet.stdout == "" and quiet.stderr == ""


def test_connection_flags_for_one_side_only(
    registry: RegistryServer, registry2: RegistryServer, sample_layout: Path, repo: str
) -> None:
    """``--dest-plain-http`` goes to the destination only: the source is still probed for
    TLS first (a loopback registry), the destination never is."""
    ociflow.copy_sync(f"oci:{sample_layout}:1.0", f"docker://{registry.address}/{repo}:1.0")
    done = subprocess.run(
        [sys.executable, "-m", "ociflow", "copy", "-q", "--debug", "--dest-plain-http",
         f"docker://{registry.address}/{repo}:1.0", f"docker://{registry2.address}/{repo}:1.0"],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert f"GET https://{registry.address}/v2/" in done.stderr
    assert f"https://{registry2.address}" not in done.stderr
