"""The command line shared by the peer drivers.

``DRIVER pull HOST:PORT/REPO:TAG OUT_DIR`` downloads an image's manifests and blobs into
``OUT_DIR/blobs/sha256/``; ``DRIVER push LAYOUT_DIR:TAG HOST:PORT/REPO:TAG`` uploads an OCI
layout's image; ``DRIVER copy HOST:PORT/REPO:TAG HOST:PORT/REPO:TAG [--scratch DIR]`` moves an
image between registries (through ``--scratch`` when the library cannot stream). Registries are
plain-HTTP loopback ones, as in the harness.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Remote:
    """``host:port/repo:tag`` split into its parts."""

    host: str
    repo: str
    tag: str

    @classmethod
    def parse(cls, text: str) -> Remote:
        host, _, rest = text.partition("/")
        repo, _, tag = rest.rpartition(":")
        if not host or not repo or not tag or "/" in tag:
            raise argparse.ArgumentTypeError(f"expected HOST:PORT/REPO:TAG, got {text!r}")
        return cls(host, repo, tag)


@dataclass(frozen=True)
class Local:
    """``layout_dir:tag``."""

    path: Path
    tag: str

    @classmethod
    def parse(cls, text: str) -> Local:
        path, _, tag = text.rpartition(":")
        if not path or not tag:
            raise argparse.ArgumentTypeError(f"expected LAYOUT_DIR:TAG, got {text!r}")
        return cls(Path(path), tag)


def parse(argv: Sequence[str] | None, prog: str) -> argparse.Namespace:
    """Parse a driver's arguments: ``job`` plus ``src``/``dst`` (or ``out``) and ``scratch``."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    jobs = parser.add_subparsers(dest="job", required=True)
    pull = jobs.add_parser("pull")
    pull.add_argument("src", type=Remote.parse)
    pull.add_argument("out", type=Path)
    push = jobs.add_parser("push")
    push.add_argument("src", type=Local.parse)
    push.add_argument("dst", type=Remote.parse)
    copy = jobs.add_parser("copy")
    copy.add_argument("src", type=Remote.parse)
    copy.add_argument("dst", type=Remote.parse)
    copy.add_argument("--scratch", type=Path, help="a directory for blobs in transit")
    return parser.parse_args(argv)
