"""Resumed and parallel ranged blob downloads, against the real registry behind the fault proxy.

The proxy's journal shows what the client sent: one extra GET after a break, whose ``Range``
starts where the bytes already handed out end (P1, P2); a stripped ``Range`` answered with the
whole blob (P3); parallel ranges in flight at once, and a broken range resumed on its own. A
small in-process fake stands in for object storage behind a redirect, which the registry (run
with redirects off, on local storage) cannot show.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import pytest
from aiohttp import web

import ociflow
from ociflow import mediatypes
from ociflow.descriptor import Descriptor
from ociflow.digest import Digest
from ociflow.errors import DigestMismatchError, TransportError
from ociflow.http.options import HttpOptions
from ociflow.http.retry import RetryPolicy
from ociflow.http.transport import Session
from ociflow.streams import verified
from ociflow.target import CHUNK_SIZE, open_destination, open_source
from ociflow.targets.blob_download import parse_content_range
from ociflow.targets.registry import RegistryTarget
from tests.fault_proxy import Entry, Fault, FaultProxy
from tests.registry_server import RegistryServer
from tests.test_http import serve

pytestmark = pytest.mark.integration

MiB = 1024 * 1024
REPO = "t/download-resume"
# Fast backoff: the tests show the protocol, not the waiting.
QUICK = RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.05)
SINGLE = HttpOptions(plain_http=True, retry=QUICK, range_parallel=1)


@dataclass(frozen=True)
class Blob:
    desc: Descriptor
    data: bytes

    @property
    def path(self) -> str:
        return rf"/blobs/{self.desc.digest}$"


def describe(data: bytes, media_type: str = mediatypes.OCI_LAYER_GZIP) -> Descriptor:
    return Descriptor(media_type, Digest.of(data), len(data))


async def _chunks(data: bytes) -> AsyncGenerator[bytes, None]:
    for start in range(0, len(data), CHUNK_SIZE):
        yield data[start : start + CHUNK_SIZE]


def opened(data: bytes, desc: Descriptor) -> AsyncGenerator[bytes, None]:
    return verified(_chunks(data), desc)


async def push(registry: RegistryServer, *blobs: tuple[Descriptor, bytes]) -> None:
    async with Session(HttpOptions(plain_http=True)) as session:
        dst = open_destination(f"{registry.address}/{REPO}:x", session)
        for desc, data in blobs:
            await dst.push_blob(desc, partial(opened, data, desc))


def pushed(registry: RegistryServer, size: int) -> Blob:
    data = os.urandom(size)
    desc = describe(data)
    asyncio.run(push(registry, (desc, data)))  # module-scoped fixtures have no running loop
    return Blob(desc, data)


@pytest.fixture(scope="module")
def big(registry: RegistryServer) -> Blob:
    """A blob of a few tens of MiB, its size not a multiple of the chunk size."""
    return pushed(registry, 24 * MiB + 4321)


@pytest.fixture(scope="module")
def small(registry: RegistryServer) -> Blob:
    """A blob of a few MiB, for parallel ranges of 1 MiB."""
    return pushed(registry, 6 * MiB + 123)


@pytest.fixture()
async def proxy(registry: RegistryServer) -> AsyncIterator[FaultProxy]:
    async with FaultProxy(registry.url) as running:
        yield running


def source(session: Session, address: str, options: HttpOptions = SINGLE) -> RegistryTarget:
    src = open_source(f"{address}/{REPO}:x", session, options)
    assert isinstance(src, RegistryTarget)
    return src


async def read_all(
    src: RegistryTarget, blob: Blob, on_chunk: Callable[[int], None] | None = None
) -> bytes:
    """The blob through ``src``, checked by the engine's verifier; ``on_chunk(received)`` is
    called before each chunk is counted."""
    parts: list[bytes] = []
    received = 0
    async for chunk in verified(src.fetch_blob(blob.desc), blob.desc):
        assert len(chunk) <= CHUNK_SIZE
        if on_chunk:
            on_chunk(received)
        received += len(chunk)
        parts.append(chunk)
    return b"".join(parts)


def range_start(entry: Entry) -> int:
    assert entry.range is not None
    match = re.fullmatch(r"bytes=(\d+)-(\d*)", entry.range)
    assert match, entry.range
    return int(match[1])


def resume_tracker(proxy: FaultProxy, blob: Blob) -> tuple[Callable[[int], None], list[int]]:
    """Records how many bytes had been handed out when the second GET appeared."""
    seen: list[int] = []

    def on_chunk(received: int) -> None:
        if not seen and proxy.count("GET", blob.path) > 1:
            seen.append(received)

    return on_chunk, seen


# -- single stream: P1, P2, P3, P4, P7, P14, P19 --------------------------------------------


@pytest.mark.parametrize("fault", ["reset", "cut"])
async def test_broken_body_resumes_where_the_bytes_received_end(
    big: Blob, proxy: FaultProxy, fault: str
) -> None:
    # P1: TCP RST after 40 %; P2: a clean close after K bytes of a full Content-Length.
    at = int(big.desc.size * 0.4)
    kind = Fault(reset_after=at) if fault == "reset" else Fault(cut_after=at)
    proxy.add("GET", big.path, kind, attempts={1})
    on_chunk, seen = resume_tracker(proxy, big)
    async with Session(SINGLE) as session:
        data = await read_all(source(session, proxy.address), big, on_chunk)
    assert data == big.data
    first, second = proxy.entries("GET", big.path)  # exactly one extra GET
    assert first.range is None
    assert second.range == f"bytes={seen[0]}-"  # starts where the bytes handed out end
    assert 0 < seen[0] <= first.sent
    assert second.status == 206
    assert second.sent == big.desc.size - seen[0]


async def test_range_ignored_on_resume_drops_what_was_received(
    big: Blob, proxy: FaultProxy
) -> None:
    # P3: the resume's Range is stripped; the registry answers 200 with the whole blob.
    proxy.add("GET", big.path, Fault(cut_after=10 * MiB), attempts={1})
    proxy.add("GET", big.path, Fault(strip_range=True), attempts={1})  # the next GET
    async with Session(SINGLE) as session:
        data = await read_all(source(session, proxy.address), big)
    assert data == big.data
    _, second = proxy.entries("GET", big.path)
    assert range_start(second) > 0
    assert second.status == 200


async def test_shifted_content_range_is_never_stitched(
    registry: RegistryServer, big: Blob, proxy: FaultProxy, tmp_path: Path
) -> None:
    # P4: the resume is answered with a Content-Range 10 bytes further on.
    manifest = await push_image(registry, "p4", big)
    proxy.add("GET", big.path, Fault(reset_after=5 * MiB), attempts={1})
    proxy.add("GET", big.path, Fault(shift_content_range=10))
    out = tmp_path / "out"
    with pytest.raises(TransportError, match="not stitching"):
        await ociflow.copy(f"docker://{proxy.address}/{REPO}:p4", f"oci:{out}:p4",
                           options=SINGLE)
    assert not (out / "blobs" / "sha256" / big.desc.digest.encoded).exists()
    assert not (out / "blobs" / "sha256" / manifest.digest.encoded).exists()
    assert proxy.count("GET", big.path) == 2  # no loop of resumes


async def test_trailing_bytes_are_refused(
    registry: RegistryServer, big: Blob, proxy: FaultProxy, tmp_path: Path
) -> None:
    # P7: 1 KiB appended, Content-Length grown to match: refused before a byte is stored.
    await push_image(registry, "p7", big)
    proxy.add("GET", big.path, Fault(append=b"x" * 1024))
    out = tmp_path / "out"
    with pytest.raises(DigestMismatchError, match="announces"):
        await ociflow.copy(f"docker://{proxy.address}/{REPO}:p7", f"oci:{out}:p7",
                           options=SINGLE)
    assert not (out / "blobs" / "sha256" / big.desc.digest.encoded).exists()
    assert proxy.count("GET", big.path) == 2  # the engine's one re-fetch, no more


async def test_stalled_body_resumes_after_the_stall_timeout(
    big: Blob, proxy: FaultProxy
) -> None:
    # P14: headers, some bytes, then nothing: the stall timeout ends the wait, Range resumes.
    stall_after = 3 * CHUNK_SIZE  # whole chunks arrive, so some were handed out before the stall
    assert stall_after < big.desc.size
    proxy.add("GET", big.path, Fault(stall_after=stall_after, stall=30), attempts={1})
    options = replace(SINGLE, stall_timeout=0.5)
    async with Session(options) as session:
        data = await read_all(source(session, proxy.address, options), big)
    assert data == big.data
    _, second = proxy.entries("GET", big.path)
    assert 0 < range_start(second) <= stall_after


async def test_a_server_that_delivers_nothing_is_given_up_on(
    small: Blob, proxy: FaultProxy
) -> None:
    # Every attempt breaks before a whole chunk arrived: QUICK.attempts GETs, then the error.
    proxy.add("GET", small.path, Fault(cut_after=100 * 1024))
    async with Session(SINGLE) as session:
        with pytest.raises(TransportError, match=f"fetching blob {small.desc.digest}"):
            await read_all(source(session, proxy.address), small)
    assert proxy.count("GET", small.path) == QUICK.attempts


async def test_wrong_docker_content_digest_fails(
    registry: RegistryServer, small: Blob, proxy: FaultProxy
) -> None:
    # P19, for a blob and for a manifest fetched by digest.
    manifest = await push_image(registry, "p19", small)
    wrong = str(Digest.of(b"something else"))
    proxy.add("GET", r"/(blobs|manifests)/sha256:", Fault(headers={"Docker-Content-Digest": wrong}))
    async with Session(SINGLE) as session:
        src = source(session, proxy.address)
        with pytest.raises(DigestMismatchError, match="says it is sending"):
            await read_all(src, small)
        with pytest.raises(DigestMismatchError, match="says it is sending"):
            await src.fetch_manifest(manifest)
        by_digest = open_source(f"{proxy.address}/{REPO}@{manifest.digest}", session, SINGLE)
        with pytest.raises(DigestMismatchError, match="says it is sending"):
            await by_digest.resolve()


async def test_fetch_from_an_offset(small: Blob, proxy: FaultProxy) -> None:
    # What a crash resume of a partial download asks for: the rest, from byte N.
    async with Session(SINGLE) as session:
        src = source(session, proxy.address)
        rest = b"".join([c async for c in src.fetch_blob(small.desc, offset=MiB + 7)])
        nothing = [c async for c in src.fetch_blob(small.desc, offset=small.desc.size)]
    assert rest == small.data[MiB + 7 :]
    assert nothing == []
    (entry,) = proxy.entries("GET", small.path)
    assert entry.range == f"bytes={MiB + 7}-"


# -- parallel ranges ----------------------------------------------------------------------

PARALLEL = HttpOptions(
    plain_http=True, retry=QUICK, range_parallel=3, range_threshold=MiB, range_size=MiB
)


def covered(entries: list[Entry], size: int) -> list[tuple[int, int]]:
    spans = []
    for entry in entries:
        assert entry.range is not None
        first, _, last = entry.range.removeprefix("bytes=").partition("-")
        spans.append((int(first), int(last) if last else size - 1))
    return sorted(spans)


async def test_parallel_ranges_are_fetched_at_once_and_reassembled_in_order(
    small: Blob, proxy: FaultProxy
) -> None:
    # Throttled connections (as object stores do) keep every range in flight long enough for
    # the journal to show the concurrency.
    proxy.add("GET", small.path, Fault(throttle=8 * MiB))
    async with Session(PARALLEL) as session:
        data = await read_all(source(session, proxy.address, PARALLEL), small)
    assert data == small.data
    entries = proxy.entries("GET", small.path)
    assert len(entries) == 7  # ceil(6 MiB + 123 / 1 MiB)
    assert all(e.status == 206 for e in entries)
    spans = covered(entries, small.desc.size)
    assert spans[0][0] == 0 and spans[-1][1] == small.desc.size - 1
    assert all(a[1] + 1 == b[0] for a, b in itertools.pairwise(spans))
    assert proxy.max_concurrency("GET", small.path) == 3


async def test_parallel_falls_back_to_one_stream_when_range_is_ignored(
    small: Blob, proxy: FaultProxy
) -> None:
    proxy.add("GET", small.path, Fault(strip_range=True))
    async with Session(PARALLEL) as session:
        data = await read_all(source(session, proxy.address, PARALLEL), small)
    assert data == small.data
    (entry,) = proxy.entries("GET", small.path)  # the first answer became the stream
    assert entry.range == f"bytes=0-{MiB - 1}"
    assert entry.status == 200


async def test_a_broken_range_is_resumed_on_its_own(big: Blob, proxy: FaultProxy) -> None:
    # Ranges of two chunks; the third request stalls after 1.5 chunks: its first chunk was
    # handed out, so its resume asks for the rest of that range only.
    options = replace(PARALLEL, range_size=2 * CHUNK_SIZE, stall_timeout=0.3)
    ranges = -(-big.desc.size // options.range_size)
    assert ranges >= 4  # a third range, and the blob does not end with it
    stall_after = CHUNK_SIZE + CHUNK_SIZE // 2
    proxy.add("GET", big.path, Fault(stall_after=stall_after, stall=10), attempts={3})
    async with Session(options) as session:
        data = await read_all(source(session, proxy.address, options), big)
    assert data == big.data
    entries = proxy.entries("GET", big.path)
    assert len(entries) == ranges + 1  # every range once, the broken one twice
    (broken,) = [e for e in entries if e.fault]
    first, _, last = (broken.range or "").removeprefix("bytes=").partition("-")
    (resumed,) = [e for e in entries if e.started > broken.started and
                  (e.range or "").endswith(f"-{last}")]
    assert resumed.range == f"bytes={int(first) + CHUNK_SIZE}-{last}"
    assert resumed.status == 206


async def test_small_blobs_are_fetched_in_one_request(small: Blob, proxy: FaultProxy) -> None:
    options = replace(PARALLEL, range_threshold=small.desc.size)
    async with Session(options) as session:
        data = await read_all(source(session, proxy.address, options), small)
    assert data == small.data
    (entry,) = proxy.entries("GET", small.path)
    assert entry.range is None


async def test_loopback_registry_gets_one_stream_by_default(
    small: Blob, proxy: FaultProxy
) -> None:
    # range_parallel None: a loopback registry is CPU-bound, not connection-bound.
    options = replace(PARALLEL, range_parallel=None)
    async with Session(options) as session:
        data = await read_all(source(session, proxy.address, options), small)
    assert data == small.data
    (entry,) = proxy.entries("GET", small.path)
    assert entry.range is None


# -- a redirect to storage whose URL expires ------------------------------------------------


async def test_resume_goes_back_through_the_registry_after_a_redirect() -> None:
    """Pre-signed URLs are single-use here: a resume must ask the registry for a fresh one."""
    data = os.urandom(3 * MiB + 99)
    desc = describe(data)
    log: list[tuple[str, str | None]] = []
    issued: set[str] = set()

    async def blob(request: web.Request) -> web.StreamResponse:
        log.append(("registry", request.headers.get("Range")))
        signature = f"s{len(log)}"
        issued.add(signature)
        raise web.HTTPTemporaryRedirect(f"/storage/blob?sig={signature}")

    async def storage(request: web.Request) -> web.StreamResponse:
        log.append(("storage", request.headers.get("Range")))
        signature = request.query.get("sig", "")
        if signature not in issued or request.headers.get("Authorization"):
            return web.Response(status=403)
        issued.discard(signature)  # used up: an expired URL
        start = int((request.headers.get("Range") or "bytes=0-")[6:].partition("-")[0])
        response = web.StreamResponse(status=206 if start else 200)
        response.content_length = len(data) - start
        if start:
            response.headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        await response.prepare(request)
        if len(log) == 2:  # the first answer breaks off
            await response.write(data[: 2 * MiB + 5])
            await asyncio.sleep(0.2)
            assert request.transport is not None
            request.transport.close()
            raise asyncio.CancelledError
        await response.write(data[start:])
        return response

    app = web.Application()
    app.router.add_get(f"/v2/app/blobs/{desc.digest}", blob)
    app.router.add_get("/storage/blob", storage)
    async with serve(app) as port, Session(SINGLE) as session:
        src = open_source(f"127.0.0.1:{port}/app:1", session, SINGLE)
        got = b"".join([c async for c in verified(src.fetch_blob(desc), desc)])
    assert got == data
    assert [where for where, _ in log] == ["registry", "storage", "registry", "storage"]
    assert log[2][1] == log[3][1]  # the resume's Range went through both hops


# -- parsing ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("bytes 0-9/10", (0, 9, 10)),
        ("bytes 5-9/*", (5, 9, None)),
        (" bytes 0-0/1 ", (0, 0, 1)),
        ("bytes 9-5/10", None),
        ("bytes 0-10/10", None),
        ("bytes=0-9/10", None),
        ("bytes 0-9", None),
        ("0-9/10", None),
        ("bytes -1-9/10", None),
        ("bytes 0-9/10, bytes 0-9/10", None),
        (None, None),
    ],
)
def test_parse_content_range(value: str | None, expected: tuple[int, int, int | None]) -> None:
    parsed = parse_content_range(value)
    assert (None if parsed is None else (parsed.first, parsed.last, parsed.total)) == expected


# -- helpers ------------------------------------------------------------------------------


async def push_image(registry: RegistryServer, tag: str, layer: Blob) -> Descriptor:
    """Tag an image whose one layer is ``layer`` (already pushed); returns the manifest's
    descriptor."""
    config = json.dumps({"architecture": "amd64", "os": "linux", "tag": tag}).encode()
    config_desc = describe(config, mediatypes.OCI_CONFIG)
    await push(registry, (config_desc, config))
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": mediatypes.OCI_MANIFEST,
            "config": config_desc.to_json(),
            "layers": [layer.desc.to_json()],
        }
    ).encode()
    desc = describe(manifest, mediatypes.OCI_MANIFEST)
    async with Session(HttpOptions(plain_http=True)) as session:
        dst = open_destination(f"{registry.address}/{REPO}:{tag}", session)
        await dst.push_root(desc, manifest, tag)
    return desc

