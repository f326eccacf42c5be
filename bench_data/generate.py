#!/usr/bin/env python3
"""Generate benchmark images as OCI image layouts.

Usage: ``python bench_data/generate.py KIND OUT_DIR [--tag TAG] [--big-mib N] [--typical-mb N]
[--seed N] [--level N]``, or ``generate(kind, out, **opts)`` from Python (returns the summary).

Kinds:

- ``big``: one uncompressed ``tar`` layer holding one file of N MiB (default 512) of
  pseudo-random, incompressible bytes -- measures raw throughput.
- ``typical``: five ``tar+gzip`` layers of real files from this machine (``/usr`` libraries,
  data, Python, binaries, headers), about 100 MB compressed in total -- a realistic image.
- ``small``: 64 ``tar+gzip`` layers of about 8 KiB each -- measures per-blob overhead.
- ``multi``: an image index for ``linux/amd64`` and ``linux/arm64``, a few MiB each, sharing the
  base layer -- exercises indexes and deduplication.

Blobs are streamed to disk while hashed (memory stays a few MiB whatever the size), written to a
temporary name and renamed to their digest; ``index.json`` is written last. An existing layout
in OUT_DIR keeps its other tags. Output is deterministic for a given ``--seed`` (and, for
``typical``, the machine's files), so reruns produce identical digests; pass another seed to get
fresh blobs a registry has not seen. Like ``make_sample.py`` this uses only the standard library
and never imports ``ociflow``.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import io
import json
import os
import platform
import random
import re
import stat
import sys
import tarfile
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

KINDS = ("big", "typical", "small", "multi")

MiB = 1024 * 1024
# Pieces of random data and file copies: large enough that hashlib, zlib and os.write (which all
# release the GIL on large buffers) dominate Python's per-call overhead.
PIECE = 4 * MiB

EPOCH = 1_704_067_200  # 2024-01-01T00:00:00Z: every tar mtime, so reruns give the same bytes
CREATED = "2024-01-01T00:00:00Z"

MT_INDEX = "application/vnd.oci.image.index.v1+json"
MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
MT_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
REF_NAME = "org.opencontainers.image.ref.name"

# image-spec annotations.md: the grammar of org.opencontainers.image.ref.name.
_REF_RE = re.compile(
    r"[A-Za-z0-9]+(?:(?:[-._:@+]|--)[A-Za-z0-9]+)*(?:/[A-Za-z0-9]+(?:(?:[-._:@+]|--)[A-Za-z0-9]+)*)*"
)

# typical: (share of the compressed total, layer description, roots walked in order). Each layer
# has its own roots so the five layers can be built in parallel and still be deterministic.
# /etc is deliberately absent: it may hold secrets, and benchmark images get pushed to registries.
TYPICAL_LAYERS: tuple[tuple[float, str, tuple[str, ...]], ...] = (
    (
        0.40,
        "system libraries",
        ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib"),
    ),
    (0.25, "shared data", ("/usr/share",)),
    (0.20, "python", ("/usr/lib/python3*", "/usr/local/lib/python3*")),
    (0.10, "binaries", ("/usr/bin", "/usr/sbin", "/usr/libexec")),
    (0.05, "headers", ("/usr/include", "/usr/local/include")),
)


# -- blobs ------------------------------------------------------------------------------------


class BlobWriter:
    """A file-like sink that hashes and counts what it writes; ``commit`` names it by digest."""

    def __init__(self, blob_dir: Path) -> None:
        self._dir = blob_dir
        self._tmp = blob_dir / f".tmp-{os.getpid()}-{os.urandom(6).hex()}"
        self._fd = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        self._hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self._hash.update(data)
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]
        self.size += len(data)
        return len(data)

    def commit(self) -> str:
        """Close and move the blob to ``blobs/sha256/<hex>``; return its digest."""
        os.close(self._fd)
        hexdigest = self._hash.hexdigest()
        final = self._dir / hexdigest
        if final.exists():  # same content already there: keep the existing file untouched
            self._tmp.unlink()
        else:
            self._tmp.replace(final)
        return "sha256:" + hexdigest

    def abort(self) -> None:
        os.close(self._fd)
        self._tmp.unlink(missing_ok=True)


class TarSink:
    """What ``tarfile`` writes into: hashes the uncompressed tar (the diff_id) and forwards it,
    gzip-compressed by zlib (``level`` >= 0) or as is (``level`` None), to a blob."""

    def __init__(self, blob: BlobWriter, level: int | None) -> None:
        self.blob = blob
        self.diff = hashlib.sha256()
        self.offset = 0
        # wbits 31 = gzip container; zlib writes mtime 0 and no file name, so bytes reproduce.
        self._z = None if level is None else zlib.compressobj(level, zlib.DEFLATED, 31)

    def write(self, data: bytes) -> int:
        self.diff.update(data)
        self.offset += len(data)
        self.blob.write(data if self._z is None else self._z.compress(data))
        return len(data)

    def tell(self) -> int:  # tarfile asks for its starting offset
        return self.offset

    # The rest of tarfile's file protocol; a tar being written never reads or seeks.
    def read(self, size: int, /) -> bytes:
        raise io.UnsupportedOperation("write-only")

    def seek(self, pos: int, /) -> int:
        raise io.UnsupportedOperation("write-only")

    def close(self) -> None:
        pass

    def finish(self) -> str:
        if self._z is not None:
            self.blob.write(self._z.flush())
        return "sha256:" + self.diff.hexdigest()


class RandomFile(io.RawIOBase):
    """``size`` pseudo-random bytes from ``rng``, readable once (the content of a tar member)."""

    def __init__(self, rng: random.Random, size: int) -> None:
        self._rng = rng
        self._left = size

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        n = self._left if n < 0 else min(n, self._left)
        self._left -= n
        return self._rng.randbytes(n)


def tar_info(name: str, kind: bytes, mode: int, size: int = 0, link: str = "") -> tarfile.TarInfo:
    """A member owned by root with the fixed mtime, so layers do not depend on who made them."""
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.size, info.linkname = kind, mode, size, link
    info.mtime, info.uid, info.gid, info.uname, info.gname = EPOCH, 0, 0, "root", "root"
    return info


Layer = tuple[dict[str, Any], str]
"""A layer's descriptor and its diff_id."""


