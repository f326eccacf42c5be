"""Reading what a test's OCI layout holds: the entry a tag names, and blobs by digest."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

REF_NAME = "org.opencontainers.image.ref.name"


def layout_index(path: Path) -> dict[str, Any]:
    result: dict[str, Any] = json.loads((path / "index.json").read_text())
    return result


def tagged(path: Path, tag: str) -> dict[str, Any]:
    """The ``index.json`` entry of ``tag`` (there must be exactly one)."""
    entries = [m for m in layout_index(path)["manifests"]
               if (m.get("annotations") or {}).get(REF_NAME) == tag]
    assert len(entries) == 1, entries
    entry: dict[str, Any] = entries[0]
    return entry


def blob(path: Path, digest: str) -> bytes:
    algorithm, encoded = digest.split(":")
    return (path / "blobs" / algorithm / encoded).read_bytes()


def tagged_manifest(path: Path, tag: str) -> bytes:
    """The exact bytes of the manifest ``tag`` names."""
    return blob(path, tagged(path, tag)["digest"])
