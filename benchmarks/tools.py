"""The tools under test and how each one is told to do a job.

A *job* is one scenario on one image with a concrete source and destination: pull (registry →
fresh OCI layout directory), push (OCI layout → fresh repository on a fresh registry) or copy
(registry → fresh repository on another fresh registry). Each tool turns a job into a command
line; building it happens outside the timed region (curl-put opens its upload session there).
A tool that cannot do a job says why, and the harness reports "n/a" instead of a number.

Tools: ``ociflow`` (its CLI), ``skopeo`` (``copy --all --preserve-digests``), ``oras-py`` and
``python-dxf`` (the drivers in ``benchmarks/peers/``) and ``curl-put``, the raw-protocol
reference for push: one ``curl -T`` PUT of the big image's layer into an open upload session.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from benchmarks import registries
from benchmarks.peers.graph import INDEX_TYPES, Blob

REPO_ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = ("pull", "push", "copy")
IMAGES = ("big", "typical", "small", "multi")


@dataclass(frozen=True)
class Image:
    """A generated benchmark image in an OCI layout: ``bytes`` counts every distinct blob,
    manifests included; ``content`` lists the configs and layers."""

    name: str
    layout: Path
    tag: str
    root: str
    media_type: str
    bytes: int
    blobs: int
    content: tuple[Blob, ...]

    @property
    def largest(self) -> Blob:
        return max(self.content, key=lambda blob: blob.size)


@dataclass(frozen=True)
class RemoteRef:
    address: str  # host:port
    repo: str
    tag: str

    @property
    def docker(self) -> str:
        return f"docker://{self.address}/{self.repo}:{self.tag}"

    @property
    def plain(self) -> str:
        return f"{self.address}/{self.repo}:{self.tag}"


@dataclass(frozen=True)
class LayoutRef:
    path: Path
    tag: str

    @property
    def oci(self) -> str:
        return f"oci:{self.path}:{self.tag}"


@dataclass(frozen=True)
class Job:
    """One measured transfer; ``scratch`` is a per-run directory the harness removes."""

    scenario: str
    image: Image
    src: RemoteRef | LayoutRef
    dst: RemoteRef | LayoutRef
    scratch: Path


def _python_env() -> dict[str, str]:
    """The environment of Python children: the repository importable (ociflow, the drivers)."""
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": str(REPO_ROOT) + (os.pathsep + path if path else "")}


def _first_line(argv: Sequence[str], env: dict[str, str] | None = None) -> str | None:
    """The first line a command prints, or None when it fails."""
    try:
        done = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=30, check=True, env=env
        )
    except (OSError, subprocess.SubprocessError):
        return None
    lines = (done.stdout or done.stderr).strip().splitlines()
    return lines[0] if lines else None


class Tool:
    """A tool under test. Subclasses set ``name`` and implement ``command``."""

    name = ""
    #: the name its version is reported under
    program = ""
    #: manifests arrive byte for byte, so the destination's root digest equals the source's
    preserves_digests = True
    #: a pull writes an OCI layout (index.json with the tag), not just blob files
    writes_layout = True

    def applies(self, scenario: str, image: Image) -> bool:
        """Whether the tool has a row for this scenario and image at all (curl-put: one)."""
        return True

    def missing(self) -> str | None:
        """Why the tool cannot run on this machine, or None."""
        return None

    def unsupported(self, scenario: str, image: Image) -> str | None:
        """Why the tool cannot do this scenario on this image, or None."""
        return None

    def command(self, job: Job) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str] | None:
        return None

    def payload_bytes(self, image: Image) -> int:
        """The bytes a run moves, for MB/s."""
        return image.bytes

    def version(self) -> str | None:
        return None


class Ociflow(Tool):
    """``python -m ociflow copy -q --plain-http SRC DST`` (plus ``extra_args``)."""

    name = "ociflow"

    def __init__(self, extra_args: Sequence[str] = ()) -> None:
        self.extra_args = list(extra_args)

    def missing(self) -> str | None:
        if self.version() is None:
            return "python -m ociflow --version failed"
        return None

    def command(self, job: Job) -> list[str]:
        # --plain-http is ociflow's spelling of skopeo's --tls-verify=false for these
        # HTTP-only loopback registries; it also skips the one-off HTTPS probe.
        return [
            sys.executable, "-m", "ociflow", "copy", "-q", "--plain-http", *self.extra_args,
            _ref(job.src), _ref(job.dst),
        ]  # fmt: skip

    def env(self) -> dict[str, str]:
        return _python_env()

    def version(self) -> str | None:
        line = _first_line([sys.executable, "-m", "ociflow", "--version"], _python_env())
        return line.removeprefix("ociflow ").strip() if line else None


def _ref(ref: RemoteRef | LayoutRef) -> str:
    return ref.docker if isinstance(ref, RemoteRef) else ref.oci


class Skopeo(Tool):
    """``skopeo copy --all --preserve-digests`` with TLS verification off for loopback.

    ``--preserve-digests`` makes skopeo move the same bytes as everyone else: without it,
    skopeo 1.9 gzips the ``big`` image's uncompressed layer on the way to a registry (the
    pushed digest changes). ``--dest-oci-accept-uncompressed-layers`` says the same for an OCI
    layout destination (redundant with ``--preserve-digests`` in 1.9; harmless).
    ``--insecure-policy`` only skips reading ``/etc/containers/policy.json``.
    """

    name = "skopeo"

    def missing(self) -> str | None:
        return None if shutil.which("skopeo") else "skopeo not on PATH"

    def command(self, job: Job) -> list[str]:
        argv = ["skopeo", "--insecure-policy", "copy", "--quiet", "--all", "--preserve-digests"]
        if isinstance(job.src, RemoteRef):
            argv.append("--src-tls-verify=false")
        if isinstance(job.dst, RemoteRef):
            argv.append("--dest-tls-verify=false")
        else:
            argv.append("--dest-oci-accept-uncompressed-layers")
        return [*argv, _ref(job.src), _ref(job.dst)]

    def version(self) -> str | None:
        line = _first_line(["skopeo", "--version"])
        return line.removeprefix("skopeo version ").strip() if line else None


class PythonPeer(Tool):
    """A peer library driven by ``benchmarks/peers/<driver>.py`` in a child interpreter."""

    module = ""
    distribution = ""
    driver = ""

    def missing(self) -> str | None:
        top = self.module.split(".")[0]
        if importlib.util.find_spec(top) is None:
            return f"{self.distribution} not installed (pip install -e '.[bench]')"
        return None

    def command(self, job: Job) -> list[str]:
        argv = [sys.executable, "-m", f"benchmarks.peers.{self.driver}", job.scenario]
        if job.scenario == "pull":
            assert isinstance(job.src, RemoteRef) and isinstance(job.dst, LayoutRef)
            return [*argv, job.src.plain, str(job.dst.path)]
        assert isinstance(job.dst, RemoteRef)
        if job.scenario == "push":
            assert isinstance(job.src, LayoutRef)
            return [*argv, f"{job.src.path}:{job.src.tag}", job.dst.plain]
        assert isinstance(job.src, RemoteRef)
        return [*argv, job.src.plain, job.dst.plain, "--scratch", str(job.scratch)]

    def env(self) -> dict[str, str]:
        return _python_env()

    def version(self) -> str | None:
        try:
            return importlib.metadata.version(self.distribution)
        except importlib.metadata.PackageNotFoundError:
            return None


class OrasPy(PythonPeer):
    name = "oras-py"
    module = "oras"
    distribution = "oras"
    driver = "oras_driver"
    preserves_digests = False  # manifests are parsed and re-serialized on upload
    writes_layout = False

    def unsupported(self, scenario: str, image: Image) -> str | None:
        if scenario in ("push", "copy") and image.media_type in INDEX_TYPES:
            return "oras-py's upload_manifest accepts image manifests only, not an index"
        return None


class PythonDxf(PythonPeer):
    name = "python-dxf"
    module = "dxf"
    distribution = "python-dxf"
    writes_layout = False
    driver = "dxf_driver"


class CurlPut(Tool):
    """The registry's own ingest limit: one monolithic ``PUT`` of the big layer with curl.

    The upload session is opened (``POST``) while the command is built, outside the timing;
    curl then sends the file with ``Content-Length`` and the digest in the query.
    """

    name = "curl-put"
    program = "curl"
    writes_layout = False

    def applies(self, scenario: str, image: Image) -> bool:
        return scenario == "push" and image.name == "big"

    def missing(self) -> str | None:
        return None if shutil.which("curl") else "curl not on PATH"

    def command(self, job: Job) -> list[str]:
        assert isinstance(job.src, LayoutRef) and isinstance(job.dst, RemoteRef)
        blob = job.image.largest
        location = registries.start_upload(job.dst.address, job.dst.repo)
        separator = "&" if "?" in location else "?"
        return [
            "curl", "--silent", "--show-error", "--fail", "--output", "/dev/null",
            # No "Expect: 100-continue" round trip: this is the best case of the protocol.
            "--header", "Expect:", "--header", "Content-Type: application/octet-stream",
            "--upload-file", str(job.src.path / "blobs" / "sha256" / blob.hex),
            "--request", "PUT", f"{location}{separator}digest={blob.digest}",
        ]  # fmt: skip

    def payload_bytes(self, image: Image) -> int:
        return image.largest.size

    def version(self) -> str | None:
        line = _first_line(["curl", "--version"])
        return line.split()[1] if line and len(line.split()) > 1 else None


def all_tools(ociflow_args: Sequence[str] = ()) -> dict[str, Tool]:
    """Every known tool by name, in the order rows are reported."""
    tools: list[Tool] = [Ociflow(ociflow_args), Skopeo(), OrasPy(), PythonDxf(), CurlPut()]
    return {tool.name: tool for tool in tools}