def write_layer(
    blob_dir: Path, fill: Callable[[tarfile.TarFile, TarSink], None], level: int | None
) -> Layer:
    """Stream one tar layer, built by ``fill``, into a blob (gzip unless ``level`` is None)."""
    blob = BlobWriter(blob_dir)
    try:
        sink = TarSink(blob, level)
        # TarFile, not tarfile.open: only the constructor takes copybufsize (big file copies).
        with tarfile.TarFile(
            fileobj=sink, mode="w", format=tarfile.PAX_FORMAT, copybufsize=PIECE
        ) as tar:
            fill(tar, sink)
        diff_id = sink.finish()
        digest = blob.commit()
    except BaseException:
        blob.abort()
        raise
    media_type = MT_LAYER_TAR if level is None else MT_LAYER_GZIP
    return {"mediaType": media_type, "digest": digest, "size": blob.size}, diff_id


def random_files(
    files: list[tuple[str, int]], seed: str
) -> Callable[[tarfile.TarFile, TarSink], None]:
    """A ``fill`` adding each (path, size) as a file of random bytes, with parent directories."""

    def fill(tar: tarfile.TarFile, _sink: TarSink) -> None:
        rng = random.Random(hashlib.sha256(seed.encode()).digest())
        dirs: set[str] = set()
        for path, size in files:
            parts = path.split("/")[:-1]
            for i in range(1, len(parts) + 1):
                d = "/".join(parts[:i])
                if d not in dirs:
                    dirs.add(d)
                    tar.addfile(tar_info(d, tarfile.DIRTYPE, 0o755))
            tar.addfile(tar_info(path, tarfile.REGTYPE, 0o644, size), RandomFile(rng, size))

    return fill


def write_json(blob_dir: Path, media_type: str, obj: Any, **extra: Any) -> dict[str, Any]:
    """Store ``obj`` as a JSON blob; return its descriptor (``extra``: platform, annotations)."""
    blob = BlobWriter(blob_dir)
    blob.write(json.dumps(obj, indent=2).encode() + b"\n")
    return {"mediaType": media_type, "digest": blob.commit(), "size": blob.size, **extra}


