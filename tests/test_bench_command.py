"""``ociflow bench``: pushes, pulls, verifies, measures, and cleans up after itself."""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest

from ociflow.bench import bench, parse_size
from ociflow.reference import parse_docker_reference
from tests.fault_proxy import Fault, FaultProxy
from tests.registry_server import RegistryServer

pytestmark = pytest.mark.integration


def blob_exists(registry: RegistryServer, repo: str, digest: str) -> bool:
    request = urllib.request.Request(f"{registry.url}/v2/{repo}/blobs/{digest}", method="HEAD")
    try:
        with urllib.request.urlopen(request):
            return True
    except urllib.error.HTTPError as exc:
        assert exc.code == 404
        return False


async def test_bench_measures_and_deletes_what_it_created(
    registry: RegistryServer, repo: str
) -> None:
    async with FaultProxy(registry.url) as proxy:
        ref = parse_docker_reference(f"{proxy.address}/{repo}")
        result = await bench(ref, size=3 * 2**20, blobs=2, jobs=2)
        pushed = proxy.entries("PUT", r"/blobs/uploads/")
        deletes = proxy.entries("DELETE", r"/blobs/sha256:")
    assert result.upload_mbps > 0 and result.download_mbps > 0
    assert result.head_per_second > 0 and result.small_get_per_second > 0
    assert len(result.first_byte_seconds) == 2
    # two large blobs and the small one went up, and all three were deleted again
    assert len(pushed) == 3 and len(deletes) == 3
    assert len(result.deleted) == 3 and result.left_behind == {}
    for digest in result.deleted:
        assert not blob_exists(registry, repo, digest)
    doc = result.to_json()
    assert doc["blobs"] == 2 and doc["deleted"] == 3 and doc["leftBehind"] == {}
    assert "cleaned up 3 blob(s)" in result.report()


async def test_bench_reports_blobs_it_could_not_delete(
    registry: RegistryServer, repo: str
) -> None:
    async with FaultProxy(registry.url) as proxy:
        body = b'{"errors":[{"code":"UNSUPPORTED","message":"The operation is unsupported."}]}'
        proxy.add("DELETE", r"/blobs/", Fault(status=405, body=body,
                                                 headers={"Content-Type": "application/json"}))
        result = await bench(parse_docker_reference(f"{proxy.address}/{repo}"),
                             size=2**20, blobs=1, jobs=1)
    assert result.deleted == []
    assert len(result.left_behind) == 2
    report = result.report()
    for digest, why in result.left_behind.items():
        assert f"NOT deleted: {digest}" in report
        assert "405" in why or "UNSUPPORTED" in why
        assert blob_exists(registry, repo, digest)


@pytest.mark.parametrize(
    ("text", "value"),
    [("256MiB", 256 * 2**20), ("1GiB", 2**30), ("100MB", 10**8), ("4096", 4096), ("1.5k", 1500)],
)
def test_parse_size(text: str, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "MiB", "12XB", "-"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


def test_bench_cli_json_and_errors(registry: RegistryServer, repo: str) -> None:
    import json
    import subprocess
    import sys

    run = [sys.executable, "-m", "ociflow", "bench"]
    out = subprocess.run(
        [*run, f"{registry.address}/{repo}", "--size", "1MiB", "--blobs", "2", "--json"],
        capture_output=True, text=True, check=True,
    )
    doc = json.loads(out.stdout)
    assert doc["blobs"] == 2 and doc["blobSize"] == 2**20
    assert doc["deleted"] == 3 and doc["leftBehind"] == {}
    assert doc["uploadMBps"] > 0 and doc["downloadMBps"] > 0
    wrong = subprocess.run([*run, "oci:/tmp/layout"], capture_output=True, text=True)
    assert wrong.returncode == 1 and "needs a registry repository" in wrong.stderr
    usage = subprocess.run([*run, "x/y", "--size", "12XB"], capture_output=True, text=True)
    assert usage.returncode == 2 and "invalid size" in usage.stderr
