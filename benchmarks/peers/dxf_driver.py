"""python-dxf doing the benchmark jobs: ``python -m benchmarks.peers.dxf_driver JOB ...``.

Uses the ``DXF`` client as documented: ``get_manifest_and_response`` (raw manifest bytes, so
digests are kept), ``pull_blob`` (hashes while it streams), ``push_blob`` and ``set_manifest``.
Uploads use ``push_blob(data=chunks, digest=...)``, the library's streaming form: the digest is
already known from the layout or the source, so ``push_blob(filename)``'s extra hashing pass over
the file would only slow python-dxf down. Chunks are 1 MiB rather than the 8 KiB default, the
fairest setting the API offers. python-dxf handles indexes, so every image kind is supported.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from dxf import DXF

from benchmarks.peers.args import Local, Remote, parse
from benchmarks.peers.graph import Blob, Graph, read_layout, walk

CHUNK = 1024 * 1024


def _client(remote: Remote) -> DXF:
    return DXF(remote.host, remote.repo, insecure=True)


def _remote_graph(client: DXF, tag: str) -> Graph:
    """Fetch the root manifest by tag, then every child manifest by digest."""
    raw_by_digest: dict[str, bytes] = {}

    def fetch(desc: Blob) -> bytes:
        return raw_by_digest.pop(desc.digest, None) or _get_manifest(client, desc.digest)[0]

    raw, media_type = _get_manifest(client, tag)
    root = Blob("sha256:" + hashlib.sha256(raw).hexdigest(), len(raw), media_type)
    raw_by_digest[root.digest] = raw
    return walk(root, fetch)


def _get_manifest(client: DXF, alias: str) -> tuple[bytes, str]:
    _text, response = client.get_manifest_and_response(alias)
    content: bytes = response.content
    return content, str(response.headers.get("Content-Type", "")).split(";")[0]


def _file_chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as file:
        while chunk := file.read(CHUNK):
            yield chunk


def _pull_blob(client: DXF, digest: str) -> Iterable[bytes]:
    chunks = client.pull_blob(digest, chunk_size=CHUNK)
    assert not isinstance(chunks, tuple)  # only size=True adds the size
    return chunks


def _put_manifests(client: DXF, graph: Graph, tag: str) -> None:
    """Children by digest, the root by tag: the registry checks that referenced ones exist."""
    for desc, raw in graph.manifests:
        client.set_manifest(tag if desc == graph.root else desc.digest, raw.decode())


def pull(src: Remote, out: Path) -> None:
    client = _client(src)
    graph = _remote_graph(client, src.tag)
    blob_dir = out / "blobs" / "sha256"
    blob_dir.mkdir(parents=True, exist_ok=True)
    for desc, raw in graph.manifests:
        (blob_dir / desc.hex).write_bytes(raw)
    for blob in graph.blobs:
        with (blob_dir / blob.hex).open("wb") as file:
            for chunk in _pull_blob(client, blob.digest):
                file.write(chunk)


def push(src: Local, dst: Remote) -> None:
    graph = read_layout(src.path, src.tag)
    client = _client(dst)
    for blob in graph.blobs:
        path = src.path / "blobs" / "sha256" / blob.hex
        client.push_blob(data=_file_chunks(path), digest=blob.digest)
    _put_manifests(client, graph, dst.tag)


def copy(src: Remote, dst: Remote) -> None:
    """Streams each blob from the source GET into the destination PUT, in memory."""
    source, target = _client(src), _client(dst)
    graph = _remote_graph(source, src.tag)
    for blob in graph.blobs:
        target.push_blob(data=_pull_blob(source, blob.digest), digest=blob.digest)
    _put_manifests(target, graph, dst.tag)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv, "dxf_driver")
    if args.job == "pull":
        pull(args.src, args.out)
    elif args.job == "push":
        push(args.src, args.dst)
    else:
        copy(args.src, args.dst)
    return 0


if __name__ == "__main__":
    sys.exit(main())