def write_image(
    blob_dir: Path, layers: list[Layer], arch: str, title: str, in_index: bool = False
) -> dict[str, Any]:
    """Write the config and manifest of an image made of ``layers``; return the manifest's
    descriptor (with a ``platform`` when it will sit in an index)."""
    config = {
        "created": CREATED,
        "architecture": arch,
        "os": "linux",
        "config": {"Env": ["PATH=/usr/local/bin:/usr/bin:/bin"], "Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id for _, diff_id in layers]},
        "history": [
            {"created": CREATED, "created_by": f"generate.py {title} layer {n}"}
            for n in range(len(layers))
        ],
    }
    manifest = {
        "schemaVersion": 2,
        "mediaType": MT_MANIFEST,
        "config": write_json(blob_dir, MT_CONFIG, config),
        "layers": [desc for desc, _ in layers],
        "annotations": {"org.opencontainers.image.title": title},
    }
    extra = {"platform": {"architecture": arch, "os": "linux"}} if in_index else {}
    return write_json(blob_dir, MT_MANIFEST, manifest, **extra)


# -- kinds ------------------------------------------------------------------------------------


def build_big(blob_dir: Path, *, big_mib: int, seed: int, **_: Any) -> dict[str, Any]:
    if big_mib < 1:
        raise ValueError("--big-mib must be at least 1")
    fill = random_files([("data/random.bin", big_mib * MiB)], f"big/{seed}")
    layer = write_layer(blob_dir, fill, level=None)
    return write_image(blob_dir, [layer], "amd64", f"big {big_mib} MiB")


def build_small(blob_dir: Path, *, seed: int, **_: Any) -> dict[str, Any]:
    # 8000 random bytes plus a tar header gzip to a blob of about 8 KiB (random data does not
    # compress; the tar's zero padding nearly vanishes).
    layers = [
        write_layer(
            blob_dir, random_files([(f"data/{n:02d}/part.bin", 8000)], f"small/{seed}/{n}"), level=6
        )
        for n in range(64)
    ]
    return write_image(blob_dir, layers, "amd64", "small 64 layers")


def build_multi(blob_dir: Path, *, seed: int, **_: Any) -> dict[str, Any]:
    # level 1: the content is random, so a higher level would only burn time.
    base = write_layer(
        blob_dir, random_files([("usr/lib/base.bin", 2 * MiB)], f"multi/{seed}"), level=1
    )
    manifests = []
    for arch in ("amd64", "arm64"):
        files = [(f"opt/app/app-{arch}.bin", MiB), (f"srv/data-{arch}.bin", MiB // 2)]
        layers = [base] + [
            write_layer(blob_dir, random_files([file], f"multi/{seed}/{arch}/{file[0]}"), level=1)
            for file in files
        ]
        manifests.append(write_image(blob_dir, layers, arch, f"multi {arch}", in_index=True))
    index = {
        "schemaVersion": 2,
        "mediaType": MT_INDEX,
        "manifests": manifests,
        "annotations": {"org.opencontainers.image.title": "multi-platform benchmark image"},
    }
    return write_json(blob_dir, MT_INDEX, index)


def walk_files(roots: tuple[str, ...]) -> Iterator[tuple[str, os.stat_result]]:
    """Directories, regular files and symlinks under ``roots`` (globs allowed), in sorted order,
    never following symlinks and never entering a directory twice."""
    seen: set[str] = set()
    for pattern in roots:
        for root in sorted(glob.glob(pattern)):
            for top, dirs, files in os.walk(root):
                if top in seen:
                    dirs.clear()
                    continue
                seen.add(top)
                dirs.sort()
                dirs[:] = [d for d in dirs if os.path.join(top, d) not in seen]
                for name in sorted(dirs + files):
                    path = os.path.join(top, name)
                    try:
                        st = os.lstat(path)
                    except OSError:
                        continue
                    yield path, st


def real_files(target: int, roots: tuple[str, ...]) -> Callable[[tarfile.TarFile, TarSink], None]:
    """A ``fill`` adding files found under ``roots`` until about ``target`` compressed bytes are
    written. Parents come before children; unreadable and special files are skipped."""

    def fill(tar: tarfile.TarFile, sink: TarSink) -> None:
        added: set[str] = set()

        def add_dir(path: str) -> None:
            parent = os.path.dirname(path)
            if parent not in ("/", "") and parent not in added:
                add_dir(parent)
            try:
                mode = os.lstat(path).st_mode
            except OSError:
                mode = 0o755
            tar.addfile(tar_info(path.lstrip("/"), tarfile.DIRTYPE, stat.S_IMODE(mode) & 0o1777))
            added.add(path)

        for path, st in walk_files(roots):
            if sink.blob.size >= target:
                return
            # No setuid/setgid bits in a benchmark image; sticky and permissions are kept.
            mode = stat.S_IMODE(st.st_mode) & 0o1777
            if stat.S_ISDIR(st.st_mode):
                continue  # directories are added when something inside them is
            if stat.S_ISLNK(st.st_mode):
                info = tar_info(path.lstrip("/"), tarfile.SYMTYPE, 0o777, link=os.readlink(path))
                data = None
            elif stat.S_ISREG(st.st_mode) and st.st_size <= 2 * target:
                info = tar_info(path.lstrip("/"), tarfile.REGTYPE, mode, st.st_size)
                try:
                    data = open(path, "rb")  # noqa: SIM115 -- closed below, after tar reads it
                except OSError:
                    continue
            else:
                continue  # devices, fifos, sockets, and files that alone would blow the budget
            if os.path.dirname(path) not in added:
                add_dir(os.path.dirname(path))
            try:
                tar.addfile(info, data)
            finally:
                if data is not None:
                    data.close()

    return fill


def build_typical(blob_dir: Path, *, typical_mb: float, level: int, **_: Any) -> dict[str, Any]:
    if typical_mb <= 0:
        raise ValueError("--typical-mb must be positive")
    total = int(typical_mb * 1_000_000)

    def one(spec: tuple[float, str, tuple[str, ...]]) -> Layer:
        share, _title, roots = spec
        return write_layer(blob_dir, real_files(int(total * share), roots), level=level)

    # zlib and hashlib release the GIL, so layers compress in parallel on separate cores.
    with ThreadPoolExecutor(max_workers=min(len(TYPICAL_LAYERS), os.cpu_count() or 1)) as pool:
        layers = list(pool.map(one, TYPICAL_LAYERS))
    # The files are this machine's binaries, so the config names this machine's architecture.
    machine = platform.machine().lower()
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)
    return write_image(blob_dir, layers, arch, f"typical {typical_mb:g} MB")


BUILDERS: dict[str, Callable[..., dict[str, Any]]] = {
    "big": build_big,
    "typical": build_typical,
    "small": build_small,
    "multi": build_multi,
}


# -- layout -----------------------------------------------------------------------------------


def reachable(blob_dir: Path, desc: dict[str, Any]) -> dict[str, int]:
    """Digest -> size of every blob the descriptor's graph references (itself included)."""
    found = {desc["digest"]: int(desc["size"])}
    if desc["mediaType"] in (MT_INDEX, MT_MANIFEST):
        doc = json.loads((blob_dir / desc["digest"].removeprefix("sha256:")).read_bytes())
        children = doc.get("manifests", []) + doc.get("layers", [])
        if "config" in doc:
            children.append(doc["config"])
        for child in children:
            found.update(reachable(blob_dir, child))
    return found


def tag_root(out: Path, root: dict[str, Any], tag: str) -> None:
    """Point ``tag`` at ``root`` in ``index.json`` (other tags stay), written atomically last."""
    (out / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}) + "\n")
    index_path = out / "index.json"
    index: dict[str, Any] = {"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": []}
    if index_path.exists():
        index = json.loads(index_path.read_bytes())
    index["manifests"] = [
        m for m in index.get("manifests", []) if m.get("annotations", {}).get(REF_NAME) != tag
    ] + [{**root, "annotations": {REF_NAME: tag}}]
    tmp = out / f".index.json.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(index, indent=2) + "\n")
    tmp.replace(index_path)


