"""Smoke tests of ``tests/auth_servers.py``: the token dance by hand with plain aiohttp.

They check that the real registry accepts what the token server issues (and refuses what it
should), so that ociflow's auth tests stand on a server that behaves like the real thing.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import jwt
import pytest

from tests.auth_servers import (
    SERVICE,
    TokenPolicy,
    TokenServer,
    start_htpasswd_registry,
)
from tests.conftest import require_binary
from tests.registry_server import RegistryServer

pytestmark = pytest.mark.integration

USERS = {"alice": "wonder land", "reader": "r3ad"}
POLICY = TokenPolicy(users=USERS, grants={"reader": {"*": {"pull"}}})


@pytest.fixture()
def servers(
    token_servers: tuple[RegistryServer, TokenServer],
) -> tuple[RegistryServer, TokenServer]:
    return token_servers


@pytest.fixture()
def registry_url(servers: tuple[RegistryServer, TokenServer]) -> str:
    return servers[0].url


@pytest.fixture()
def tokens(servers: tuple[RegistryServer, TokenServer]) -> TokenServer:
    """The shared token server, with the module's policy, no faults and an empty journal."""
    servers[1].reset(POLICY)
    return servers[1]


@pytest.fixture(scope="module")
def htpasswd_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    require_binary("docker-registry")
    server = start_htpasswd_registry(tmp_path_factory.mktemp("htpasswd"), {"bob": "b0b:pw"})
    yield server
    server.stop()


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def challenge(header: str) -> tuple[str, dict[str, str]]:
    """Scheme and parameters of a one-challenge ``WWW-Authenticate`` value (test-only parser)."""
    scheme, _, rest = header.partition(" ")
    return scheme, dict(re.findall(r'(\w+)="([^"]*)"', rest))


async def fetch_token(
    session: aiohttp.ClientSession, realm: str, scopes: list[str], auth: str | None
) -> tuple[int, dict[str, Any]]:
    params = [("service", SERVICE)] + [("scope", s) for s in scopes]
    headers = {"Authorization": auth} if auth else {}
    async with session.get(realm, params=params, headers=headers) as response:
        return response.status, await response.json()


async def push_blob(
    session: aiohttp.ClientSession, registry_url: str, repo: str, auth: str, data: bytes
) -> tuple[int, str]:
    """POST then PUT a blob monolithically; the status of the first refused step, or 201."""
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    headers = {"Authorization": auth}
    async with session.post(f"{registry_url}/v2/{repo}/blobs/uploads/", headers=headers) as start:
        if start.status != 202:
            return start.status, start.headers.get("WWW-Authenticate", "")
        location = start.headers["Location"]
    url = location if location.startswith("http") else registry_url + location
    async with session.put(url, params={"digest": digest}, data=data, headers=headers) as done:
        return done.status, digest


async def test_token_dance_push_and_pull(registry_url: str, tokens: TokenServer) -> None:
    repo = "smoke/dance"
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{registry_url}/v2/") as ping:
            assert ping.status == 401
            scheme, params = challenge(ping.headers["WWW-Authenticate"])
        assert scheme == "Bearer"
        assert params == {"realm": tokens.realm, "service": SERVICE}

        status, body = await fetch_token(
            session,
            params["realm"],
            [f"repository:{repo}:pull,push"],
            basic("alice", USERS["alice"]),
        )
        assert status == 200
        assert body["token"] == body["access_token"]
        assert body["expires_in"] == 300
        assert body["issued_at"].endswith("Z")
        bearer = "Bearer " + body["token"]

        data = b"hello through a token\n"
        status_put, digest = await push_blob(session, registry_url, repo, bearer, data)
        assert status_put == 201
        blob_url = f"{registry_url}/v2/{repo}/blobs/{digest}"
        async with session.get(blob_url, headers={"Authorization": bearer}) as got:
            assert got.status == 200
            assert await got.read() == data
        async with session.get(blob_url) as anonymous:
            assert anonymous.status == 401

    [entry] = tokens.journal()
    assert (entry.method, entry.user, entry.grant_type, entry.status) == ("GET", "alice", None, 200)
    assert entry.scopes == [f"repository:{repo}:pull,push"]
    assert entry.granted == [f"repository:{repo}:pull,push"]
    tokens.clear_journal()
    assert tokens.journal() == []


