"""Monolithic, chunked and resumed blob uploads, against the real registry behind the fault proxy.

The journal shows the protocol: inclusive ``Content-Range`` PATCHes sized by
``OCI-Chunk-Min-Length``; a ``GET`` of the session after a broken or refused PATCH and the next
PATCH starting at the registry's offset (U1, U2); a new ``POST`` when the session is gone (U3);
a ``HEAD`` instead of a second upload when the closing PUT's answer was lost (U4); one PUT and
a clean failure on ``DIGEST_INVALID`` (U5); no upload at all for a blob already there (U12).

A request broken while its body is still arriving is the proxy's ``reset_request_after`` fault:
it takes in part of the body, forwards nothing and resets.

distribution 2.8 seals the session's offset into the ``_state`` of each ``Location`` and
refuses a session whose data grew past it, so a PATCH that reached it (in part, or whole with
its answer lost) makes the session unusable: those tests show the restart from ``POST``.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest

import ociflow
from ociflow import mediatypes
from ociflow.descriptor import Descriptor
from ociflow.digest import Digest
from ociflow.errors import AuthenticationError, DigestMismatchError, RegistryError
from ociflow.http.options import HttpOptions
from ociflow.http.retry import RetryPolicy
from ociflow.http.transport import Session
from ociflow.streams import verified
from ociflow.target import CHUNK_SIZE, Opener, open_destination
from ociflow.targets.blob_upload import (
    MAX_CHUNK_SIZE,
    UploadSession,
    chunk_length,
    parse_upload_range,
)
from ociflow.targets.registry import RegistryTarget
from tests.fault_proxy import Fault, FaultProxy
from tests.registry_server import RegistryServer

pytestmark = pytest.mark.integration

MiB = 1024 * 1024
QUICK = RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.05)
MONOLITHIC = HttpOptions(plain_http=True, retry=QUICK, chunk_size=MiB)
CHUNKED = replace(MONOLITHIC, chunked_threshold=MiB)
UPLOADS = r"/blobs/uploads/"
# Where start_push's source stops: after whole source chunks, several PATCHes into the upload.
GATE = 2 * CHUNK_SIZE
OCI_ERROR = {"Content-Type": "application/json"}


def oci_error(code: str) -> bytes:
    return json.dumps({"errors": [{"code": code, "message": code.lower()}]}).encode()


def describe(data: bytes, media_type: str = mediatypes.OCI_LAYER_GZIP) -> Descriptor:
    return Descriptor(media_type, Digest.of(data), len(data))


async def _chunks(
    data: bytes, delay: float = 0.0, gate: asyncio.Event | None = None, gate_at: int = -1
) -> AsyncGenerator[bytes, None]:
    for start in range(0, len(data), CHUNK_SIZE):
        if gate is not None and start == gate_at:
            await gate.wait()
        if delay:
            await asyncio.sleep(delay)
        yield data[start : start + CHUNK_SIZE]


def opener(
    data: bytes, desc: Descriptor, *, delay: float = 0.0, gate: asyncio.Event | None = None,
    gate_at: int = -1, opened: list[int] | None = None,
) -> Opener:
    def open_stream() -> AsyncGenerator[bytes, None]:
        if opened is not None:
            opened.append(1)
        return verified(_chunks(data, delay, gate, gate_at), desc)

    return open_stream


@pytest.fixture()
async def proxy(registry: RegistryServer) -> AsyncIterator[FaultProxy]:
    async with FaultProxy(registry.url) as running:
        yield running


def target(session: Session, address: str, repo: str, options: HttpOptions) -> RegistryTarget:
    dst = open_destination(f"{address}/{repo}:1", session, options)
    assert isinstance(dst, RegistryTarget)
    return dst


async def stored(registry: RegistryServer, repo: str, desc: Descriptor) -> bytes | None:
    """The blob as the registry serves it (straight, not through the proxy); None if absent."""
    url = f"{registry.url}/v2/{repo}/blobs/{desc.digest}"
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        if response.status == 404:
            return None
        assert response.status == 200
        return await response.read()


def upload_log(proxy: FaultProxy) -> list[tuple[str, str | None, int]]:
    """(method, Content-Range, status) of every request on an upload session, in order."""
    return [
        (e.method, e.content_range, e.status) for e in proxy.journal if UPLOADS in e.path
    ]


def content_range(start: int, end: int) -> str:
    return f"{start}-{end - 1}"


def chunks_log(start: int, size: int, step: int = MiB) -> list[tuple[str, str | None, int]]:
    """The PATCHes and the closing PUT (with the last chunk) of an upload from ``start``."""
    log: list[tuple[str, str | None, int]] = []
    while size - start > step:
        log.append(("PATCH", content_range(start, start + step), 202))
        start += step
    log.append(("PUT", content_range(start, size) if start < size else None, 201))
    return log


async def push(
    proxy: FaultProxy, repo: str, data: bytes, options: HttpOptions, **kwargs: object
) -> Descriptor:
    desc = describe(data)
    async with Session(options) as session:
        dst = target(session, proxy.address, repo, options)
        await dst.push_blob(desc, opener(data, desc, **kwargs))  # type: ignore[arg-type]
    return desc


# -- chunked uploads ----------------------------------------------------------------------


@pytest.mark.parametrize("chunk_min", [None, 2 * MiB])
async def test_chunked_upload_sends_inclusive_ranges_sized_by_the_registry(
    registry: RegistryServer, repo: str, proxy: FaultProxy, chunk_min: int | None
) -> None:
    if chunk_min is not None:
        proxy.add("POST", UPLOADS, Fault(headers={"OCI-Chunk-Min-Length": str(chunk_min)}))
    data = os.urandom(5 * MiB + 77)
    desc = await push(proxy, repo, data, CHUNKED)
    assert await stored(registry, repo, desc) == data
    assert upload_log(proxy) == [("POST", None, 202), *chunks_log(0, len(data), chunk_min or MiB)]


def test_chunk_length_is_raised_to_the_minimum_and_capped() -> None:
    assert chunk_length(MiB, None) == MiB
    assert chunk_length(MiB, "2097152") == 2 * MiB
    assert chunk_length(4 * MiB, "1024") == 4 * MiB  # a minimum, not a size
    assert chunk_length(MiB, str(10 * 2**30)) == MAX_CHUNK_SIZE  # U8: no 10 GiB chunks
    assert chunk_length(2**40, None) == MAX_CHUNK_SIZE
    for junk in ("", "-5", "1e9", "0x10", "\uff19", "1" * 40):
        assert chunk_length(MiB, junk) == MiB


@pytest.mark.parametrize(
    ("header", "offset"),
    [("0-999", 1000), ("bytes=0-999", 1000), ("0-0", 0), (" 0-4 ", 5),
     ("5-9", None), ("0-", None), ("", None), (None, None), ("0-x", None), ("0--1", None)],
)
def test_parse_upload_range(header: str | None, offset: int | None) -> None:
    assert parse_upload_range(header) == offset


# -- recovering sessions: U1, U2, U3 ------------------------------------------------------


async def test_patch_answered_201_counts_as_accepted(
    registry: RegistryServer, repo: str, proxy: FaultProxy
) -> None:
    # ECR answers a PATCH with 201 instead of 202 (protocol.md §5.1): still a stored chunk.
    proxy.add("PATCH", UPLOADS, Fault(rewrite_status=201))
    data = os.urandom(3 * MiB + 11)
    desc = await push(proxy, repo, data, CHUNKED)
    assert await stored(registry, repo, desc) == data
    log = upload_log(proxy)
    assert [status for method, _, status in log if method == "PATCH"] == [201, 201, 201]
    assert log[-1][0] == "PUT" and log[-1][2] == 201
    assert not [entry for entry in log if entry[0] == "GET"]  # no status query was needed


async def test_reset_patch_continues_from_the_registry_offset(
    registry: RegistryServer, repo: str, proxy: FaultProxy
) -> None:
    # U1: the second PATCH breaks after 300 KiB, before the registry saw any of it.
    proxy.add("PATCH", UPLOADS, Fault(reset_request_after=300 * 1024), attempts={2})
    data = os.urandom(4 * MiB + 5)
    desc = await push(proxy, repo, data, CHUNKED)
    assert await stored(registry, repo, desc) == data
    assert upload_log(proxy) == [
        ("POST", None, 202),
        ("PATCH", content_range(0, MiB), 202),
        ("PATCH", content_range(MiB, 2 * MiB), -1),
        ("GET", None, 204),  # how far did it get?
        *chunks_log(MiB, len(data)),  # from the registry's offset
    ]


async def test_refused_range_resyncs_with_the_registry(
    registry: RegistryServer, repo: str, proxy: FaultProxy
) -> None:
    # U2: one PATCH answered 416 (never forwarded): ask, then continue where the registry is.
    proxy.add("PATCH", UPLOADS, Fault(status=416, body=oci_error("RANGE_INVALID"),
                                      headers=OCI_ERROR), attempts={2})
    data = os.urandom(3 * MiB + 5)
    desc = await push(proxy, repo, data, CHUNKED)
    assert await stored(registry, repo, desc) == data
    log = upload_log(proxy)
    assert log[2:5] == [
        ("PATCH", content_range(MiB, 2 * MiB), 416),
        ("GET", None, 204),
        ("PATCH", content_range(MiB, 2 * MiB), 202),
    ]
    assert [m for m, _, _ in log].count("POST") == 1


async def test_expired_token_on_a_patch_resyncs_and_a_lasting_refusal_fails(
    registry: RegistryServer, repo: str, proxy: FaultProxy
) -> None:
    # U13's upload half: one PATCH refused with 401 (a token that ran out) is sent again after
    # a status request; a refusal that lasts ends the upload within the budget.
    unauthorized = Fault(status=401, body=oci_error("UNAUTHORIZED"), headers=OCI_ERROR)
    proxy.add("PATCH", UPLOADS, unauthorized, attempts={2})
    data = os.urandom(3 * MiB + 5)
    desc = await push(proxy, repo, data, CHUNKED)
    assert await stored(registry, repo, desc) == data
    assert upload_log(proxy)[2:5] == [
        ("PATCH", content_range(MiB, 2 * MiB), 401),
        ("GET", None, 204),
        ("PATCH", content_range(MiB, 2 * MiB), 202),
    ]
    proxy.rules.clear()
    proxy.journal.clear()
    proxy.add("PATCH", UPLOADS, unauthorized)
    with pytest.raises(AuthenticationError, match="UNAUTHORIZED"):
        await push(proxy, f"{repo}-2", data, CHUNKED)
    assert proxy.count("PATCH", UPLOADS) == QUICK.attempts


async def test_vanished_session_restarts_from_post(
    registry: RegistryServer, repo: str, proxy: FaultProxy
) -> None:
    # U3: the session is gone (purged): a new POST, from byte 0.
    proxy.add("PATCH", UPLOADS, Fault(status=404, body=oci_error("BLOB_UPLOAD_UNKNOWN"),
                                      headers=OCI_ERROR), attempts={2})
    data = os.urandom(3 * MiB + 5)
    opened: list[int] = []
    desc = await push(proxy, repo, data, CHUNKED, opened=opened)
    assert await stored(registry, repo, desc) == data
    log = upload_log(proxy)
    assert log[2] == ("PATCH", content_range(MiB, 2 * MiB), 404)
    assert log[3:6] == [
        ("DELETE", None, 204),  # the old session (still there: the 404 was the proxy's)
        ("POST", None, 202),
        ("PATCH", content_range(0, MiB), 202),
    ]
    assert len(opened) == 2  # the source was read again from the start


async def test_patch_whose_answer_was_lost_restarts_when_the_session_is_refused(
    registry: RegistryServer, repo: str, proxy: FaultProxy
) -> None:
    # The registry stored the PATCH but the answer never came: distribution then refuses the
    # session (its data is past the offset in our Location), so the upload starts over.
    proxy.add("PATCH", UPLOADS, Fault(swallow=True), attempts={2})
    data = os.urandom(3 * MiB + 5)
    desc = await push(proxy, repo, data, CHUNKED)
    assert await stored(registry, repo, desc) == data
    log = upload_log(proxy)
    assert log[2:5] == [
        ("PATCH", content_range(MiB, 2 * MiB), -1),
        ("GET", None, 404),  # BLOB_UPLOAD_INVALID
        ("DELETE", None, 404),
    ]
    assert log[5:7] == [("POST", None, 202), ("PATCH", content_range(0, MiB), 202)]


async def test_failed_monolithic_put_continues_in_chunks(
    registry: RegistryServer, repo: str, proxy: FaultProxy
) -> None:
    proxy.add("PUT", UPLOADS, Fault(reset_request_after=MiB), attempts={1})
    data = os.urandom(3 * MiB + 5)
    desc = await push(proxy, repo, data, MONOLITHIC)
    assert await stored(registry, repo, desc) == data
    heads = [e for e in proxy.entries("HEAD", rf"/blobs/{desc.digest}$")]
    assert len(heads) == 1  # committed after all? (no)
    assert upload_log(proxy) == [
        ("POST", None, 202),
        ("PUT", None, -1),
        ("GET", None, 204),
        *chunks_log(0, len(data)),
    ]


async def test_retry_budget_is_bounded(
    registry: RegistryServer, repo: str, proxy: FaultProxy
) -> None:
    proxy.add("PATCH", UPLOADS, Fault(status=503))
    data = os.urandom(2 * MiB + 5)
    with pytest.raises(RegistryError, match="503") as info:
        await push(proxy, repo, data, CHUNKED)
    assert info.value.status == 503
    log = upload_log(proxy)
    assert [m for m, _, _ in log].count("PATCH") == QUICK.attempts
    assert log[-1][0] == "DELETE"
    assert await stored(registry, repo, describe(data)) is None


# -- closing the upload: U4, U5, U6 -------------------------------------------------------


@pytest.mark.parametrize("options", [MONOLITHIC, CHUNKED], ids=["monolithic", "chunked"])
async def test_lost_answer_to_the_closing_put_is_settled_by_head(
    registry: RegistryServer, repo: str, proxy: FaultProxy, options: HttpOptions
) -> None:
    # U4: the registry committed the blob but the answer was lost: no second upload.
    proxy.add("PUT", UPLOADS, Fault(swallow=True))
    data = os.urandom(2 * MiB + 5)
    desc = await push(proxy, repo, data, options)
    assert await stored(registry, repo, desc) == data
    puts = [e for e in proxy.entries("PUT", UPLOADS)]
    assert len(puts) == 1
    assert proxy.journal[-1].method == "HEAD"
    assert proxy.journal[-1].status == 200
    assert proxy.count("POST", UPLOADS) == 1


async def test_digest_invalid_fails_at_once(
    registry: RegistryServer, repo: str, proxy: FaultProxy
) -> None:
    # U5: the registry says the bytes do not hash to the digest (changed in transit).
    proxy.add("PUT", UPLOADS, Fault(status=400, body=oci_error("DIGEST_INVALID"),
                                    headers=OCI_ERROR))
    data = os.urandom(MiB + 5)
    with pytest.raises(RegistryError, match="DIGEST_INVALID") as info:
        await push(proxy, repo, data, MONOLITHIC)
    assert info.value.codes == ("DIGEST_INVALID",)
    assert [m for m, _, _ in upload_log(proxy)] == ["POST", "PUT", "DELETE"]
    assert await stored(registry, repo, describe(data)) is None


async def test_digest_invalid_pushes_no_manifest(
    registry: RegistryServer, repo: str, proxy: FaultProxy, sample_layout: Path
) -> None:
    proxy.add("PUT", UPLOADS, Fault(status=400, body=oci_error("DIGEST_INVALID"),
                                    headers=OCI_ERROR))
    with pytest.raises(RegistryError, match="DIGEST_INVALID"):
        await ociflow.copy(f"oci:{sample_layout}:1.0", f"docker://{proxy.address}/{repo}:1.0",
                           options=MONOLITHIC)
    assert proxy.count("PUT", "/manifests/") == 0
    paths = [e.path for e in proxy.entries("PUT", UPLOADS)]
    assert len(paths) == len(set(paths))  # one attempt per upload session, no loop
    async with aiohttp.ClientSession() as http, http.head(
        f"{registry.url}/v2/{repo}/manifests/1.0",
        headers={"Accept": mediatypes.MANIFEST_ACCEPT},
    ) as response:
        assert response.status == 404


async def test_existing_blobs_are_not_uploaded(
    registry: RegistryServer, repo: str, proxy: FaultProxy, sample_layout: Path
) -> None:
    # U12: copied once straight, then again through the proxy: not one upload request.
    await ociflow.copy(f"oci:{sample_layout}:1.0", f"docker://{registry.address}/{repo}:1.0",
                       options=MONOLITHIC)
    await ociflow.copy(f"oci:{sample_layout}:1.0", f"docker://{proxy.address}/{repo}:2.0",
                       options=MONOLITHIC)
    assert upload_log(proxy) == []
    assert proxy.count("PUT", "/manifests/2.0") == 1


async def test_source_failure_in_a_chunked_upload_commits_nothing(
    registry: RegistryServer, repo: str, proxy: FaultProxy
) -> None:
    good = os.urandom(3 * MiB + 5)
    desc = describe(good)
    bad = good[:-1] + bytes([good[-1] ^ 1])
    async with Session(CHUNKED) as session:
        dst = target(session, proxy.address, repo, CHUNKED)
        with pytest.raises(DigestMismatchError, match="digest mismatch"):
            await dst.push_blob(desc, opener(bad, desc))
    assert await stored(registry, repo, desc) is None
    log = upload_log(proxy)
    assert [m for m, _, _ in log].count("PUT") <= 1  # cut short if sent at all
    assert log[-1][0] == "DELETE"


# -- cancellation and resuming a recorded session: U15, crash resume ------------------------


class MemoryStore:
    """A SessionStore in a dict, as a crash-resume journal would keep it on disk."""

    def __init__(self) -> None:
        self.sessions: dict[tuple[str, str], UploadSession] = {}
        self.recorded: list[UploadSession] = []

    def find(self, repository: str, digest: Digest) -> UploadSession | None:
        return self.sessions.get((repository, digest))

    def record(self, session: UploadSession) -> None:
        self.recorded.append(session)
        self.sessions[(session.repository, session.digest)] = session

    def forget(self, repository: str, digest: Digest) -> None:
        self.sessions.pop((repository, digest), None)


async def start_push(
    proxy: FaultProxy, repo: str, data: bytes, gate: asyncio.Event, store: MemoryStore | None
) -> tuple[Descriptor, asyncio.Task[None], Session]:
    """A chunked push whose source stops before its third chunk (at :data:`GATE`) until
    ``gate`` is set; returns once the PATCHes of the bytes before it have been answered."""
    assert len(data) > GATE
    desc = describe(data)
    session = Session(CHUNKED)
    dst = target(session, proxy.address, repo, CHUNKED)
    dst.sessions = store
    task = asyncio.create_task(
        dst.push_blob(desc, opener(data, desc, gate=gate, gate_at=GATE))
    )
    patches = GATE // CHUNKED.chunk_size
    for _ in range(500):
        if proxy.count("PATCH", UPLOADS) >= patches and proxy.journal[-1].ended:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)
    return desc, task, session


async def test_cancelled_upload_deletes_its_session(
    registry: RegistryServer, repo: str, proxy: FaultProxy
) -> None:
    # U15: cancelled mid-push: CancelledError propagates, the session is cancelled.
    data = os.urandom(2 * GATE + 5)
    desc, task, session = await start_push(proxy, repo, data, asyncio.Event(), None)
    try:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    finally:
        await session.close()
    assert upload_log(proxy)[-1][0] == "DELETE"
    assert await stored(registry, repo, desc) is None


async def test_recorded_session_is_continued_by_the_next_run(
    registry: RegistryServer, repo: str, proxy: FaultProxy
) -> None:
    data = os.urandom(2 * GATE + 5)
    store = MemoryStore()
    desc, task, session = await start_push(proxy, repo, data, asyncio.Event(), store)
    try:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    finally:
        await session.close()
    assert "DELETE" not in [m for m, _, _ in upload_log(proxy)]  # left for the next run
    (recorded,) = store.sessions.values()
    assert (recorded.offset, recorded.size, recorded.digest) == (GATE, len(data), desc.digest)
    assert recorded.repository == f"{proxy.address}/{repo}"
    proxy.journal.clear()

    released = asyncio.Event()
    released.set()
    async with Session(CHUNKED) as again:
        dst = target(again, proxy.address, repo, CHUNKED)
        dst.sessions = store
        await dst.push_blob(desc, opener(data, desc, gate=released, gate_at=GATE))
    assert await stored(registry, repo, desc) == data
    assert upload_log(proxy) == [("GET", None, 204), *chunks_log(GATE, len(data))]
    assert store.sessions == {}


async def test_recorded_session_of_another_origin_is_not_used(
    registry: RegistryServer, repo: str, proxy: FaultProxy
) -> None:
    data = os.urandom(MiB + 5)
    desc = describe(data)
    store = MemoryStore()
    key = f"{proxy.address}/{repo}"
    store.record(UploadSession(key, desc.digest, len(data),
                               "http://127.0.0.2:9/v2/x/blobs/uploads/u?_state=s", 5))
    async with Session(MONOLITHIC) as session:
        dst = target(session, proxy.address, repo, MONOLITHIC)
        dst.sessions = store
        await dst.push_blob(desc, opener(data, desc))
    assert await stored(registry, repo, desc) == data
    assert [m for m, _, _ in upload_log(proxy)] == ["POST", "PUT"]
    assert store.sessions == {}
