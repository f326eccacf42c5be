"""The fault proxy does what each fault claims, so resilience tests built on it are trustworthy.

Each test talks to the proxy (in front of the real registry) with a plain aiohttp client, or a
raw socket where aiohttp would hide the difference (a clean close versus a TCP reset), and
checks the bytes and statuses that arrive and what the journal recorded.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import quote

import aiohttp
import pytest
from yarl import URL

from tests.fault_proxy import Entry, Fault, FaultProxy
from tests.registry_server import RegistryServer

pytestmark = pytest.mark.integration

SIZE = 300 * 1024  # more than one of the proxy's 256 KiB upstream chunks


@dataclass
class Blob:
    data: bytes
    digest: str
    path: str  # /v2/<repo>/blobs/<digest>


@pytest.fixture()
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        yield session


@pytest.fixture()
async def proxy(registry: RegistryServer) -> AsyncIterator[FaultProxy]:
    async with FaultProxy(registry.url) as running:
        yield running


async def upload(http: aiohttp.ClientSession, base: str, repo: str, data: bytes) -> str:
    """Monolithic upload (POST, then PUT ?digest=) through ``base``; returns the digest."""
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    async with http.post(f"{base}/v2/{repo}/blobs/uploads/") as started:
        assert started.status == 202, await started.text()
        location = URL(base).join(URL(started.headers["Location"], encoded=True))
    separator = "&" if location.raw_query_string else "?"
    put_url = URL(f"{location}{separator}digest={quote(digest, safe='')}", encoded=True)
    async with http.put(put_url, data=data) as done:
        assert done.status == 201, await done.text()
    return digest


@pytest.fixture()
async def blob(http: aiohttp.ClientSession, registry: RegistryServer, repo: str) -> Blob:
    data = os.urandom(SIZE)
    digest = await upload(http, registry.url, repo, data)
    return Blob(data, digest, f"/v2/{repo}/blobs/{digest}")


def url(proxy: FaultProxy, path: str) -> str:
    return f"http://{proxy.address}{path}"


def only(proxy: FaultProxy, method: str, path: str) -> Entry:
    entries = proxy.entries(method, path)
    assert len(entries) == 1, entries
    return entries[0]


async def until_ended(entry: Entry) -> None:
    """Wait (bounded) for the proxy to finish handling ``entry``."""
    for _ in range(200):
        if entry.ended:
            return
        await asyncio.sleep(0.025)
    raise AssertionError(f"the proxy never finished {entry}")


async def raw_request(
    proxy: FaultProxy, method: str, path: str, body: bytes = b""
) -> tuple[bytes, bytes, BaseException | None]:
    """One request over a bare socket: (header block, body bytes, the error that ended it).

    aiohttp would hide what matters here: it re-sends an idempotent request once when the
    connection drops, and reports a clean close and a reset alike.
    """
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(
        f"{method} {path} HTTP/1.1\r\nHost: {proxy.address}\r\nConnection: close\r\n"
        f"Content-Length: {len(body)}\r\n\r\n".encode() + body
    )
    head = b""
    received = bytearray()
    error: BaseException | None = None
    try:
        head = await reader.readuntil(b"\r\n\r\n")
        while chunk := await reader.read(65536):
            received += chunk
    except (ConnectionResetError, asyncio.IncompleteReadError) as exc:
        error = exc
    finally:
        writer.close()
    return head, bytes(received), error


# -- forwarding and the journal ------------------------------------------------------------


async def test_forwards_unchanged_and_records_the_exchange(
    proxy: FaultProxy, blob: Blob, http: aiohttp.ClientSession
) -> None:
    async with http.get(url(proxy, blob.path)) as response:
        assert response.status == 200
        assert await response.read() == blob.data
    async with http.head(url(proxy, blob.path)) as response:
        assert response.status == 200
        assert response.content_length == SIZE
    get = only(proxy, "GET", blob.path)
    assert (get.status, get.sent, get.fault, get.range) == (200, SIZE, False, None)
    assert get.started <= get.ended
    assert only(proxy, "HEAD", blob.path).status == 200


async def test_status_injection_on_chosen_attempts(
    proxy: FaultProxy, blob: Blob, http: aiohttp.ClientSession
) -> None:
    proxy.add("GET", r"/blobs/sha256:", Fault(status=503, headers={"Retry-After": "7"},
                                                body=b"busy"), attempts={1, 2})
    for _ in range(2):
        async with http.get(url(proxy, blob.path)) as response:
            assert response.status == 503
            assert response.headers["Retry-After"] == "7"
            assert await response.read() == b"busy"
    async with http.get(url(proxy, blob.path)) as response:
        assert response.status == 200
        assert await response.read() == blob.data
    entries = proxy.entries("GET", blob.path)
    assert [(e.status, e.fault) for e in entries] == [(503, True), (503, True), (200, False)]


async def test_request_header_override(
    proxy: FaultProxy, blob: Blob, http: aiohttp.ClientSession
) -> None:
    proxy.add("GET", r"/blobs/", Fault(request_headers={"Range": "bytes=0-9"}))
    async with http.get(url(proxy, blob.path)) as response:
        assert response.status == 206
        assert await response.read() == blob.data[:10]


# -- ranges ----------------------------------------------------------------------------------


async def test_range_is_forwarded_and_strip_range_gives_200(
    proxy: FaultProxy, blob: Blob, http: aiohttp.ClientSession
) -> None:
    headers = {"Range": "bytes=100-"}
    async with http.get(url(proxy, blob.path), headers=headers) as response:
        assert response.status == 206
        assert response.headers["Content-Range"] == f"bytes 100-{SIZE - 1}/{SIZE}"
        assert await response.read() == blob.data[100:]
    proxy.add("GET", r"/blobs/", Fault(strip_range=True))
    async with http.get(url(proxy, blob.path), headers=headers) as response:
        assert response.status == 200
        assert await response.read() == blob.data
    # the journal records the Range the client asked for, stripped or not
    assert [e.range for e in proxy.entries("GET", blob.path)] == ["bytes=100-"] * 2


async def test_shift_content_range(
    proxy: FaultProxy, blob: Blob, http: aiohttp.ClientSession
) -> None:
    proxy.add("GET", r"/blobs/", Fault(shift_content_range=10))
    async with http.get(url(proxy, blob.path), headers={"Range": "bytes=100-"}) as response:
        assert response.status == 206
        assert response.headers["Content-Range"] == f"bytes 110-{SIZE - 1}/{SIZE}"
        assert await response.read() == blob.data[100:]  # only the header lies


# -- broken bodies ---------------------------------------------------------------------------


async def test_cut_after_closes_cleanly_short_of_the_declared_length(
    proxy: FaultProxy, blob: Blob
) -> None:
    cut = 1000
    proxy.add("GET", r"/blobs/", Fault(cut_after=cut))
    head, body, error = await raw_request(proxy, "GET", blob.path)
    assert head.startswith(b"HTTP/1.1 200")
    assert f"content-length: {SIZE}\r\n".encode() in head.lower()
    assert error is None  # a clean end of stream (FIN), not a reset
    assert body == blob.data[:cut]
    entry = only(proxy, "GET", blob.path)
    await until_ended(entry)
    assert entry.sent == cut


async def test_reset_after_aborts_the_connection(proxy: FaultProxy, blob: Blob) -> None:
    cut = 1000
    proxy.add("GET", r"/blobs/", Fault(reset_after=cut))
    head, body, error = await raw_request(proxy, "GET", blob.path)
    # the RST may overtake bytes not read yet, headers included; it never adds any
    assert not head or head.startswith(b"HTTP/1.1 200")
    assert isinstance(error, ConnectionResetError)
    assert blob.data.startswith(body) and len(body) <= cut
    entry = only(proxy, "GET", blob.path)
    await until_ended(entry)
    assert entry.sent == cut


async def test_stall_after_sends_k_bytes_then_nothing(
    proxy: FaultProxy, blob: Blob, http: aiohttp.ClientSession
) -> None:
    k = 5000
    proxy.add("GET", r"/blobs/", Fault(stall_after=k))
    received = bytearray()
    timeout = aiohttp.ClientTimeout(total=None, sock_read=0.5)
    with pytest.raises(aiohttp.ServerTimeoutError):
        async with http.get(url(proxy, blob.path), timeout=timeout) as response:
            assert response.status == 200
            async for chunk in response.content.iter_any():
                received += chunk
    assert bytes(received) == blob.data[:k]
    entry = only(proxy, "GET", blob.path)
    await until_ended(entry)  # the client gave up; the stalled handler is gone, not sleeping
    assert entry.sent == k


async def test_flip_at_inverts_exactly_one_byte(
    proxy: FaultProxy, blob: Blob, http: aiohttp.ClientSession
) -> None:
    at = 256 * 1024 + 7  # inside the second upstream chunk
    proxy.add("GET", r"/blobs/", Fault(flip_at=at))
    async with http.get(url(proxy, blob.path)) as response:
        body = await response.read()
    assert len(body) == SIZE
    diff = [i for i in range(SIZE) if body[i] != blob.data[i]]
    assert diff == [at]
    assert body[at] == blob.data[at] ^ 0xFF


async def test_append_adds_bytes_and_grows_content_length(
    proxy: FaultProxy, blob: Blob, http: aiohttp.ClientSession
) -> None:
    extra = b"trailing garbage" * 64
    proxy.add("GET", r"/blobs/", Fault(append=extra))
    async with http.get(url(proxy, blob.path)) as response:
        assert response.content_length == SIZE + len(extra)
        assert await response.read() == blob.data + extra


async def test_swallow_forwards_the_request_but_drops_the_answer(
    proxy: FaultProxy, registry: RegistryServer, repo: str, http: aiohttp.ClientSession
) -> None:
    data = os.urandom(4096)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    async with http.post(f"http://{proxy.address}/v2/{repo}/blobs/uploads/") as started:
        location = URL(started.headers["Location"], encoded=True)
    assert location.port == proxy.port  # the registry's Location points back at the proxy
    proxy.add("PUT", r"/blobs/uploads/", Fault(swallow=True))
    target = f"{location.raw_path_qs}&digest={quote(digest, safe='')}"
    head, body, error = await raw_request(proxy, "PUT", target, data)
    assert (head, body) == (b"", b"") and error is not None  # no answer at all
    put = only(proxy, "PUT", r"/blobs/uploads/")
    assert (put.status, put.received) == (-1, len(data))
    # ... yet the registry got the request and committed the blob (U4's situation)
    async with http.head(f"{registry.url}/v2/{repo}/blobs/{digest}") as response:
        assert response.status == 200


# -- pacing ----------------------------------------------------------------------------------


async def test_throttle_paces_the_body(
    proxy: FaultProxy, blob: Blob, http: aiohttp.ClientSession
) -> None:
    rate = 600 * 1024  # the 300 KiB blob takes about half a second
    proxy.add("GET", r"/blobs/", Fault(throttle=rate))
    started = time.monotonic()
    body = bytearray()
    sent_when_first_arrived: int | None = None
    async with http.get(url(proxy, blob.path)) as response:
        async for chunk in response.content.iter_any():
            if sent_when_first_arrived is None:
                sent_when_first_arrived = proxy.entries("GET", blob.path)[0].sent
            body += chunk
    elapsed = time.monotonic() - started
    assert bytes(body) == blob.data
    # the body arrived in pieces while the proxy was still sending, and no faster than the rate
    assert sent_when_first_arrived is not None and sent_when_first_arrived < SIZE
    assert elapsed >= (SIZE - rate // 20) / rate


async def test_delay_and_max_concurrency(
    proxy: FaultProxy, blob: Blob, http: aiohttp.ClientSession
) -> None:
    proxy.add("HEAD", r"/blobs/", Fault(delay=0.3))

    async def head() -> None:
        async with http.head(url(proxy, blob.path)) as response:
            assert response.status == 200

    await asyncio.gather(head(), head(), head())
    assert proxy.max_concurrency("HEAD", r"/blobs/") == 3
    await head()
    await head()
    assert proxy.max_concurrency("HEAD", r"/blobs/") == 3
    assert proxy.max_concurrency("GET", r"/blobs/") == 0
    assert all(e.ended - e.started >= 0.3 for e in proxy.entries("HEAD", r"/blobs/"))


async def test_reset_request_after_cuts_an_upload_midway(registry: RegistryServer) -> None:
    async with FaultProxy(registry.url) as proxy:
        proxy.add("PUT", r"/upload-target$", Fault(reset_request_after=64 * 1024))
        body = b"x" * (1024 * 1024)
        async with aiohttp.ClientSession() as client:
            with pytest.raises(aiohttp.ClientError):
                async with client.put(
                    f"http://{proxy.address}/upload-target", data=body
                ) as response:
                    await response.read()
        # (aiohttp may send an idempotent PUT a second time on its own; each is cut the same)
        entries = proxy.entries("PUT", r"/upload-target$")
    assert entries
    for entry in entries:
        assert entry.status == -1
        assert 64 * 1024 <= entry.received < len(body)