async def test_pull_only_token_is_refused_for_push(registry_url: str, tokens: TokenServer) -> None:
    repo = "smoke/readonly"
    async with aiohttp.ClientSession() as session:
        status, body = await fetch_token(
            session,
            tokens.realm,
            [f"repository:{repo}:pull,push"],
            basic("reader", USERS["reader"]),
        )
        assert status == 200  # the intersection is granted, not an error
        claims = jwt.decode(body["token"], options={"verify_signature": False})
        assert claims["access"] == [{"type": "repository", "name": repo, "actions": ["pull"]}]
        bearer = "Bearer " + body["token"]

        refused, www = await push_blob(session, registry_url, repo, bearer, b"nope")
        assert refused in (401, 403)
        assert 'error="insufficient_scope"' in www
        async with session.get(
            f"{registry_url}/v2/{repo}/tags/list", headers={"Authorization": bearer}
        ) as listed:
            assert listed.status == 404  # authorised: the repository just does not exist
    assert tokens.journal()[0].granted == [f"repository:{repo}:pull"]


async def test_short_ttl_token_expires_while_client_believes_it_valid(
    registry_url: str, tokens: TokenServer
) -> None:
    repo = "smoke/ttl"
    tokens.update(ttl=1.5, expires_in=300)
    url = f"{registry_url}/v2/{repo}/tags/list"
    async with aiohttp.ClientSession() as session:
        status, body = await fetch_token(
            session, tokens.realm, [f"repository:{repo}:pull"], basic("alice", USERS["alice"])
        )
        assert status == 200
        assert body["expires_in"] == 300
        headers = {"Authorization": "Bearer " + body["token"]}
        async with session.get(url, headers=headers) as first:
            assert first.status == 404  # accepted (no such repository yet)

        # Poll: the registry must start refusing within a few seconds (bounded).
        deadline = time.monotonic() + 10
        while True:
            async with session.get(url, headers=headers) as later:
                if later.status == 401:
                    assert 'error="invalid_token"' in later.headers["WWW-Authenticate"]
                    break
                assert later.status == 404
            assert time.monotonic() < deadline, "short-lived token was never refused"
            await asyncio.sleep(0.1)


async def test_wrong_password_and_anonymous(registry_url: str, tokens: TokenServer) -> None:
    scope = ["repository:smoke/anon:pull,push"]
    issued = tokens.tokens_issued
    async with aiohttp.ClientSession() as session:
        status, _ = await fetch_token(session, tokens.realm, scope, basic("alice", "wrong"))
        assert status == 401
        status, _ = await fetch_token(session, tokens.realm, scope, None)
        assert status == 401  # anonymous refused by default
        assert tokens.tokens_issued == issued

        tokens.update(anonymous_actions={"pull"})
        status, body = await fetch_token(session, tokens.realm, scope, None)
        assert status == 200
        async with session.get(
            f"{registry_url}/v2/smoke/anon/tags/list",
            headers={"Authorization": "Bearer " + body["token"]},
        ) as listed:
            assert listed.status == 404
    assert [(e.user, e.status, e.granted) for e in tokens.journal()] == [
        ("alice", 401, []),
        (None, 401, []),
        (None, 200, ["repository:smoke/anon:pull"]),
    ]
    assert tokens.tokens_issued == issued + 1


