"""The descriptor graph of an image, read from raw manifest bytes or from an OCI image layout.

Standard library only: the peer drivers and the harness's output checks use it, and neither may
depend on ociflow (it is what they measure). Only what the benchmark images contain is handled:
OCI and Docker v2 image manifests and indexes, sha256 digests.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

INDEX_TYPES = frozenset(
    {
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    }
)
MANIFEST_TYPES = frozenset(
    {
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    }
)
REF_NAME = "org.opencontainers.image.ref.name"


@dataclass(frozen=True)
class Blob:
    """A descriptor's essentials."""

    digest: str
    size: int
    media_type: str

    @property
    def hex(self) -> str:
        algorithm, _, value = self.digest.partition(":")
        if algorithm != "sha256" or len(value) != 64 or not _is_lower_hex(value):
            raise ValueError(f"unsupported digest {self.digest!r}")
        return value

    @classmethod
    def from_json(cls, desc: dict[str, Any]) -> Blob:
        return cls(str(desc["digest"]), int(desc["size"]), str(desc["mediaType"]))


@dataclass
class Graph:
    """An image's nodes: ``manifests`` children first (the root last) with their raw bytes, and
    the distinct config and layer ``blobs``."""

    root: Blob
    manifests: list[tuple[Blob, bytes]] = field(default_factory=list)
    blobs: list[Blob] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        return sum(b.size for b, _ in self.manifests) + sum(b.size for b in self.blobs)


def _is_lower_hex(value: str) -> bool:
    return all(c in "0123456789abcdef" for c in value)


def children(raw: bytes) -> tuple[list[Blob], list[Blob]]:
    """The child manifests and the blobs (config, layers) that one manifest refers to."""
    doc = json.loads(raw)
    manifests = [Blob.from_json(d) for d in doc.get("manifests", [])]
    blobs = [Blob.from_json(doc["config"])] if "config" in doc else []
    blobs += [Blob.from_json(d) for d in doc.get("layers", [])]
    return manifests, blobs


def walk(root: Blob, fetch: Callable[[Blob], bytes]) -> Graph:
    """Read the graph below ``root``; ``fetch`` returns a manifest's raw bytes."""
    graph = Graph(root)
    seen: set[str] = set()

    def visit(desc: Blob) -> None:
        raw = fetch(desc)
        manifests, blobs = children(raw)
        for child in manifests:
            if child.digest not in seen:
                seen.add(child.digest)
                visit(child)
        for blob in blobs:
            if blob.digest not in seen:
                seen.add(blob.digest)
                graph.blobs.append(blob)
        graph.manifests.append((desc, raw))

    seen.add(root.digest)
    visit(root)
    return graph


def layout_blob_path(layout: Path, blob: Blob) -> Path:
    return layout / "blobs" / "sha256" / blob.hex


def layout_root(layout: Path, tag: str) -> Blob:
    """The descriptor tagged ``tag`` in the layout's ``index.json``."""
    index = json.loads((layout / "index.json").read_bytes())
    for desc in index.get("manifests", []):
        if desc.get("annotations", {}).get(REF_NAME) == tag:
            return Blob.from_json(desc)
    raise LookupError(f"{layout}: no tag {tag!r} in index.json")


def read_layout(layout: Path, tag: str) -> Graph:
    """The graph of the image tagged ``tag`` in an OCI image layout."""
    return walk(layout_root(layout, tag), lambda b: layout_blob_path(layout, b).read_bytes())
