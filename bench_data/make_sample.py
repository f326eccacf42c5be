#!/usr/bin/env python3
"""Write the committed sample image: a two-platform OCI image index in an OCI image layout.

Usage: ``python bench_data/make_sample.py [OUT_DIR]`` (default ``bench_data/sample``).

The layout holds one image index tagged ``1.0`` with ``linux/amd64`` and ``linux/arm64`` image
manifests. Each has three ``tar+gzip`` layers; the base layer is the same blob for both platforms.
Every byte is a pure function of this script (fixed mtimes, owners, gzip header, JSON layout), so
running it twice gives identical files -- ``tests/test_bench_data.py`` checks the committed copy.

This script deliberately uses only the standard library and never imports ``ociflow``: the sample
is the yardstick ociflow is measured against, so it must not share ociflow's bugs.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import sys
import tarfile
from pathlib import Path
from typing import Any

DEFAULT_OUT = Path(__file__).resolve().parent / "sample"
TAG = "1.0"

# One fixed instant for every timestamp (tar mtimes, config "created", history): reproducibility.
EPOCH = 1_704_067_200  # 2024-01-01T00:00:00Z
CREATED = "2024-01-01T00:00:00Z"

MT_INDEX = "application/vnd.oci.image.index.v1+json"
MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"

PLATFORMS = ("amd64", "arm64")

# fmt: off
_WORDS = (
    "registry", "blob", "manifest", "index", "layer", "digest", "config", "platform", "tag",
    "chunk", "stream", "verify", "resume", "mount", "token", "retry", "bearer", "upload",
    "session", "range", "commit", "descriptor", "annotation", "layout", "snapshot", "rootfs",
    "whiteout", "archive", "compress", "gzip", "tar", "sha256", "offset", "content",
)
# fmt: on


# -- content ----------------------------------------------------------------------------------


def generated_text(seed: str, lines: int) -> bytes:
    """Deterministic prose-like text: words picked by SHA-256 of (seed, line), not by ``random``,
    so the output cannot change with the Python version."""
    out = []
    for n in range(lines):
        h = hashlib.sha256(f"{seed}/{n}".encode()).digest()
        words = [_WORDS[b % len(_WORDS)] for b in h[: 6 + h[31] % 8]]
        out.append(f"{n:04d} " + " ".join(words) + ".\n")
    return "".join(out).encode()


class _Tar:
    """Builds one tar archive in memory with normalised metadata (owner root, fixed mtime)."""

    def __init__(self) -> None:
        self._members: list[tuple[tarfile.TarInfo, bytes | None]] = []

    def _info(self, name: str, kind: bytes, mode: int, uid: int) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.type = kind
        info.mode = mode
        info.mtime = EPOCH
        info.uid = info.gid = uid
        info.uname = info.gname = "root" if uid == 0 else "app"
        return info

    def dir(self, name: str, mode: int = 0o755, uid: int = 0) -> None:
        self._members.append((self._info(name, tarfile.DIRTYPE, mode, uid), None))

    def file(self, name: str, data: bytes, mode: int = 0o644, uid: int = 0) -> None:
        info = self._info(name, tarfile.REGTYPE, mode, uid)
        info.size = len(data)
        self._members.append((info, data))

    def symlink(self, name: str, target: str) -> None:
        info = self._info(name, tarfile.SYMTYPE, 0o777, 0)
        info.linkname = target
        self._members.append((info, None))

    def finish(self) -> bytes:
        """The archive: the members in the order added, then the end-of-archive blocks."""
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for info, data in self._members:
                tar.addfile(info, None if data is None else io.BytesIO(data))
        return buf.getvalue()


def base_layer() -> bytes:
    """The platform-independent base: a tiny filesystem skeleton (shared by both platforms)."""
    t = _Tar()
    for d in ("etc", "usr", "usr/bin", "usr/share", "usr/share/doc", "usr/share/doc/sample"):
        t.dir(d)
    t.dir("tmp", mode=0o1777)
    t.symlink("bin", "usr/bin")
    t.file(
        "etc/os-release",
        b'NAME="ociflow sample"\nID=ociflow-sample\nVERSION_ID=1.0\n'
        b'PRETTY_NAME="ociflow sample 1.0"\n',
    )
    t.file("etc/motd", b"Welcome to the ociflow sample image.\n")
    t.file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n")
    t.file("etc/group", b"root:x:0:\napp:x:1000:\n")
    t.dir("home")
    t.dir("home/app", mode=0o750, uid=1000)
    t.file("usr/share/doc/sample/README", generated_text("base-readme", 60))
    return t.finish()


def app_layer(arch: str) -> bytes:
    """The per-platform program: a script and a file naming its platform."""
    t = _Tar()
    for d in ("usr", "usr/local", "usr/local/bin", "etc", "etc/sample"):
        t.dir(d)
    t.file(
        "usr/local/bin/hello",
        f'#!/bin/sh\necho "hello from the ociflow sample ({arch})"\n'.encode(),
        mode=0o755,
    )
    t.symlink("usr/local/bin/hi", "hello")
    t.file("etc/sample/platform", f"linux/{arch}\n".encode())
    return t.finish()


def data_layer(arch: str) -> bytes:
    """Per-platform data, and a whiteout that deletes the base layer's ``etc/motd``."""
    t = _Tar()
    for d in ("srv", "srv/data", "etc"):
        t.dir(d)
    t.file(f"srv/data/notes-{arch}.txt", generated_text(f"notes-{arch}", 90))
    t.file("srv/data/numbers.csv", generated_text(f"numbers-{arch}", 30), mode=0o640)
    # A whiteout entry (image-spec layer.md "Whiteouts"): unpackers must remove etc/motd.
    t.file("etc/.wh.motd", b"")
    t.dir("home")
    t.dir("home/app", mode=0o750, uid=1000)
    t.file("home/app/.profile", b"export PS1='$ '\n", mode=0o600, uid=1000)
    return t.finish()


