"""The HTTP stack: redaction, error mapping, redirect rules, transport error mapping.

In-process aiohttp servers stand in where the real registry cannot show the behaviour
(redirect chains, a second origin, endless error bodies, stalls, broken connections).
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import pytest
import trustme
from aiohttp import web
from aiohttp.test_utils import TestServer
from yarl import URL

from ociflow.errors import (
    AuthenticationError,
    NotFoundError,
    OciflowError,
    RegistryError,
    TooManyRequestsError,
    TransportError,
)
from ociflow.http.client import RegistryClient
from ociflow.http.errors import MAX_ERROR_BODY, error_for_status, parse_error_body
from ociflow.http.redact import redact_text, redact_url
from ociflow.http.retry import NO_RETRY
from ociflow.http.transport import HttpOptions, Session
from ociflow.reference import parse_docker_reference
from tests.registry_server import free_port

CONTEXT = "127.0.0.1:5000/app:1.0: fetching manifest"


@asynccontextmanager
async def serve(app: web.Application, tls: ssl.SSLContext | None = None) -> AsyncIterator[int]:
    """Run ``app`` on 127.0.0.1 (with TLS when ``tls`` is given); yields the port."""
    server = TestServer(app, host="127.0.0.1")
    await server.start_server(ssl=tls)
    try:
        assert server.port is not None
        yield server.port
    finally:
        await server.close()


def client_for(session: Session, port: int, **options: object) -> RegistryClient:
    # Transport behaviour is tested here without retries; tests/test_retry.py covers those.
    opts = HttpOptions(**{"plain_http": True, "retry": NO_RETRY, **options})  # type: ignore[arg-type]
    return session.registry(parse_docker_reference(f"127.0.0.1:{port}/test/app:1.0"), opts)


def echo_app(seen: list[dict[str, list[str]]]) -> web.Application:
    """``/echo`` records and returns the headers it received."""

    async def echo(request: web.Request) -> web.Response:
        headers = {k.lower(): request.headers.getall(k) for k in request.headers}
        seen.append(headers)
        return web.json_response(headers)

    app = web.Application()
    app.router.add_route("*", "/echo", echo)
    return app


# -- redaction --------------------------------------------------------------------------


def test_redact_url_drops_userinfo_fragment_and_query_values() -> None:
    url = "https://user:s3cret@Registry.example:5000/v2/x?X-Amz-Signature=abc123&_state=zz#frag"
    redacted = redact_url(url)
    assert redacted == (
        "https://registry.example:5000/v2/x?X-Amz-Signature=REDACTED&_state=REDACTED"
    )
    for secret in ("user", "s3cret", "abc123", "zz", "frag"):
        assert secret not in redacted


def test_redact_url_variants() -> None:
    plain = "https://r.example/v2/app/blobs/sha256:" + "a" * 64
    assert redact_url(plain) == plain
    assert redact_url(URL("http://[::1]:5000/v2/?sig=xyz")) == "http://[::1]:5000/v2/?sig=REDACTED"
    assert "tok" not in redact_url("https://h.example/p?tok")
    assert redact_url("http://h:99999999/x?sig=1") == "<unparsable URL>"


def test_redact_text_redacts_every_url() -> None:
    text = "blob moved to https://s3.example/b?X-Amz-Signature=abc and http://u:pw@h/x?sig=def."
    out = redact_text(text)
    assert "abc" not in out and "def" not in out and "pw" not in out
    assert "https://s3.example/b?X-Amz-Signature=REDACTED" in out


# -- error bodies and statuses ----------------------------------------------------------


def test_parse_error_body_oci_shape() -> None:
    body = json.dumps(
        {
            "errors": [
                {"code": "MANIFEST_UNKNOWN", "message": "manifest unknown", "detail": {"x": 1}},
                {"code": "NAME_UNKNOWN"},
                "not an object",
            ]
        }
    ).encode()
    assert parse_error_body(body) == (
        ("MANIFEST_UNKNOWN", "manifest unknown"),
        ("NAME_UNKNOWN", ""),
    )


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"<html>502 Bad Gateway</html>", ()),
        (b"\xff\xfe not utf-8", ()),
        (b'{"detail": "no errors list"}', ()),
        (b'{"errors": "not a list"}', ()),
        (b"[1, 2]", ()),
        (b'{"message": "toomanyrequests: limit"}', (("", "toomanyrequests: limit"),)),
        (b"[" * 100_000, ()),
    ],
)
def test_parse_error_body_is_lenient(body: bytes, expected: tuple[tuple[str, str], ...]) -> None:
    assert parse_error_body(body) == expected


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (404, NotFoundError),
        (401, AuthenticationError),
        (403, AuthenticationError),
        (429, TooManyRequestsError),
        (400, RegistryError),
        (500, RegistryError),
    ],
)
def test_error_for_status_maps_status(status: int, kind: type[OciflowError]) -> None:
    body = b'{"errors": [{"code": "DENIED", "message": "go away"}]}'
    error = error_for_status(status, body, CONTEXT)
    assert type(error) is kind
    assert str(error) == f"{CONTEXT}: {status} DENIED go away"
    if isinstance(error, RegistryError):
        assert error.status == status
        assert error.codes == ("DENIED",)


def test_error_for_status_without_codes() -> None:
    error = error_for_status(502, b"<html>bad gateway</html>", CONTEXT, reason="Bad Gateway",
                             content_type="text/html")
    assert str(error) == f"{CONTEXT}: 502 Bad Gateway"
    error = error_for_status(429, b"Too many requests, see https://x.example/?sig=SECRET\n",
                             CONTEXT, reason="Too Many Requests", content_type="text/plain")
    assert isinstance(error, TooManyRequestsError)
    assert "Too many requests" in str(error) and "SECRET" not in str(error)


def test_error_for_status_with_oversize_body_is_cut_and_lenient() -> None:
    # Valid JSON only as a whole: cut at the cap it no longer parses, and the status remains.
    body = json.dumps({"errors": [{"code": "BLOB_UNKNOWN", "message": "x" * 5_000_000}]})
    error = error_for_status(404, body.encode(), CONTEXT, reason="Not Found")
    assert str(error) == f"{CONTEXT}: 404 Not Found"


async def test_error_body_read_is_capped() -> None:
    written = 0
    done = asyncio.Event()

    async def endless(request: web.Request) -> web.StreamResponse:
        nonlocal written
        response = web.StreamResponse(status=500, headers={"Content-Type": "application/json"})
        await response.prepare(request)
        try:
            for _ in range(10_000):  # 640 MiB if the client read everything
                await response.write(b" " * 65536)
                written += 65536
        except Exception:
            pass
        finally:
            done.set()
        return response

    app = web.Application()
    app.router.add_get("/v2/test/app/manifests/1.0", endless)
    async with serve(app) as port, Session() as session:
        client = client_for(session, port)
        # The retry layer maps the error status, reading at most MAX_ERROR_BODY of the body.
        with pytest.raises(RegistryError) as info:
            await asyncio.wait_for(
                client.send("GET", "/v2/test/app/manifests/1.0", context=CONTEXT), 10
            )
        assert info.value.status == 500
        await asyncio.wait_for(done.wait(), 10)
    assert MAX_ERROR_BODY <= written < 64 * 1024 * 1024


# -- redirects --------------------------------------------------------------------------


async def test_redirects_are_followed_up_to_ten_hops() -> None:
    async def hop(request: web.Request) -> web.Response:
        n = int(request.match_info["n"])
        if n == 0:
            return web.Response(text="arrived")
        raise web.HTTPFound(f"/hop/{n - 1}")  # relative Location

    app = web.Application()
    app.router.add_get("/hop/{n}", hop)
    async with serve(app) as port, Session() as session:
        client = client_for(session, port)
        async with await client.send("GET", "/hop/10", context=CONTEXT) as response:
            assert response.status == 200
            assert await response.read(100) == b"arrived"
            assert response.url.path == "/hop/0"
        with pytest.raises(RegistryError, match="more than 10 redirects"):
            await client.send("GET", "/hop/11", context=CONTEXT)


async def test_authorization_dropped_on_origin_change_and_kept_on_same_origin() -> None:
    seen_a: list[dict[str, list[str]]] = []
    seen_b: list[dict[str, list[str]]] = []
    async with serve(echo_app(seen_b)) as port_b:
        app_a = echo_app(seen_a)

        async def to_b(request: web.Request) -> web.Response:
            # Same host, another port: another origin (reliability.md R6).
            raise web.HTTPTemporaryRedirect(f"http://127.0.0.1:{port_b}/echo")

        async def to_self(request: web.Request) -> web.Response:
            raise web.HTTPFound("/echo")

        app_a.router.add_get("/to-b", to_b)
        app_a.router.add_get("/to-self", to_self)
        app_a.router.add_post("/to-b", to_b)
        async with serve(app_a) as port_a, Session() as session:
            client = client_for(session, port_a)
            # Duplicate entries: every copy must go (aiohttp#13180, R5).
            auth = [("Authorization", "Bearer one"), ("Authorization", "Bearer two"),
                    ("Cookie", "c=1")]
            async with await client.send("GET", "/to-b", context=CONTEXT, headers=auth) as r:
                assert r.status == 200
            async with await client.send("GET", "/to-self", context=CONTEXT, headers=auth) as r:
                assert r.status == 200
            # Other methods are not followed: the 3xx goes back to the caller.
            async with await client.send("POST", "/to-b", context=CONTEXT, headers=auth) as r:
                assert r.status == 307
    assert len(seen_b) == 1
    assert "authorization" not in seen_b[0] and "cookie" not in seen_b[0]
    assert seen_a[0]["authorization"] == ["Bearer one", "Bearer two"]


@pytest.fixture(scope="module")
def tls() -> tuple[trustme.CA, ssl.SSLContext]:
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(server_context)
    return ca, server_context


async def test_redirect_from_https_to_http_is_refused(
    tls: tuple[trustme.CA, ssl.SSLContext],
) -> None:
    seen_plain: list[dict[str, list[str]]] = []
    async with serve(echo_app(seen_plain)) as plain_port:

        async def down(request: web.Request) -> web.Response:
            raise web.HTTPFound(f"http://127.0.0.1:{plain_port}/echo?sig=SECRET")

        app = web.Application()
        app.router.add_get("/down", down)
        async with serve(app, tls[1]) as port, Session() as session:
            # Not plain_http: the loopback probe finds TLS, and insecure skips verification.
            client = session.registry(
                parse_docker_reference(f"127.0.0.1:{port}/test/app"), HttpOptions(insecure=True)
            )
            with pytest.raises(RegistryError, match="downgrade") as info:
                await client.send("GET", "/down", context=CONTEXT)
            assert client.scheme == "https"
    assert "SECRET" not in str(info.value)
    assert seen_plain == []


# -- transport errors -------------------------------------------------------------------


async def test_connection_refused_is_a_transport_error() -> None:
    port = free_port()
    async with Session() as session:
        client = client_for(session, port)
        with pytest.raises(TransportError) as info:
            await client.send("GET", "/v2/", context=CONTEXT)
    assert str(info.value) == f"{CONTEXT}: cannot connect to the registry (connection refused)"
    assert not isinstance(info.value, aiohttp.ClientError)


async def test_stalled_body_is_a_transport_error() -> None:
    async def stall(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Length": "1000"})
        await response.prepare(request)
        await response.write(b"x" * 10)
        await asyncio.sleep(30)
        return response

    app = web.Application()
    app.router.add_get("/stall", stall)
    async with serve(app) as port, Session() as session:
        client = client_for(session, port, stall_timeout=0.2)
        async with await client.send("GET", "/stall", context=CONTEXT) as response:
            with pytest.raises(TransportError, match="stalled"):
                await response.read(1000)


async def test_connection_broken_mid_body_is_a_transport_error() -> None:
    async def broken(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Length": "100000"})
        await response.prepare(request)
        await response.write(b"x" * 10)
        assert request.transport is not None
        request.transport.close()
        return response

    app = web.Application()
    app.router.add_get("/broken", broken)
    async with serve(app) as port, Session() as session:
        client = client_for(session, port)
        async with await client.send("GET", "/broken", context=CONTEXT) as response:
            with pytest.raises(TransportError, match=CONTEXT):
                await response.read_exactly(100000)


# -- headers and the session ------------------------------------------------------------


async def test_user_agent_and_identity_encoding_are_sent() -> None:
    seen: list[dict[str, list[str]]] = []
    async with serve(echo_app(seen)) as port, Session() as session:
        client = client_for(session, port)
        async with await client.send("GET", "/echo", context=CONTEXT) as response:
            assert response.status == 200
        client = client_for(session, port, user_agent="custom/1")
        async with await client.send("GET", "/echo", context=CONTEXT) as response:
            assert response.status == 200
    assert seen[0]["user-agent"] == [HttpOptions().user_agent]
    assert HttpOptions().user_agent.startswith("ociflow/")
    assert seen[0]["accept-encoding"] == ["identity"]
    assert seen[1]["user-agent"] == ["custom/1"]


async def test_session_shares_one_client_per_registry_and_options() -> None:
    async with Session() as session:
        a = session.registry(parse_docker_reference("127.0.0.1:5000/one:1"))
        b = session.registry(parse_docker_reference("127.0.0.1:5000/two@sha256:" + "0" * 64))
        other_host = session.registry(parse_docker_reference("127.0.0.1:5001/one:1"))
        other_opts = session.registry(
            parse_docker_reference("127.0.0.1:5000/one:1"), HttpOptions(plain_http=True)
        )
        hub = session.registry(parse_docker_reference("library/alpine"))
        assert a is b
        assert other_host is not a and other_opts is not a
        assert hub.host == "registry-1.docker.io"
        assert a.scheme is None  # nothing sent yet
