"""The benchmark's registries: a long-lived source and a fresh destination for every run.

Both are the real CNCF distribution registry (``tests/registry_server.py``) on loopback, with
storage under the harness's work directory (tmpfs when available). A destination lives for one
measured run only: besides a new repository name, a new registry (new port) guarantees that no
tool can skip or cross-mount a blob it met in an earlier run. skopeo in particular remembers
blob locations per registry host in its blob-info cache and would otherwise mount from the
previous run's repository instead of uploading.
"""

from __future__ import annotations

import shutil
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.registry_server import RegistryServer, start_registry

MANIFEST_ACCEPT = ", ".join(
    (
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    )
)


class BenchError(Exception):
    """A set-up step of the harness failed (not a measured tool)."""


@contextmanager
def registry(workdir: Path) -> Iterator[RegistryServer]:
    """A registry whose storage is ``workdir``; stopped and its storage removed on exit."""
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        server = start_registry(workdir)
    except RuntimeError as exc:
        shutil.rmtree(workdir, ignore_errors=True)
        raise BenchError(f"starting docker-registry: {exc}") from exc
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def seed(server: RegistryServer, layout: Path, tag: str, repo: str, timeout: float) -> None:
    """Push a layout's image to ``repo:tag`` with skopeo, digests preserved.

    skopeo rather than ociflow, so the source data never depends on the tool being measured.
    """
    argv = [
        "skopeo",
        "--insecure-policy",
        "copy",
        "--quiet",
        "--all",
        "--preserve-digests",
        "--dest-tls-verify=false",
        f"oci:{layout}:{tag}",
        f"docker://{server.address}/{repo}:{tag}",
    ]
    try:
        subprocess.run(argv, check=True, capture_output=True, timeout=timeout)
    except subprocess.CalledProcessError as exc:
        tail = exc.stderr.decode("utf-8", "replace").strip()[-500:]
        raise BenchError(f"seeding {server.address}/{repo}:{tag} with skopeo: {tail}") from exc
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"seeding {server.address}/{repo}:{tag}: timed out") from exc


def _head(url: str, accept: str | None = None) -> tuple[int, str | None]:
    request = urllib.request.Request(url, method="HEAD")
    if accept:
        request.add_header("Accept", accept)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return int(response.status), response.headers.get("Docker-Content-Digest")
    except urllib.error.HTTPError as exc:
        return exc.code, None


def manifest_digest(address: str, repo: str, tag: str) -> str | None:
    """The digest ``repo:tag`` points to at ``address`` (host:port), or None when missing."""
    status, digest = _head(f"http://{address}/v2/{repo}/manifests/{tag}", MANIFEST_ACCEPT)
    return digest if status == 200 else None


def has_blob(address: str, repo: str, digest: str) -> bool:
    status, _ = _head(f"http://{address}/v2/{repo}/blobs/{digest}")
    return status == 200


def start_upload(address: str, repo: str) -> str:
    """Open a blob upload session (``POST /v2/<repo>/blobs/uploads/``); return its URL."""
    base = f"http://{address}"
    request = urllib.request.Request(f"{base}/v2/{repo}/blobs/uploads/", data=b"", method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            location: str | None = response.headers.get("Location")
    except urllib.error.HTTPError as exc:
        raise BenchError(f"{address}/{repo}: opening an upload: HTTP {exc.code}") from exc
    if not location:
        raise BenchError(f"{address}/{repo}: opening an upload: no Location header")
    return urllib.parse.urljoin(base + "/", location)