def gzip_bytes(data: bytes) -> bytes:
    """gzip with a fixed header: mtime 0, no file name (``gzip -n``), so bytes are reproducible."""
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=9) as gz:
        gz.write(data)
    return buf.getvalue()


# -- layout -----------------------------------------------------------------------------------


def dump_json(obj: Any) -> bytes:
    return json.dumps(obj, indent=2).encode() + b"\n"


class Layout:
    """Collects blobs by digest; ``write`` puts them and the layout files in a directory."""

    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}

    def add(self, media_type: str, data: bytes, **extra: Any) -> dict[str, Any]:
        """Store ``data`` and return its descriptor (``extra`` adds platform/annotations)."""
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        self.blobs[digest] = data
        return {"mediaType": media_type, "digest": digest, "size": len(data), **extra}

    def write(self, out: Path, root: dict[str, Any]) -> None:
        blob_dir = out / "blobs" / "sha256"
        blob_dir.mkdir(parents=True, exist_ok=True)
        wanted = {d.removeprefix("sha256:") for d in self.blobs}
        # Drop blobs of an earlier version of the sample, so the directory holds exactly this one.
        for stale in blob_dir.iterdir():
            if stale.name not in wanted:
                stale.unlink()
        for digest, data in self.blobs.items():
            (blob_dir / digest.removeprefix("sha256:")).write_bytes(data)
        (out / "oci-layout").write_bytes(dump_json({"imageLayoutVersion": "1.0.0"}))
        index = {"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": [root]}
        (out / "index.json").write_bytes(dump_json(index))


def image(layout: Layout, arch: str, base: bytes) -> dict[str, Any]:
    """Add one platform's layers, config and manifest; return the manifest's descriptor."""
    tars = [base, app_layer(arch), data_layer(arch)]
    layers = [layout.add(MT_LAYER_GZIP, gzip_bytes(tar)) for tar in tars]
    config = {
        "created": CREATED,
        "architecture": arch,
        "os": "linux",
        "config": {
            "User": "0:0",
            "Env": [
                "PATH=/usr/local/bin:/usr/bin:/bin",
                f"SAMPLE_PLATFORM=linux/{arch}",
            ],
            "Cmd": ["/usr/local/bin/hello"],
            "WorkingDir": "/",
            "Labels": {"org.opencontainers.image.title": "ociflow sample"},
        },
        "rootfs": {
            "type": "layers",
            "diff_ids": ["sha256:" + hashlib.sha256(tar).hexdigest() for tar in tars],
        },
        "history": [
            {"created": CREATED, "created_by": "make_sample.py: base filesystem"},
            {"created": CREATED, "created_by": f"make_sample.py: hello script for {arch}"},
            {"created": CREATED, "created_by": f"make_sample.py: data for {arch}, drop motd"},
            {
                "created": CREATED,
                "created_by": "make_sample.py: CMD [/usr/local/bin/hello]",
                "empty_layer": True,
            },
        ],
    }
    manifest = {
        "schemaVersion": 2,
        "mediaType": MT_MANIFEST,
        "config": layout.add(MT_CONFIG, dump_json(config)),
        "layers": layers,
        "annotations": {"org.opencontainers.image.created": CREATED},
    }
    return layout.add(
        MT_MANIFEST, dump_json(manifest), platform={"architecture": arch, "os": "linux"}
    )


def build(out: Path) -> str:
    """Write the sample layout to ``out``; return the digest of the tagged index."""
    layout = Layout()
    base = base_layer()
    manifests = [image(layout, arch, base) for arch in PLATFORMS]
    index = {
        "schemaVersion": 2,
        "mediaType": MT_INDEX,
        "manifests": manifests,
        "annotations": {
            "org.opencontainers.image.title": "ociflow sample",
            "org.opencontainers.image.description": "Two-platform sample image for ociflow tests",
            "org.opencontainers.image.created": CREATED,
            "org.opencontainers.image.version": TAG,
        },
    }
    root = layout.add(
        MT_INDEX, dump_json(index), annotations={"org.opencontainers.image.ref.name": TAG}
    )
    layout.write(out, root)
    return str(root["digest"])


def main(argv: list[str]) -> int:
    if len(argv) > 1 or (argv and argv[0].startswith("-")):
        print(__doc__, file=sys.stderr)
        return 2
    out = Path(argv[0]) if argv else DEFAULT_OUT
    digest = build(out)
    print(f"{out}:{TAG} {digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
