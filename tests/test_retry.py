"""Retries, rate limits, stall timeouts and concurrency under faults (reliability.md §4).

Everything runs against the real registry through the fault proxy, and the proxy's journal is
the evidence: attempt counts, the gaps between attempts, what was in flight at once. Policies
use short delays so the file stays fast; durations are only ever asserted as lower bounds (a
client that waited *at least* the time the server asked for). One small in-process server
stands in for what the registry cannot show: a TLS certificate the client does not trust.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import re
import ssl
import sys
import time
from collections.abc import AsyncGenerator, AsyncIterator
from email.utils import formatdate
from pathlib import Path
from urllib.parse import quote

import pytest
import trustme
from aiohttp import web
from aiohttp.test_utils import TestServer
from yarl import URL

import ociflow
from ociflow import mediatypes
from ociflow.descriptor import Descriptor
from ociflow.digest import Digest
from ociflow.errors import (
    AuthenticationError,
    CancelledTransferError,
    NotFoundError,
    OciflowError,
    RegistryError,
    TooManyRequestsError,
    TransportError,
)
from ociflow.http.retry import RetryPolicy, parse_retry_after
from ociflow.http.transport import HttpOptions, Session
from ociflow.reference import parse_docker_reference
from ociflow.streams import verified
from ociflow.target import open_destination, open_source
from tests.fault_proxy import Entry, Fault, FaultProxy
from tests.registry_server import RegistryServer, free_port

pytestmark = pytest.mark.integration

FAST = RetryPolicy(attempts=5, base_delay=0.05, max_delay=0.5, jitter=0.2)
GUARD = 60  # seconds: a deadlock guard, never an expectation


def options(retry: RetryPolicy = FAST, **more: object) -> HttpOptions:
    return HttpOptions(plain_http=True, retry=retry, **more)  # type: ignore[arg-type]


def describe(data: bytes, media_type: str = mediatypes.OCI_LAYER_GZIP) -> Descriptor:
    return Descriptor(media_type, Digest.of(data), len(data))


async def one_chunk(data: bytes) -> AsyncGenerator[bytes, None]:
    yield data


async def push_image(registry: RegistryServer, repo: str, layers: list[bytes]) -> list[Descriptor]:
    """Push an image tagged ``1`` straight to the registry; returns config + layer descriptors."""
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "rootfs": {"type": "layers", "diff_ids": []}}).encode()
    blobs = [(describe(config, mediatypes.OCI_CONFIG), config)]
    blobs += [(describe(layer), layer) for layer in layers]
    manifest = json.dumps({
        "schemaVersion": 2,
        "mediaType": mediatypes.OCI_MANIFEST,
        "config": blobs[0][0].to_json(),
        "layers": [desc.to_json() for desc, _ in blobs[1:]],
    }).encode()
    async with Session(options(), jobs=4) as session:
        dst = open_destination(f"docker://{registry.address}/{repo}:1", session)

        async def push(desc: Descriptor, data: bytes) -> None:
            await dst.push_blob(desc, lambda: verified(one_chunk(data), desc))

        await asyncio.gather(*(push(desc, data) for desc, data in blobs))
        await dst.push_root(describe(manifest, mediatypes.OCI_MANIFEST), manifest, "1")
        await dst.close()
    return [desc for desc, _ in blobs]


def blob_path(desc: Descriptor) -> str:
    return f"/blobs/{desc.digest}$"


async def pull(
    proxy: FaultProxy, repo: str, out: Path, *, jobs: int = 3, retry: RetryPolicy = FAST,
    **more: object,
) -> ociflow.CopyResult:
    return await asyncio.wait_for(
        ociflow.copy(f"docker://{proxy.address}/{repo}:1", f"oci:{out}:1", jobs=jobs,
                     options=options(retry, **more)),
        GUARD,
    )


def assert_pulled(out: Path, blobs: list[Descriptor]) -> None:
    for desc in blobs:
        stored = out / "blobs" / desc.digest.algorithm / desc.digest.encoded
        assert Digest.of(stored.read_bytes()) == desc.digest


def assert_nothing_partial(out: Path) -> None:
    """FAIL-CLEAN: no temp file, nothing unverified under ``blobs/``, no tag. A per-digest
    partial file in ``.ociflow-ingest/`` is resume state, not a leftover: a sibling download
    cancelled by the failure keeps the bytes it had for the next run."""
    for path in out.rglob("*"):
        if not path.is_file():
            continue
        assert not path.name.endswith(".tmp"), path
        if path.name.endswith(".partial"):
            assert path.parent.name == ".ociflow-ingest", path
            assert re.fullmatch(r"sha256-[0-9a-f]{64}\.partial", path.name), path
        elif path.parent.parent.name == "blobs":
            assert Digest.of(path.read_bytes()).encoded == path.name, path
    index = out / "index.json"
    if index.exists():
        assert json.loads(index.read_text())["manifests"] == []


def statuses(entries: list[Entry]) -> list[int]:
    return [e.status for e in entries]


async def until_ended(entries: list[Entry]) -> None:
    for _ in range(200):
        if all(e.ended for e in entries):
            return
        await asyncio.sleep(0.025)
    raise AssertionError(f"the proxy still serves {[e for e in entries if not e.ended]}")


@pytest.fixture()
async def proxy(registry: RegistryServer) -> AsyncIterator[FaultProxy]:
    async with FaultProxy(registry.url) as running:
        yield running


# -- the policy, unit level ------------------------------------------------------------------


def test_backoff_grows_is_jittered_and_capped() -> None:
    policy = RetryPolicy(base_delay=1.0, max_delay=4.0, jitter=0.2)
    for retry, nominal in ((1, 1.0), (2, 2.0), (3, 4.0), (6, 4.0)):
        samples = {policy.backoff(retry) for _ in range(50)}
        assert all(nominal * 0.8 <= s <= nominal * 1.2 for s in samples)
        assert len(samples) > 1  # jitter: requests retried together do not stay together
    assert RetryPolicy(jitter=0).backoff(2) == 0.5
    assert policy.delay(1, 30.0) == 30.0  # never sooner than the server asked
    assert RetryPolicy.with_retries(4).attempts == 5
    assert RetryPolicy.with_retries(0).attempts == 1
    with pytest.raises(ValueError):
        RetryPolicy(attempts=0)


def test_parse_retry_after_both_forms() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after("120", now) == 120.0
    assert parse_retry_after(" 0 ", now) == 0.0
    assert parse_retry_after(formatdate(now + 90, usegmt=True), now) == 90.0
    assert parse_retry_after("Tue, 14 Nov 2023 22:12:20", now) == 0.0  # no zone: GMT; past
    for bad in (None, "", "-5", "1.5e3", "soon", "Tue, 99 Foo 2023"):
        assert parse_retry_after(bad, now) is None


# -- P9, P10: 5xx retried with growing backoff, then given up --------------------------------


async def test_503_twice_then_ok_with_growing_gaps(
    registry: RegistryServer, repo: str, proxy: FaultProxy, tmp_path: Path
) -> None:
    blobs = await push_image(registry, repo, [os.urandom(2048) for _ in range(2)])
    target = blobs[1]
    proxy.add("GET", blob_path(target), Fault(status=503), attempts={1, 2})
    policy = RetryPolicy(attempts=5, base_delay=0.2, max_delay=2.0, jitter=0.1)
    await pull(proxy, repo, tmp_path / "out", retry=policy)
    assert_pulled(tmp_path / "out", blobs)
    tries = proxy.entries("GET", blob_path(target))
    assert statuses(tries) == [503, 503, 200]
    first_gap = tries[1].started - tries[0].ended
    second_gap = tries[2].started - tries[1].ended
    assert first_gap >= 0.2 * 0.9  # at least the first backoff
    assert second_gap > first_gap  # exponential: the second wait is about twice the first


async def test_503_forever_fails_after_the_budget(
    registry: RegistryServer, repo: str, proxy: FaultProxy, tmp_path: Path
) -> None:
    blobs = await push_image(registry, repo, [os.urandom(2048)])
    target = blobs[1]
    proxy.add("GET", blob_path(target), Fault(status=503))
    out = tmp_path / "out"
    with pytest.raises(RegistryError) as info:
        await pull(proxy, repo, out, retry=RetryPolicy(attempts=3, base_delay=0.05))
    assert info.value.status == 503
    assert str(target.digest) in str(info.value)
    assert "gave up after 3 attempts" in str(info.value)
    assert proxy.count("GET", blob_path(target)) == 3
    assert_nothing_partial(out)


# -- P11, P12, C6: Retry-After and the shared host backoff -----------------------------------


async def test_429_retry_after_holds_back_every_request_to_the_host(
    registry: RegistryServer, repo: str, proxy: FaultProxy, tmp_path: Path
) -> None:
    blobs = await push_image(registry, repo, [os.urandom(2048) for _ in range(2)])
    limited, other = blobs[1], blobs[2]
    # A 2 s window leaves a wide margin for the other blob's failure to land inside it, even
    # on a loaded machine.
    # The 429 is answered after a short delay, so the other blob's first GET is already on its
    # way (the host backoff would otherwise hold it back before it could fail).
    proxy.add("GET", blob_path(limited),
              Fault(status=429, headers={"Retry-After": "2"}, delay=0.2), attempts={1})
    # The other blob fails inside the 429's window, so its own backoff (50 ms) would send it
    # again long before the window ends, if the host backoff did not hold it.
    proxy.add("GET", blob_path(other), Fault(status=503, delay=0.6), attempts={1})
    await pull(proxy, repo, tmp_path / "out", jobs=3)
    assert_pulled(tmp_path / "out", blobs)
    rate_limited = proxy.entries("GET", blob_path(limited))
    held = proxy.entries("GET", blob_path(other))
    assert statuses(rate_limited) == [429, 200]
    assert statuses(held) == [503, 200]
    deadline = rate_limited[0].ended + 2.0
    assert rate_limited[1].started >= deadline
    assert held[0].ended < deadline  # (the test is meaningful: it failed within the window)
    assert held[1].started >= deadline


async def test_429_storm_is_shared_and_spread_by_jitter(
    registry: RegistryServer, repo: str, proxy: FaultProxy
) -> None:
    """C6: six concurrent requests all rate-limited; none returns before the deadline, and
    they do not all return at the same instant."""
    blobs = await push_image(registry, repo, [os.urandom(1024) for _ in range(5)])
    proxy.add("GET", r"/blobs/", Fault(status=429, headers={"Retry-After": "1"}),
              attempts=set(range(1, len(blobs) + 1)))
    async with Session(options(), jobs=len(blobs)) as session:
        client = session.registry(parse_docker_reference(f"{proxy.address}/{repo}:1"))

        async def get(desc: Descriptor) -> int:
            response = await client.send("GET", f"/v2/{repo}/blobs/{desc.digest}",
                                         context=f"{repo}: blob")
            async with response:
                await response.read(desc.size)
                return response.status

        assert await asyncio.wait_for(asyncio.gather(*(get(d) for d in blobs)), GUARD) == [
            200
        ] * len(blobs)
    entries = proxy.entries("GET", r"/blobs/")
    first, retried = entries[: len(blobs)], entries[len(blobs):]
    assert statuses(first) == [429] * len(blobs)
    assert statuses(retried) == [200] * len(blobs)
    deadline = min(e.ended for e in first) + 1.0
    starts = [e.started for e in retried]
    assert min(starts) >= deadline
    assert max(starts) - min(starts) > 0.01  # jitter: no thundering herd at the deadline


async def test_retry_after_as_an_http_date(
    registry: RegistryServer, repo: str, proxy: FaultProxy, tmp_path: Path
) -> None:
    blobs = await push_image(registry, repo, [os.urandom(2048)])
    target = blobs[1]
    when = math.ceil(time.time()) + 2  # between one and two seconds from the request
    proxy.add("GET", blob_path(target),
              Fault(status=429, headers={"Retry-After": formatdate(when, usegmt=True)}),
              attempts={1})
    await pull(proxy, repo, tmp_path / "out")
    assert_pulled(tmp_path / "out", blobs)
    tries = proxy.entries("GET", blob_path(target))
    assert statuses(tries) == [429, 200]
    wall_minus_monotonic = time.time() - time.monotonic()
    assert tries[1].started + wall_minus_monotonic >= when - 0.05  # not before the date


async def test_retry_after_beyond_the_cap_fails_fast(
    registry: RegistryServer, repo: str, proxy: FaultProxy, tmp_path: Path
) -> None:
    blobs = await push_image(registry, repo, [os.urandom(2048)])
    target = blobs[1]
    proxy.add("GET", blob_path(target), Fault(status=429, headers={"Retry-After": "86400"}))
    out = tmp_path / "out"
    with pytest.raises(TooManyRequestsError) as info:
        await pull(proxy, repo, out, retry=RetryPolicy(max_wait=60))
    message = str(info.value)
    assert "retry after 86400 s" in message and "--retry-max-wait 60 s" in message
    assert str(target.digest) in message
    assert proxy.count("GET", blob_path(target)) == 1  # failed at once, no wait, no retry
    assert_nothing_partial(out)


# -- P13: deterministic failures are not retried ---------------------------------------------


@pytest.mark.parametrize(
    ("status", "code", "error"),
    [
        (401, "UNAUTHORIZED", AuthenticationError),
        (403, "DENIED", AuthenticationError),
        (404, "BLOB_UNKNOWN", NotFoundError),
        (400, "BLOB_UNKNOWN", RegistryError),
    ],
)
async def test_client_errors_are_not_retried(
    registry: RegistryServer, repo: str, proxy: FaultProxy, tmp_path: Path,
    status: int, code: str, error: type[OciflowError],
) -> None:
    blobs = await push_image(registry, repo, [os.urandom(2048)])
    target = blobs[1]
    body = json.dumps({"errors": [{"code": code, "message": "no"}]}).encode()
    proxy.add("GET", blob_path(target), Fault(status=status, body=body,
                                              headers={"Content-Type": "application/json"}))
    out = tmp_path / "out"
    with pytest.raises(error) as info:
        await pull(proxy, repo, out)
    assert str(target.digest) in str(info.value)
    assert "attempts" not in str(info.value)
    assert proxy.count("GET", blob_path(target)) == 1
    assert_nothing_partial(out)


# -- connection failures ---------------------------------------------------------------------


async def test_dropped_connection_is_retried(
    registry: RegistryServer, repo: str, proxy: FaultProxy, tmp_path: Path
) -> None:
    blobs = await push_image(registry, repo, [os.urandom(2048)])
    # The proxy reads the request, forwards it, then drops the connection unanswered.
    proxy.add("GET", r"/manifests/", Fault(swallow=True), attempts={1})
    await pull(proxy, repo, tmp_path / "out")
    assert_pulled(tmp_path / "out", blobs)
    tries = proxy.entries("GET", r"/manifests/")
    assert tries[0].status == -1 and tries[-1].status == 200


async def test_refused_connection_is_retried(caplog: pytest.LogCaptureFixture) -> None:
    """Nothing listens at first; the server starts while the client backs off."""
    port = free_port()
    seen: list[str] = []

    async def ping(request: web.Request) -> web.Response:
        seen.append(request.path)
        return web.json_response({})

    app = web.Application()
    app.router.add_get("/v2/", ping)
    policy = RetryPolicy(attempts=5, base_delay=0.3, jitter=0)
    caplog.set_level(logging.INFO, logger="ociflow.http.retrylayer")
    async with Session(options(policy)) as session:
        client = session.registry(parse_docker_reference(f"127.0.0.1:{port}/app:1"))
        sending = asyncio.create_task(client.send("GET", "/v2/", context="127.0.0.1: ping"))
        await asyncio.sleep(0.1)
        server = TestServer(app, host="127.0.0.1", port=port)
        await server.start_server()
        try:
            response = await asyncio.wait_for(sending, GUARD)
            response.release()
        finally:
            await server.close()
    assert response.status == 200 and seen == ["/v2/"]
    assert any("connection refused" in r.getMessage() for r in caplog.records)


async def test_untrusted_certificate_is_not_retried(tmp_path: Path) -> None:
    ca = trustme.CA()
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_tls)
    hellos: list[str | None] = []

    def hello(_sock: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
        # Called once per TLS ClientHello: counts attempts, failed handshakes included.
        hellos.append(name)

    server_tls.sni_callback = hello
    app = web.Application()
    server = TestServer(app, host="127.0.0.1")
    await server.start_server(ssl=server_tls)
    try:
        async with Session(HttpOptions(retry=FAST)) as session:
            client = session.registry(parse_docker_reference(f"localhost:{server.port}/app:1"))
            with pytest.raises(TransportError, match="certificate") as info:
                await asyncio.wait_for(client.send("GET", "/v2/", context="ping"), GUARD)
    finally:
        await server.close()
    assert hellos == ["localhost"]
    assert "attempts" not in str(info.value)


# -- P14, P15: stalls are timed out, slow bodies are not --------------------------------------


async def test_stall_before_the_headers_is_retried(
    registry: RegistryServer, repo: str, proxy: FaultProxy, tmp_path: Path
) -> None:
    blobs = await push_image(registry, repo, [os.urandom(2048)])
    target = blobs[1]
    proxy.add("GET", blob_path(target), Fault(delay=30), attempts={1})
    await pull(proxy, repo, tmp_path / "out", stall_timeout=1)
    assert_pulled(tmp_path / "out", blobs)
    tries = proxy.entries("GET", blob_path(target))
    assert statuses(tries)[-1] == 200 and len(tries) == 2
    await until_ended(tries[:1])  # the client hung up on the silent server


async def test_stalled_body_is_detected(
    registry: RegistryServer, repo: str, proxy: FaultProxy, tmp_path: Path
) -> None:
    """P14: headers, 64 KiB, then silence. Either the download resumes after the stall
    timeout or the copy fails saying it stalled; either way the stall was noticed."""
    blobs = await push_image(registry, repo, [os.urandom(256 * 1024)])
    target = blobs[1]
    proxy.add("GET", blob_path(target), Fault(stall_after=64 * 1024), attempts={1})
    out = tmp_path / "out"
    try:
        await pull(proxy, repo, out, stall_timeout=1)
    except TransportError as exc:
        assert "stalled" in str(exc) and str(target.digest) in str(exc)
        assert_nothing_partial(out)
        resumed = False
    else:
        assert_pulled(out, blobs)
        resumed = True
    tries = proxy.entries("GET", blob_path(target))
    await until_ended(tries[:1])  # the client dropped the stalled connection
    assert tries[0].sent == 64 * 1024
    if resumed:
        assert len(tries) >= 2 and tries[1].started >= tries[0].started


async def test_slow_steady_body_outlasts_the_stall_timeout(
    registry: RegistryServer, repo: str, proxy: FaultProxy, tmp_path: Path
) -> None:
    size = 192 * 1024
    blobs = await push_image(registry, repo, [os.urandom(size)])
    target = blobs[1]
    proxy.add("GET", blob_path(target), Fault(throttle=96 * 1024))  # about two seconds
    await pull(proxy, repo, tmp_path / "out", stall_timeout=1)
    assert_pulled(tmp_path / "out", blobs)
    (entry,) = proxy.entries("GET", blob_path(target))
    assert entry.sent == size
    assert entry.ended - entry.started > 1  # longer than the stall timeout, and not cut


# -- U9: a manifest PUT is replayable ---------------------------------------------------------


async def test_manifest_put_500_once_is_retried(
    sample_layout: Path, repo: str, proxy: FaultProxy
) -> None:
    proxy.add("PUT", r"/manifests/", Fault(status=500), attempts={1})
    result = await asyncio.wait_for(
        ociflow.copy(f"oci:{sample_layout}:1.0", f"docker://{proxy.address}/{repo}:1.0",
                     options=options()),
        GUARD,
    )
    faulted = next(e for e in proxy.entries("PUT", r"/manifests/") if e.fault)
    same = proxy.entries("PUT", f"^{faulted.path}$")
    assert statuses(same) == [500, 201]
    assert same[0].received == same[1].received > 0  # the same bytes sent again
    async with Session(options()) as session:
        source = open_source(f"docker://{proxy.address}/{repo}:1.0", session)
        assert (await source.resolve()).digest == result.digest


async def test_streamed_upload_body_is_not_retried(
    registry: RegistryServer, repo: str, proxy: FaultProxy
) -> None:
    """A one-shot body is sent once; the 503 goes back to the caller (who resumes uploads)."""
    data = os.urandom(4096)
    async with Session(options()) as session:
        client = session.registry(parse_docker_reference(f"{proxy.address}/{repo}:1"))
        started = await client.send("POST", f"/v2/{repo}/blobs/uploads/", context="start")
        location = started.headers["Location"]  # absolute, with a query (_state)
        started.release()
        proxy.add("PUT", r"/blobs/uploads/", Fault(status=503))
        digest = quote(Digest.of(data), safe="")
        response = await client.send(
            "PUT", URL(f"{location}&digest={digest}", encoded=True),
            context="upload", body=one_chunk(data),
            headers={"Content-Length": str(len(data))},
        )
        assert response.status == 503
        response.release()
    assert proxy.count("PUT", r"/blobs/uploads/") == 1


# -- C1, C4, C5: concurrency holds under load, errors and cancellation ------------------------


async def test_job_limit_holds_for_thirty_layers(
    registry: RegistryServer, repo: str, proxy: FaultProxy, tmp_path: Path
) -> None:
    blobs = await push_image(registry, repo, [os.urandom(2048) for _ in range(30)])
    proxy.add("GET", r"/blobs/", Fault(delay=0.05))  # each GET lasts long enough to overlap
    await pull(proxy, repo, tmp_path / "out", jobs=3)
    assert_pulled(tmp_path / "out", blobs)
    assert proxy.count("GET", r"/blobs/") == len(blobs)
    assert 2 <= proxy.max_concurrency("GET", r"/blobs/sha256:") <= 3


async def test_errors_on_half_the_blobs(
    registry: RegistryServer, repo: str, proxy: FaultProxy, tmp_path: Path
) -> None:
    """C4: with retries the copy finishes; without, it fails with one clear error and leaves
    nothing partial. Either way no limiter token is lost (the guard would fire)."""
    blobs = await push_image(registry, repo, [os.urandom(4096) for _ in range(9)])
    failing = blobs[::2]

    def inject() -> None:
        proxy.rules.clear()
        for desc in failing:
            proxy.add("GET", blob_path(desc), Fault(status=500), attempts={1})

    inject()
    await pull(proxy, repo, tmp_path / "retried", jobs=3)
    assert_pulled(tmp_path / "retried", blobs)
    for desc in blobs:
        expected = [500, 200] if desc in failing else [200]
        assert statuses(proxy.entries("GET", blob_path(desc))) == expected

    inject()
    out = tmp_path / "failed"
    with pytest.raises(RegistryError) as info:
        await pull(proxy, repo, out, jobs=3, retry=RetryPolicy(attempts=1))
    assert info.value.status == 500
    assert any(str(desc.digest) in str(info.value) for desc in failing)
    assert_nothing_partial(out)


async def test_cancel_mid_flight(
    registry: RegistryServer, repo: str, proxy: FaultProxy, tmp_path: Path
) -> None:
    """C5: cancelling the copy ends it promptly with CancelledTransferError, leaves no partial
    file in the layout, and closes every connection."""
    big = os.urandom(1024 * 1024)
    blobs = await push_image(registry, repo, [big, os.urandom(1024)])
    slow = blobs[1]
    proxy.add("GET", blob_path(slow), Fault(throttle=128 * 1024))  # eight seconds
    out = tmp_path / "out"
    # The copy itself is the task (not wrapped in wait_for, which would answer a cancel with
    # CancelledError whatever the copy raised).
    task = asyncio.create_task(
        ociflow.copy(f"docker://{proxy.address}/{repo}:1", f"oci:{out}:1", options=options())
    )
    for _ in range(400):
        if any(e.sent for e in proxy.entries("GET", blob_path(slow))):
            break
        await asyncio.sleep(0.025)
    else:
        raise AssertionError("the slow blob never started")
    task.cancel()
    with pytest.raises(CancelledTransferError, match="interrupted"):
        await asyncio.wait_for(task, 5)
    assert_nothing_partial(out)
    await until_ended(proxy.journal)
    runner = proxy._runner
    assert runner is not None and runner.server is not None
    for _ in range(200):  # the server notices closed sockets a moment later
        if not runner.server.connections:
            break
        await asyncio.sleep(0.025)
    assert runner.server.connections == []
    (entry,) = proxy.entries("GET", blob_path(slow))
    assert entry.sent < len(big)


# -- the CLI flags -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "flags", "needle", "requests"),
    [
        (Fault(status=503), ["--retries", "1"], "gave up after 2 attempts", 2),
        (Fault(status=429, headers={"Retry-After": "30"}), ["--retry-max-wait", "5"],
         "retry after 30 s, more than --retry-max-wait 5 s", 1),
    ],
)
async def test_cli_retry_flags(
    registry: RegistryServer, repo: str, proxy: FaultProxy, tmp_path: Path,
    fault: Fault, flags: list[str], needle: str, requests: int,
) -> None:
    blobs = await push_image(registry, repo, [os.urandom(2048)])
    target = blobs[1]
    proxy.add("GET", blob_path(target), fault)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ociflow", "copy", "--plain-http", "--stall-timeout", "10", *flags,
        f"docker://{proxy.address}/{repo}:1", f"oci:{tmp_path / 'out'}:1",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), GUARD)
    lines = stderr.decode().strip().splitlines()
    assert process.returncode == 1 and stdout == b""
    assert len(lines) == 1 and lines[0].startswith("ociflow: error: "), lines
    assert needle in lines[0] and str(target.digest) in lines[0]
    assert proxy.count("GET", blob_path(target)) == requests
