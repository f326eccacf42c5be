"""Bad input and faults: each gives one clear error line, exit code 1, and nothing partial."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import ociflow
from ociflow.digest import Digest
from tests.fault_proxy import FaultProxy, Rule, flip_byte
from tests.registry_server import RegistryServer, free_port

pytestmark = pytest.mark.integration

HEX = "a" * 64


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ociflow", *args], capture_output=True, text=True, timeout=120
    )


def assert_fails_cleanly(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr  # one line, no traceback
    assert lines[0].startswith("ociflow: error: ")
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert proc.stdout == ""


def files_under(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file()) if path.exists() else []


def assert_only_resumable_partials(out: Path) -> None:
    """A transfer cancelled by another blob's failure may keep its per-digest partial file in
    ``.ociflow-ingest/`` for the next run (which verifies it whole and re-fetches from 0 if it
    is bad); no other partial file may be anywhere."""
    for path in files_under(out):
        if "partial" in path.name:
            assert path.parent.name == ".ociflow-ingest" and path.name.startswith("sha256-")


def final_blobs(path: Path) -> list[Path]:
    return files_under(path / "blobs")


@pytest.mark.parametrize(
    ("ref", "needle"),
    [
        ("oci:/tmp/x@sha256:../x", "sha256:../x"),
        (f"docker://localhost:5000/app@sha256:{HEX[:63]}", "64 lowercase hex"),
        (f"docker://localhost:5000/app@sha256:{HEX.upper()}", "invalid digest"),
        (f"docker://localhost:5000/app@md5:{HEX}", "unsupported algorithm"),
        ("docker://localhost:5000/UPPER:1", "invalid repository"),
        ("docker://localhost:5000/app:bad:tag:x", "invalid"),
        ("ftp://example.com/x", "unsupported transport"),
    ],
)
def test_malformed_references_and_digests(ref: str, needle: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = run_cli("copy", ref, f"oci:{out}:1")
    assert_fails_cleanly(proc, needle)
    assert not out.exists()


def test_usage_error_exit_code_2() -> None:
    proc = run_cli("copy", "only-one-argument")
    assert proc.returncode == 2


def test_missing_tag_in_layout(sample_layout: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = run_cli("copy", f"oci:{sample_layout}:nope", f"oci:{out}:1")
    assert_fails_cleanly(proc, "nope", "1.0")  # names the missing tag and what exists
    assert final_blobs(out) == []


def test_missing_tag_in_registry(registry: RegistryServer, repo: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = run_cli("copy", f"docker://{registry.address}/{repo}:missing", f"oci:{out}:1")
    assert_fails_cleanly(proc, f"{registry.address}/{repo}:missing")
    assert final_blobs(out) == []


def test_missing_layout(tmp_path: Path) -> None:
    proc = run_cli("copy", f"oci:{tmp_path / 'nothing'}:1", f"oci:{tmp_path / 'out'}:1")
    assert_fails_cleanly(proc, "nothing")
    assert not (tmp_path / "out").exists() or final_blobs(tmp_path / "out") == []


def test_registry_not_listening(tmp_path: Path) -> None:
    port = free_port()
    proc = run_cli("copy", f"docker://127.0.0.1:{port}/app:1", f"oci:{tmp_path / 'out'}:1")
    assert_fails_cleanly(proc, f"127.0.0.1:{port}/app:1")
    assert final_blobs(tmp_path / "out") == []


def corrupt_copy(sample_layout: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the sample whose largest layer blob has one byte flipped."""
    src = tmp_path / "src"
    shutil.copytree(sample_layout, src)
    largest = max((src / "blobs" / "sha256").iterdir(), key=lambda p: p.stat().st_size)
    data = bytearray(largest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    largest.write_bytes(bytes(data))
    return src, largest


def test_layout_blob_content_mismatch_to_layout(sample_layout: Path, tmp_path: Path) -> None:
    src, bad = corrupt_copy(sample_layout, tmp_path)
    out = tmp_path / "out"
    proc = run_cli("copy", f"oci:{src}:1.0", f"oci:{out}:1.0")
    assert_fails_cleanly(proc, f"sha256:{bad.name}", "digest mismatch")
    assert not (out / "blobs" / "sha256" / bad.name).exists()
    assert json.loads((out / "index.json").read_text())["manifests"] == []
    assert_only_resumable_partials(out)


def test_layout_blob_content_mismatch_to_registry(
    sample_layout: Path, tmp_path: Path, registry: RegistryServer, repo: str,
) -> None:
    src, bad = corrupt_copy(sample_layout, tmp_path)
    proc = run_cli("copy", f"oci:{src}:1.0", f"docker://{registry.address}/{repo}:1.0")
    assert_fails_cleanly(proc, f"sha256:{bad.name}")
    # the bad blob and the tag never appeared in the registry
    import urllib.error
    import urllib.request

    for url in (
        f"{registry.url}/v2/{repo}/blobs/sha256:{bad.name}",
        f"{registry.url}/v2/{repo}/manifests/1.0",
    ):
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(urllib.request.Request(url, method="HEAD"))
        assert info.value.code == 404


def test_symlink_in_blobs_is_refused(sample_layout: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(sample_layout, src)
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"host file that must not be read")
    victim = max((src / "blobs" / "sha256").iterdir(), key=lambda p: p.stat().st_size)
    victim.unlink()
    os.symlink(secret, victim)
    out = tmp_path / "out"
    proc = run_cli("copy", f"oci:{src}:1.0", f"oci:{out}:1.0")
    assert_fails_cleanly(proc, "symlink")
    assert b"host file" not in b"".join(p.read_bytes() for p in files_under(out))


def test_manifest_over_the_size_cap(sample_layout: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(sample_layout, src)
    config = b"{}"
    (src / "blobs" / "sha256" / Digest.of(config).encoded).write_bytes(config)
    huge = json.dumps({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": str(Digest.of(config)), "size": 2},
        "layers": [],
        "annotations": {"pad": "x" * (4 * 1024 * 1024 + 1)},
    }).encode()
    digest = Digest.of(huge)
    (src / "blobs" / "sha256" / digest.encoded).write_bytes(huge)
    index = json.loads((src / "index.json").read_text())
    index["manifests"].append({
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": str(digest),
        "size": len(huge), "annotations": {"org.opencontainers.image.ref.name": "huge"},
    })
    (src / "index.json").write_text(json.dumps(index))
    out = tmp_path / "out"
    proc = run_cli("copy", f"oci:{src}:huge", f"oci:{out}:huge")
    assert_fails_cleanly(proc, "cap")
    assert final_blobs(out) == []


async def test_registry_blob_with_flipped_byte_is_not_stored(
    sample_layout: Path, registry: RegistryServer, repo: str, tmp_path: Path,
) -> None:
    await ociflow.copy(f"oci:{sample_layout}:1.0", f"docker://{registry.address}/{repo}:1.0")
    proxy = FaultProxy(registry.url, rules=[Rule("GET", r"/blobs/sha256:", flip_byte(100))])
    await proxy.start()
    out = tmp_path / "out"
    try:
        with pytest.raises(ociflow.DigestMismatchError, match="digest mismatch"):
            await ociflow.copy(f"docker://{proxy.address}/{repo}:1.0", f"oci:{out}:1.0")
        # each corrupted blob was fetched at most twice: one re-fetch, no retry loop (P5)
        gets: dict[str, int] = {}
        for entry in proxy.entries("GET", r"/blobs/sha256:"):
            gets[entry.path] = gets.get(entry.path, 0) + 1
        assert gets and max(gets.values()) == 2
    finally:
        await proxy.stop()
    assert final_blobs(out) == []
    assert json.loads((out / "index.json").read_text())["manifests"] == []
    assert_only_resumable_partials(out)
