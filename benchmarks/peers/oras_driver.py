"""oras-py doing the benchmark jobs: ``python -m benchmarks.peers.oras_driver JOB ...``.

Uses the registry client ``oras.provider.Registry`` as documented: ``get_manifest`` (a parsed
dict), ``download_blob`` (8 KiB ``iter_content``, not configurable), ``upload_blob`` (its default
monolithic POST + PUT, which reads the whole blob into memory) and ``upload_manifest``.

What the library cannot do is refused rather than imitated: ``upload_manifest`` validates
against an image-manifest schema and always sends the OCI manifest media type, so pushing or
copying an index is not possible (the harness reports "n/a"). Manifests come back parsed and are
re-serialized on upload, so a pushed manifest's digest differs from the source's. A copy goes
through ``--scratch`` on disk, one blob at a time, because the client has no streaming upload.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from oras.provider import Registry  # type: ignore[import-untyped,import-not-found,unused-ignore]

from benchmarks.peers.args import Local, Remote, parse
from benchmarks.peers.graph import INDEX_TYPES, Blob, Graph, layout_blob_path, read_layout, walk


class Unsupported(Exception):
    """A job oras-py's API cannot do."""


def _registry(remote: Remote) -> Any:
    return Registry(hostname=remote.host, insecure=True)


def _container(registry: Any, remote: Remote, digest: str | None = None) -> Any:
    ref = f"{remote.repo}@{digest}" if digest else f"{remote.repo}:{remote.tag}"
    return registry.get_container(ref)


def _serialize(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc).encode()


def _remote_graph(registry: Any, remote: Remote) -> tuple[Graph, dict[str, dict[str, Any]]]:
    """The graph (manifest bytes re-serialized by us) and each manifest's parsed document."""
    docs: dict[str, dict[str, Any]] = {}

    def fetch(desc: Blob) -> bytes:
        doc = docs.get(desc.digest)
        if doc is None:
            doc = registry.get_manifest(_container(registry, remote, desc.digest))
            docs[desc.digest] = doc
        return _serialize(doc)

    root_doc: dict[str, Any] = registry.get_manifest(_container(registry, remote))
    raw = _serialize(root_doc)
    # get_manifest does not expose the tag's digest; the root is named after the bytes we hold.
    root = Blob("sha256:" + hashlib.sha256(raw).hexdigest(), len(raw), root_doc["mediaType"])
    docs[root.digest] = root_doc
    return walk(root, fetch), docs


def _check(response: Any, what: str) -> None:
    if response.status_code not in (200, 201):
        raise RuntimeError(f"oras-py: {what}: HTTP {response.status_code}")


def _layer(blob: Blob) -> dict[str, Any]:
    return {"mediaType": blob.media_type, "digest": blob.digest, "size": blob.size}


def pull(src: Remote, out: Path) -> None:
    registry = _registry(src)
    graph, _docs = _remote_graph(registry, src)
    (out / "manifests").mkdir(parents=True, exist_ok=True)
    for n, (_desc, raw) in enumerate(graph.manifests):
        (out / "manifests" / f"{n}.json").write_bytes(raw)
    container = _container(registry, src)
    for blob in graph.blobs:
        registry.download_blob(container, blob.digest, str(layout_blob_path(out, blob)))


def push(src: Local, dst: Remote) -> None:
    graph = read_layout(src.path, src.tag)
    if graph.root.media_type in INDEX_TYPES:
        raise Unsupported("upload_manifest takes image manifests only, not an index")
    registry = _registry(dst)
    container = _container(registry, dst)
    for blob in graph.blobs:
        path = layout_blob_path(src.path, blob)
        _check(registry.upload_blob(str(path), container, _layer(blob)), f"blob {blob.digest}")
    _check(registry.upload_manifest(json.loads(graph.manifests[-1][1]), container), "manifest")


def copy(src: Remote, dst: Remote, scratch: Path) -> None:
    source, target = _registry(src), _registry(dst)
    graph, docs = _remote_graph(source, src)
    if graph.root.media_type in INDEX_TYPES:
        raise Unsupported("upload_manifest takes image manifests only, not an index")
    src_container, dst_container = _container(source, src), _container(target, dst)
    scratch.mkdir(parents=True, exist_ok=True)
    for blob in graph.blobs:
        path = scratch / blob.hex
        source.download_blob(src_container, blob.digest, str(path))
        try:
            response = target.upload_blob(str(path), dst_container, _layer(blob))
        finally:
            path.unlink()
        _check(response, f"blob {blob.digest}")
    _check(target.upload_manifest(docs[graph.root.digest], dst_container), "manifest")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv, "oras_driver")
    try:
        if args.job == "pull":
            pull(args.src, args.out)
        elif args.job == "push":
            push(args.src, args.dst)
        else:
            if args.scratch is None:
                print("oras_driver: copy needs --scratch", file=sys.stderr)
                return 2
            copy(args.src, args.dst, args.scratch)
    except Unsupported as exc:
        print(f"oras_driver: unsupported: {exc}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