def generate(
    kind: str,
    out: Path,
    *,
    tag: str = "bench",
    big_mib: int = 512,
    typical_mb: float = 100.0,
    seed: int = 0,
    level: int = 6,
) -> dict[str, Any]:
    """Write a ``kind`` image into the layout ``out`` under ``tag``; return a summary:
    kind, path, tag, root (digest), media_type, blobs (count) and bytes (their total size)."""
    if kind not in BUILDERS:
        raise ValueError(f"unknown kind {kind!r}; expected one of {', '.join(KINDS)}")
    if not _REF_RE.fullmatch(tag):
        raise ValueError(f"invalid tag {tag!r}")
    if not 0 <= level <= 9:
        raise ValueError("--level must be 0..9")
    out = Path(out)
    blob_dir = out / "blobs" / "sha256"
    blob_dir.mkdir(parents=True, exist_ok=True)
    root = BUILDERS[kind](blob_dir, big_mib=big_mib, typical_mb=typical_mb, seed=seed, level=level)
    tag_root(out, root, tag)
    blobs = reachable(blob_dir, root)
    return {
        "kind": kind,
        "path": str(out),
        "tag": tag,
        "root": root["digest"],
        "media_type": root["mediaType"],
        "blobs": len(blobs),
        "bytes": sum(blobs.values()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=KINDS)
    parser.add_argument("out", type=Path, metavar="OUT_DIR")
    parser.add_argument("--tag", default="bench", help="tag in index.json (default: bench)")
    parser.add_argument("--big-mib", type=int, default=512, help="big: layer size in MiB")
    parser.add_argument(
        "--typical-mb",
        type=float,
        default=100.0,
        help="typical: total compressed size in MB (approximate)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random content")
    parser.add_argument("--level", type=int, default=6, help="typical: gzip level")
    args = parser.parse_args(argv)
    try:
        summary = generate(
            args.kind,
            args.out,
            tag=args.tag,
            big_mib=args.big_mib,
            typical_mb=args.typical_mb,
            seed=args.seed,
            level=args.level,
        )
    except ValueError as exc:
        parser.error(str(exc))
    print(
        f"{summary['kind']}: {summary['blobs']} blobs, {summary['bytes']} bytes, "
        f"{summary['path']}:{summary['tag']} {summary['root']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
