"""RegistryTarget against the real distribution registry (and small fakes for what it cannot show).

Fakes: a registry that lies in ``Docker-Content-Digest`` (U6), one that sends blob bodies of the
wrong length without ``Content-Length`` (P7), and a TLS server with an untrusted certificate
(T1). A recording TCP proxy shows which connections began with a TLS handshake.
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import aiohttp
import pytest
import trustme
from aiohttp import web

from ociflow import mediatypes
from ociflow.descriptor import Descriptor
from ociflow.digest import Digest
from ociflow.errors import (
    DigestMismatchError,
    InvalidManifestError,
    NotFoundError,
    TransportError,
)
from ociflow.http.retry import NO_RETRY
from ociflow.http.transport import HttpOptions, Session
from ociflow.manifest import MAX_MANIFEST_SIZE
from ociflow.streams import verified
from ociflow.target import CHUNK_SIZE, Destination, Opener, Source, open_destination, open_source
from ociflow.targets.registry import RegistryTarget
from tests.registry_server import RegistryServer, free_port
from tests.test_http import serve

pytestmark = pytest.mark.integration


# -- helpers ----------------------------------------------------------------------------


@pytest.fixture()
async def session() -> AsyncIterator[Session]:
    async with Session() as s:
        yield s


def target(session: Session, ref: str, options: HttpOptions | None = None) -> RegistryTarget:
    dst = open_destination(ref, session, options)
    assert isinstance(dst, RegistryTarget)
    return dst


def describe(data: bytes, media_type: str = mediatypes.OCI_LAYER_GZIP) -> Descriptor:
    return Descriptor(media_type, Digest.of(data), len(data))


async def chunks(data: bytes, size: int = CHUNK_SIZE) -> AsyncGenerator[bytes, None]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def opener(data: bytes, desc: Descriptor) -> Opener:
    return lambda: verified(chunks(data), desc)


def manifest_json(config: Descriptor, layers: list[Descriptor]) -> bytes:
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": mediatypes.OCI_MANIFEST,
            "config": config.to_json(),
            "layers": [layer.to_json() for layer in layers],
        }
    ).encode()


async def push_image(
    dst: Destination, layers: list[bytes], arch: str = "amd64"
) -> tuple[Descriptor, bytes, list[Descriptor]]:
    """Push config and layers, then the manifest by digest; returns its descriptor and bytes."""
    config = json.dumps({"architecture": arch, "os": "linux", "rootfs": {}}).encode()
    config_desc = describe(config, mediatypes.OCI_CONFIG)
    blobs = [(config_desc, config)] + [(describe(layer), layer) for layer in layers]
    for desc, data in blobs:
        await dst.push_blob(desc, opener(data, desc))
    data = manifest_json(config_desc, [d for d, _ in blobs[1:]])
    desc = describe(data, mediatypes.OCI_MANIFEST)
    await dst.push_manifest(desc, data)
    return desc, data, [d for d, _ in blobs]


async def collect(stream: AsyncIterator[bytes]) -> list[bytes]:
    return [chunk async for chunk in stream]


@asynccontextmanager
async def recording_proxy(backend_port: int) -> AsyncIterator[tuple[int, list[bytes]]]:
    """A TCP proxy to ``backend_port``; yields its port and the first byte of each connection
    (``0x16`` starts a TLS handshake; an HTTP request starts with a letter)."""
    first_bytes: list[bytes] = []

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        first = await reader.read(1)
        first_bytes.append(first)
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", backend_port)
        except OSError:
            writer.close()
            return
        up_writer.write(first)
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], first_bytes
    finally:
        server.close()


# -- pushing and pulling an image -------------------------------------------------------


async def test_push_then_resolve_by_tag_and_by_digest(
    registry: RegistryServer, repo: str, session: Session
) -> None:
    dst = target(session, f"{registry.address}/{repo}:1.0")
    desc, data, _ = await push_image(dst, [b"layer one", b"layer two"])
    await dst.push_root(desc, data, "1.0")

    by_tag = open_source(f"{registry.address}/{repo}:1.0", session)
    assert isinstance(by_tag, Source)
    resolved = await by_tag.resolve()
    assert (resolved.media_type, resolved.digest, resolved.size) == (
        mediatypes.OCI_MANIFEST, desc.digest, len(data),
    )
    assert await by_tag.fetch_manifest(resolved) == data

    by_digest = open_source(f"{registry.address}/{repo}@{desc.digest}", session)
    assert await by_digest.resolve() == resolved
    assert await by_digest.fetch_manifest(resolved) == data


async def test_fetch_blob_round_trip_in_full_chunks(
    registry: RegistryServer, repo: str, session: Session
) -> None:
    dst = target(session, f"{registry.address}/{repo}:1.0")
    data = os.urandom(3 * CHUNK_SIZE + 12345)
    desc = describe(data)
    await dst.push_blob(desc, opener(data, desc))
    got = await collect(open_source(f"{registry.address}/{repo}:1.0", session).fetch_blob(desc))
    assert b"".join(got) == data
    assert [len(c) for c in got] == [CHUNK_SIZE] * 3 + [12345]


async def test_zero_byte_blob(registry: RegistryServer, repo: str, session: Session) -> None:
    dst = target(session, f"{registry.address}/{repo}:1.0")
    desc = describe(b"")
    assert not await dst.exists(desc)
    await dst.push_blob(desc, opener(b"", desc))
    assert await dst.exists(desc)
    assert await collect(dst.fetch_blob(desc)) == []


async def test_exists_for_blobs_and_manifests(
    registry: RegistryServer, repo: str, session: Session
) -> None:
    dst = target(session, f"{registry.address}/{repo}:1.0")
    desc, _, blobs = await push_image(dst, [b"some layer"])
    assert await dst.exists(desc)
    assert all([await dst.exists(b) for b in blobs])
    assert not await dst.exists(describe(b"never pushed"))
    assert not await dst.exists(describe(b"{}", mediatypes.OCI_MANIFEST))
    # A blob whose stored length differs from the descriptor is not "the same blob".
    layer = blobs[1]
    assert not await dst.exists(Descriptor(layer.media_type, layer.digest, layer.size + 1))


async def test_index_of_two_manifests(
    registry: RegistryServer, repo: str, session: Session
) -> None:
    dst = target(session, f"{registry.address}/{repo}:multi")
    amd, amd_data, _ = await push_image(dst, [b"amd64 layer"], "amd64")
    arm, arm_data, _ = await push_image(dst, [b"arm64 layer"], "arm64")
    index = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": mediatypes.OCI_INDEX,
            "manifests": [
                {**amd.to_json(), "platform": {"os": "linux", "architecture": "amd64"}},
                {**arm.to_json(), "platform": {"os": "linux", "architecture": "arm64"}},
            ],
        }
    ).encode()
    index_desc = describe(index, mediatypes.OCI_INDEX)
    await dst.push_root(index_desc, index, "multi")

    src = open_source(f"{registry.address}/{repo}:multi", session)
    resolved = await src.resolve()
    assert resolved == index_desc
    assert await src.fetch_manifest(resolved) == index
    assert await src.fetch_manifest(amd) == amd_data
    assert await src.fetch_manifest(arm) == arm_data


async def test_resolve_keeps_the_root_bytes(
    registry: RegistryServer, repo: str, session: Session
) -> None:
    dst = target(session, f"{registry.address}/{repo}:1.0")
    desc, data, _ = await push_image(dst, [b"x"])
    await dst.push_root(desc, data, "1.0")
    src = open_source(f"{registry.address}/{repo}:1.0", session)
    resolved = await src.resolve()
    async with aiohttp.ClientSession() as raw:
        url = f"{registry.url}/v2/{repo}/manifests/{desc.digest}"
        async with raw.delete(url) as response:
            assert response.status == 202
    # Gone from the registry, yet the resolved root is served from what resolve() read.
    assert await src.fetch_manifest(resolved) == data
    with pytest.raises(NotFoundError):
        await open_source(f"{registry.address}/{repo}@{desc.digest}", session).resolve()


async def test_fetch_manifest_checks_the_descriptor(
    registry: RegistryServer, repo: str, session: Session
) -> None:
    dst = target(session, f"{registry.address}/{repo}:1.0")
    desc, _, _ = await push_image(dst, [b"x"])
    src = open_source(f"{registry.address}/{repo}:1.0", session)
    wrong_size = Descriptor(desc.media_type, desc.digest, desc.size - 1)
    with pytest.raises(DigestMismatchError):
        await src.fetch_manifest(wrong_size)
    with pytest.raises(InvalidManifestError):
        await src.fetch_manifest(Descriptor(desc.media_type, desc.digest, MAX_MANIFEST_SIZE + 1))


# -- mounts -----------------------------------------------------------------------------


async def test_mount_between_repositories_of_one_registry(
    registry: RegistryServer, registry2: RegistryServer, repo: str, session: Session
) -> None:
    source = target(session, f"{registry.address}/{repo}/src:1.0")
    data = os.urandom(2048)
    desc = describe(data)
    await source.push_blob(desc, opener(data, desc))

    same_repo = target(session, f"{registry.address}/{repo}/src:2.0")
    assert not await same_repo.mount(desc, source)

    elsewhere = target(session, f"{registry2.address}/{repo}/dst:1.0")
    assert not await elsewhere.mount(desc, source)
    assert not await elsewhere.exists(desc)

    dst = target(session, f"{registry.address}/{repo}/dst:1.0")
    assert dst.client is source.client
    assert not await dst.exists(desc)
    assert await dst.mount(desc, source)
    assert await dst.exists(desc)
    assert b"".join(await collect(dst.fetch_blob(desc))) == data


async def test_mount_of_an_unknown_blob_falls_back(
    registry: RegistryServer, repo: str, session: Session
) -> None:
    source = target(session, f"{registry.address}/{repo}/src:1.0")
    dst = target(session, f"{registry.address}/{repo}/dst:1.0")
    desc = describe(b"nowhere")
    assert not await dst.mount(desc, source)  # 202: the opened session is cancelled
    await dst.push_blob(desc, opener(b"nowhere", desc))
    assert await dst.exists(desc)


# -- errors -----------------------------------------------------------------------------


async def test_missing_tag_and_blob_are_not_found(
    registry: RegistryServer, repo: str, session: Session
) -> None:
    src = open_source(f"{registry.address}/{repo}:missing", session)
    with pytest.raises(NotFoundError) as info:
        await src.resolve()
    assert str(info.value) == f"{registry.address}/{repo}:missing: manifest not found"
    with pytest.raises(NotFoundError, match="blob not found"):
        await collect(src.fetch_blob(describe(b"absent")))


@pytest.mark.parametrize("fault", ["wrong-digest", "short"])
async def test_failed_stream_commits_nothing(
    registry: RegistryServer, repo: str, session: Session, fault: str
) -> None:
    dst = target(session, f"{registry.address}/{repo}:1.0")
    good = os.urandom(2 * CHUNK_SIZE + 100)
    desc = describe(good)
    bad = good[:-1] + bytes([good[-1] ^ 1]) if fault == "wrong-digest" else good[:-100]
    with pytest.raises(DigestMismatchError):
        await dst.push_blob(desc, opener(bad, desc))
    assert not await dst.exists(desc)
    # The session and its connections are still usable afterwards.
    await dst.push_blob(desc, opener(good, desc))
    assert await dst.exists(desc)


async def test_fetch_blob_refuses_a_length_other_than_the_descriptor(
    registry: RegistryServer, repo: str, session: Session
) -> None:
    dst = target(session, f"{registry.address}/{repo}:1.0")
    data = b"0123456789" * 100
    desc = describe(data)
    await dst.push_blob(desc, opener(data, desc))
    for size in (desc.size - 1, desc.size + 1, 10 * 2**30):
        with pytest.raises(DigestMismatchError, match="announces"):
            await collect(dst.fetch_blob(Descriptor(desc.media_type, desc.digest, size)))


async def test_fetch_blob_without_content_length_reads_exactly_size() -> None:
    payload = b"a" * 5000
    desc = describe(payload)

    def blob_handler(body: bytes) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handler(request: web.Request) -> web.StreamResponse:
            response = web.StreamResponse()
            response.enable_chunked_encoding()  # no Content-Length to check up front
            await response.prepare(request)
            await response.write(body)
            return response

        return handler

    app = web.Application()
    app.router.add_get(f"/v2/long/blobs/{desc.digest}", blob_handler(payload + b"trailing"))
    app.router.add_get(f"/v2/short/blobs/{desc.digest}", blob_handler(payload[:-1]))
    app.router.add_get(f"/v2/exact/blobs/{desc.digest}", blob_handler(payload))
    options = HttpOptions(plain_http=True)
    async with serve(app) as port, Session() as session:
        with pytest.raises(DigestMismatchError, match="more than"):
            await collect(target(session, f"127.0.0.1:{port}/long", options).fetch_blob(desc))
        with pytest.raises(DigestMismatchError, match="ended after 4999 of 5000"):
            await collect(target(session, f"127.0.0.1:{port}/short", options).fetch_blob(desc))
        exact = target(session, f"127.0.0.1:{port}/exact", options)
        assert b"".join(await collect(exact.fetch_blob(desc))) == payload


async def test_resolve_verifies_digest_and_caps_size() -> None:
    manifest = manifest_json(describe(b"{}", mediatypes.OCI_CONFIG), [])
    other = Digest.of(b"what was asked for")

    async def lying(request: web.Request) -> web.Response:
        return web.Response(body=manifest, content_type=mediatypes.OCI_MANIFEST)

    async def huge_announced(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": mediatypes.OCI_MANIFEST})
        response.content_length = 10 * 2**30
        await response.prepare(request)
        await response.write(b"{")
        return response

    async def huge_streamed(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": mediatypes.OCI_MANIFEST})
        response.enable_chunked_encoding()
        await response.prepare(request)
        for _ in range(MAX_MANIFEST_SIZE // 65536 + 1):
            await response.write(b" " * 65536)
        return response

    app = web.Application()
    app.router.add_get(f"/v2/app/manifests/{other}", lying)
    app.router.add_get("/v2/announced/manifests/1.0", huge_announced)
    app.router.add_get("/v2/streamed/manifests/1.0", huge_streamed)
    # A short stall timeout: should the cap fail, the test fails fast instead of waiting.
    options = HttpOptions(plain_http=True, stall_timeout=5)
    async with serve(app) as port, Session() as session:
        with pytest.raises(DigestMismatchError, match="hashes to"):
            await target(session, f"127.0.0.1:{port}/app@{other}", options).resolve()
        with pytest.raises(InvalidManifestError, match="announces"):
            await target(session, f"127.0.0.1:{port}/announced:1.0", options).resolve()
        with pytest.raises(InvalidManifestError, match="larger than"):
            await target(session, f"127.0.0.1:{port}/streamed:1.0", options).resolve()


async def test_pushed_manifest_is_stored_under_its_digest(
    registry: RegistryServer, repo: str, session: Session
) -> None:
    dst = target(session, f"{registry.address}/{repo}:1.0")
    desc, data, _ = await push_image(dst, [b"layer"])
    await dst.push_root(desc, data, "1.0")
    headers = {"Accept": mediatypes.MANIFEST_ACCEPT}
    url = f"{registry.url}/v2/{repo}/manifests/1.0"
    async with aiohttp.ClientSession() as raw, raw.get(url, headers=headers) as r:
        assert r.headers["Docker-Content-Digest"] == desc.digest
        assert r.headers["Content-Type"] == mediatypes.OCI_MANIFEST
        assert await r.read() == data


async def test_docker_content_digest_mismatch_fails_and_location_is_kept() -> None:
    wrong = Digest.of(b"something else")
    put_queries: list[str] = []

    async def start(request: web.Request) -> web.Response:
        # Relative, with an opaque state that must come back byte for byte.
        return web.Response(status=202, headers={"Location": "/upload/1?_state=a%2Bb%3D%3D"})

    async def put_blob(request: web.Request) -> web.Response:
        put_queries.append(request.query_string and request.raw_path.partition("?")[2])
        await request.read()
        return web.Response(status=201, headers={"Docker-Content-Digest": wrong})

    async def put_manifest(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=201, headers={"Docker-Content-Digest": wrong})

    app = web.Application()
    app.router.add_post("/v2/app/blobs/uploads/", start)
    app.router.add_put("/upload/1", put_blob)
    app.router.add_put("/v2/app/manifests/{ref}", put_manifest)
    async with serve(app) as port, Session() as session:
        dst = target(session, f"127.0.0.1:{port}/app:1.0", HttpOptions(plain_http=True))
        data = b"blob content"
        desc = describe(data)
        with pytest.raises(DigestMismatchError, match="registry stored"):
            await dst.push_blob(desc, opener(data, desc))
        manifest = manifest_json(desc, [])
        with pytest.raises(DigestMismatchError, match="registry stored"):
            await dst.push_root(describe(manifest, mediatypes.OCI_MANIFEST), manifest, "1.0")
    assert put_queries == [f"_state=a%2Bb%3D%3D&digest={desc.digest.replace(':', '%3A')}"]


async def test_oversize_manifest_is_refused_without_a_request(session: Session) -> None:
    # Nothing listens on this port: any request would end in a TransportError instead.
    dst = target(session, f"127.0.0.1:{free_port()}/app:1.0")
    data = b" " * (MAX_MANIFEST_SIZE + 1)
    desc = describe(data, mediatypes.OCI_MANIFEST)
    with pytest.raises(InvalidManifestError, match="exceeds"):
        await dst.push_manifest(desc, data)
    with pytest.raises(InvalidManifestError, match="exceeds"):
        await dst.push_root(desc, data, "1.0")
    assert dst.client.scheme is None


async def test_refused_connection_names_the_reference(session: Session) -> None:
    ref = f"127.0.0.1:{free_port()}/app:1.0"
    with pytest.raises(TransportError) as info:
        await open_source(ref, session, HttpOptions(retry=NO_RETRY)).resolve()
    expected = f"{ref}: fetching manifest: cannot connect to the registry (connection refused)"
    assert str(info.value) == expected


# -- scheme selection -------------------------------------------------------------------


async def test_loopback_plain_http_registry_falls_back_once(
    registry: RegistryServer, repo: str, session: Session
) -> None:
    async with recording_proxy(registry.port) as (port, first_bytes):
        dst = target(session, f"127.0.0.1:{port}/{repo}:1.0")
        desc, data, _ = await push_image(dst, [b"layer"])
        await dst.push_root(desc, data, "1.0")
        assert await open_source(f"127.0.0.1:{port}/{repo}:1.0", session).resolve() == desc
        assert dst.client.scheme == "http"
    # One TLS attempt (the probe), then plain HTTP only.
    assert first_bytes[0] == b"\x16"
    assert first_bytes[1:] and all(b != b"\x16" for b in first_bytes[1:])


async def test_plain_http_option_skips_the_probe(
    registry: RegistryServer, repo: str, session: Session
) -> None:
    async with recording_proxy(registry.port) as (port, first_bytes):
        dst = target(session, f"127.0.0.1:{port}/{repo}:1.0", HttpOptions(plain_http=True))
        assert not await dst.exists(describe(b"x"))
    assert first_bytes and b"\x16" not in first_bytes


async def test_no_plain_http_fallback_on_an_untrusted_certificate() -> None:
    ca = trustme.CA()
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(tls)
    manifest = manifest_json(describe(b"{}", mediatypes.OCI_CONFIG), [])
    handled: list[str] = []

    async def get_manifest(request: web.Request) -> web.Response:
        handled.append(request.path)
        # A generic Content-Type: the document's own mediaType names the kind.
        return web.Response(body=manifest, content_type="application/json")

    async def ping(request: web.Request) -> web.Response:
        return web.json_response({})

    app = web.Application()
    app.router.add_get("/v2/", ping)
    app.router.add_get("/v2/app/manifests/1.0", get_manifest)
    async with serve(app, tls) as tls_port, recording_proxy(tls_port) as (port, first_bytes):
        async with Session() as session:
            with pytest.raises(TransportError, match="certificate") as info:
                await open_source(f"127.0.0.1:{port}/app:1.0", session).resolve()
            assert str(info.value).startswith(f"127.0.0.1:{port}/app:1.0: ")
        assert first_bytes and all(b == b"\x16" for b in first_bytes)
        assert handled == []

        async with Session(HttpOptions(insecure=True)) as session:
            src = open_source(f"127.0.0.1:{port}/app:1.0", session)
            resolved = await src.resolve()
            assert isinstance(src, RegistryTarget) and src.client.scheme == "https"
        assert resolved == describe(manifest, mediatypes.OCI_MANIFEST)
        assert all(b == b"\x16" for b in first_bytes)