async def test_oauth_post_password_and_refresh(registry_url: str, tokens: TokenServer) -> None:
    repo = "smoke/oauth"
    form = {
        "grant_type": "password",
        "username": "alice",
        "password": USERS["alice"],
        "service": SERVICE,
        "client_id": "ociflow-tests",
        "scope": f"repository:{repo}:pull repository:other/x:pull",
        "access_type": "offline",
    }
    async with aiohttp.ClientSession() as session:
        async with session.post(tokens.realm, data=form) as first:
            assert first.status == 200
            body = await first.json()
        assert body["scope"] == f"repository:{repo}:pull repository:other/x:pull"
        refresh = body["refresh_token"]

        refresh_form = {
            "grant_type": "refresh_token",
            "refresh_token": refresh,
            "service": SERVICE,
            "client_id": "ociflow-tests",
            "scope": f"repository:{repo}:pull",
        }
        async with session.post(tokens.realm, data=refresh_form) as second:
            assert second.status == 200
            renewed = await second.json()
        assert "refresh_token" not in renewed
        async with session.get(
            f"{registry_url}/v2/{repo}/tags/list",
            headers={"Authorization": "Bearer " + renewed["access_token"]},
        ) as listed:
            assert listed.status == 404

        async with session.post(tokens.realm, data={**refresh_form, "refresh_token": "x"}) as bad:
            assert bad.status == 401
        no_client = {k: v for k, v in refresh_form.items() if k != "client_id"}
        async with session.post(tokens.realm, data=no_client) as missing:
            assert missing.status == 400
    journal = tokens.journal()
    assert [(e.method, e.grant_type, e.user, e.status) for e in journal] == [
        ("POST", "password", "alice", 200),
        ("POST", "refresh_token", "alice", 200),
        ("POST", "refresh_token", None, 401),
        ("POST", "refresh_token", "alice", 400),
    ]
    assert journal[0].offline and journal[0].client_id == "ociflow-tests"
    assert journal[0].scopes == [f"repository:{repo}:pull", "repository:other/x:pull"]


async def test_faults_and_response_shapes(tokens: TokenServer) -> None:
    scope = ["repository:smoke/faults:pull"]
    auth = basic("alice", USERS["alice"])
    tokens.fail_next(2, 503, body=b"busy", headers={"Retry-After": "0"})
    async with aiohttp.ClientSession() as session:
        for _ in range(2):
            async with session.get(tokens.realm, params={"service": SERVICE}) as failed:
                assert failed.status == 503
                assert failed.headers["Retry-After"] == "0"

        tokens.update(fields="access_token", include_expires_in=False, include_issued_at=False)
        status, body = await fetch_token(session, tokens.realm, scope, auth)
        assert status == 200
        assert set(body) == {"access_token"}

        tokens.update(fields="token", include_expires_in=True, include_issued_at=True, expires_in=7)
        status, body = await fetch_token(session, tokens.realm, scope, auth)
        assert set(body) == {"token", "expires_in", "issued_at"}
        assert body["expires_in"] == 7
    assert [e.status for e in tokens.journal()] == [503, 503, 200, 200]


async def test_registry_accepts_kid_header(registry_url: str, tokens: TokenServer) -> None:
    tokens.update(key_header="kid")
    token = tokens.mint(["repository:smoke/kid:pull"], user="alice")
    header = jwt.get_unverified_header(token)
    assert "x5c" not in header
    assert header["kid"] == tokens.signing_key.key_id
    async with aiohttp.ClientSession() as session:
        async with session.get(
            f"{registry_url}/v2/smoke/kid/tags/list", headers={"Authorization": "Bearer " + token}
        ) as listed:
            assert listed.status == 404
        # A token for another repository does not open this one.
        other = tokens.mint(["repository:smoke/other:pull"])
        async with session.get(
            f"{registry_url}/v2/smoke/kid/tags/list", headers={"Authorization": "Bearer " + other}
        ) as refused:
            assert refused.status == 401


async def test_htpasswd_registry_basic_auth(htpasswd_registry: RegistryServer) -> None:
    url = htpasswd_registry.url
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{url}/v2/") as ping:
            assert ping.status == 401
            scheme, params = challenge(ping.headers["WWW-Authenticate"])
        assert (scheme, params) == ("Basic", {"realm": "ociflow-test"})
        async with session.get(
            f"{url}/v2/", headers={"Authorization": basic("bob", "b0b:pw")}
        ) as ok:
            assert ok.status == 200
        async with session.get(f"{url}/v2/", headers={"Authorization": basic("bob", "b0b")}) as bad:
            assert bad.status == 401

        status, digest = await push_blob(
            session, url, "smoke/basic", basic("bob", "b0b:pw"), b"basic blob"
        )
        assert status == 201
        async with session.head(
            f"{url}/v2/smoke/basic/blobs/{digest}",
            headers={"Authorization": basic("bob", "b0b:pw")},
        ) as head:
            assert head.status == 200
