"""The auth layer against real registries: distribution with token auth (and an in-test token
server, :mod:`tests.auth_servers`), and distribution with htpasswd Basic auth.

Acceptance IDs from reliability.md §4.3 (A1-A12), §4.2 (U13) and §4.9 (S1).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import subprocess
import sys
from collections.abc import AsyncGenerator, Iterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from multidict import CIMultiDict
from yarl import URL

import ociflow
from ociflow import mediatypes
from ociflow.descriptor import Descriptor
from ociflow.digest import Digest
from ociflow.errors import AuthenticationError, RegistryError
from ociflow.http.auth import Authenticator, _parse_token, realm_may_see_credentials
from ociflow.http.challenge import parse_challenges, parse_scopes, request_scopes
from ociflow.http.credentials import Credentials
from ociflow.http.message import Request, Response
from ociflow.http.options import HttpOptions
from ociflow.http.retry import RetryPolicy
from ociflow.http.transport import Session
from ociflow.streams import verified
from ociflow.target import open_destination, open_source
from ociflow.targets.blob_upload import resolve_location
from tests.auth_servers import (
    SERVICE,
    TokenPolicy,
    TokenServer,
    start_htpasswd_registry,
)
from tests.conftest import PASSWORDS, require_binary
from tests.fault_proxy import Fault, FaultProxy
from tests.layouts import tagged_manifest
from tests.registry_server import RegistryServer

ALICE = Credentials("alice", PASSWORDS["alice"])
BOB = Credentials("bob", PASSWORDS["bob"])
USERS = dict(PASSWORDS)
FAST = RetryPolicy(attempts=3, base_delay=0.05)


@pytest.fixture()
def tokens(token_servers: tuple[RegistryServer, TokenServer]) -> TokenServer:
    """The token server, with this module's policy: alice and bob may do anything, anonymous
    users may pull."""
    server = token_servers[1]
    server.reset(TokenPolicy(users=dict(USERS), anonymous_actions={"pull"}))
    return server


@pytest.fixture()
def token_reg(token_servers: tuple[RegistryServer, TokenServer]) -> RegistryServer:
    return token_servers[0]


@pytest.fixture(scope="module")
def basic_reg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    require_binary("docker-registry")
    server = start_htpasswd_registry(tmp_path_factory.mktemp("htpasswd-registry"), USERS)
    yield server
    server.stop()


def options(**more: object) -> HttpOptions:
    return HttpOptions(**{"retry": FAST, **more})  # type: ignore[arg-type]


def assert_no_secret(text: str, *secrets: str) -> None:
    for secret in secrets:
        assert secret not in text
    assert "eyJ" not in text  # the start of every JWT: no token reached the text


# -- token flow against the real registry ------------------------------------------------


async def test_push_and_pull_with_a_password_through_the_token_flow(
    token_reg: RegistryServer, tokens: TokenServer, sample_layout: Path, tmp_path: Path,
    repo: str, caplog: pytest.LogCaptureFixture,
) -> None:
    """A1: tokens are fetched with the user's credentials and reused across blobs; S1: neither
    the password nor a token shows in the debug log."""
    dst = f"docker://{token_reg.address}/{repo}:1.0"
    pushed = await ociflow.copy(f"oci:{sample_layout}:1.0", dst, options=options(),
                                dst_credentials=ALICE)
    assert pushed.blobs_copied >= 5
    push_requests = tokens.journal()
    # One token per set of scopes, not one per request: HEADs share the pull token, uploads
    # and manifests the pull+push token.
    assert 1 <= len(push_requests) <= 3
    assert all(e.user == "alice" and e.service == SERVICE and e.status == 200
               for e in push_requests)
    assert f"repository:{repo}:pull,push" in {s for e in push_requests for s in e.scopes}

    tokens.clear_journal()
    out = tmp_path / "out"
    pulled = await ociflow.copy(dst, f"oci:{out}:1.0", options=options(), src_credentials=ALICE)
    assert pulled.digest == pushed.digest
    assert tagged_manifest(out, "1.0") == tagged_manifest(sample_layout, "1.0")
    pull_requests = tokens.journal()
    assert len(pull_requests) == 1
    assert pull_requests[0].scopes == [f"repository:{repo}:pull"]
    assert pull_requests[0].user == "alice"
    assert_no_secret(caplog.text, ALICE.password)


async def test_anonymous_pull_works_and_anonymous_push_is_refused(
    token_reg: RegistryServer, tokens: TokenServer, sample_layout: Path, tmp_path: Path,
    repo: str,
) -> None:
    dst = f"docker://{token_reg.address}/{repo}:1.0"
    with pytest.raises(AuthenticationError) as info:
        await ociflow.copy(f"oci:{sample_layout}:1.0", dst, options=options())
    assert "401" in str(info.value) and repo in str(info.value)
    assert all(e.user is None for e in tokens.journal())

    await ociflow.copy(f"oci:{sample_layout}:1.0", dst, options=options(), dst_credentials=BOB)
    tokens.clear_journal()
    out = tmp_path / "out"
    await ociflow.copy(dst, f"oci:{out}:1.0", options=options())
    assert tagged_manifest(out, "1.0") == tagged_manifest(sample_layout, "1.0")
    assert [e.user for e in tokens.journal()] == [None]


async def test_wrong_password_is_one_clear_error_without_the_password(
    token_reg: RegistryServer, tokens: TokenServer, sample_layout: Path, repo: str,
) -> None:
    wrong = Credentials("alice", "not-her-password")
    with pytest.raises(AuthenticationError) as info:
        await ociflow.copy(f"oci:{sample_layout}:1.0", f"docker://{token_reg.address}/{repo}:1",
                           options=options(), dst_credentials=wrong)
    message = str(info.value)
    assert "token server" in message and "refused" in message and "'alice'" in message
    assert_no_secret(message + repr(info.value), wrong.password)
    # One refusal is the answer: the token server is not asked again and again.
    assert [e.status for e in tokens.journal()] == [401]


async def test_a_denied_scope_is_an_authentication_error(
    token_reg: RegistryServer, tokens: TokenServer, sample_layout: Path, repo: str,
) -> None:
    """The token server grants less than asked (token.md); the registry's second 401 is the
    answer, mapped to a clear error, after one token request per scope set."""
    tokens.update(grants={"bob": {"elsewhere/*": {"pull", "push"}}})
    with pytest.raises(AuthenticationError) as info:
        await ociflow.copy(f"oci:{sample_layout}:1.0", f"docker://{token_reg.address}/{repo}:1",
                           options=options(), dst_credentials=BOB)
    assert "401" in str(info.value)
    assert len(tokens.journal()) <= 3


async def test_token_response_shapes(
    token_reg: RegistryServer, tokens: TokenServer, sample_layout: Path, repo: str,
) -> None:
    """``access_token`` alone, and no ``expires_in`` (60 s assumed): both work."""
    tokens.update(fields="access_token", include_expires_in=False, include_issued_at=False)
    await ociflow.copy(f"oci:{sample_layout}:1.0", f"docker://{token_reg.address}/{repo}:1",
                       options=options(), dst_credentials=ALICE)


async def test_token_server_503_is_retried(
    token_reg: RegistryServer, tokens: TokenServer, sample_layout: Path, repo: str,
) -> None:
    tokens.fail_next(1, 503)
    await ociflow.copy(f"oci:{sample_layout}:1.0", f"docker://{token_reg.address}/{repo}:1",
                       options=options(), dst_credentials=ALICE)
    assert [e.status for e in tokens.journal()][:2] == [503, 200]


async def test_mount_asks_for_both_scopes_in_one_token(
    token_reg: RegistryServer, tokens: TokenServer, sample_layout: Path, repo: str,
) -> None:
    """A6: a cross-repository mount needs pull on the source and push on the destination."""
    first = f"docker://{token_reg.address}/{repo}/a:1.0"
    await ociflow.copy(f"oci:{sample_layout}:1.0", first, options=options(),
                       dst_credentials=ALICE)
    tokens.clear_journal()
    result = await ociflow.copy(first, f"docker://{token_reg.address}/{repo}/b:1.0",
                                options=options(), src_credentials=ALICE, dst_credentials=ALICE)
    assert result.blobs_mounted >= 5 and result.blobs_copied == 0
    scope_sets = [sorted(e.scopes) for e in tokens.journal()]
    assert sorted([f"repository:{repo}/a:pull", f"repository:{repo}/b:pull,push"]) in scope_sets


async def test_different_credentials_do_not_share_tokens(
    token_reg: RegistryServer, tokens: TokenServer, sample_layout: Path, repo: str,
) -> None:
    """A5: source and destination on one registry with different users: each side's tokens
    are fetched with its own credentials, and no mount mixes them."""
    first = f"docker://{token_reg.address}/{repo}/a:1.0"
    await ociflow.copy(f"oci:{sample_layout}:1.0", first, options=options(),
                       dst_credentials=ALICE)
    tokens.clear_journal()
    result = await ociflow.copy(first, f"docker://{token_reg.address}/{repo}/b:1.0",
                                options=options(), src_credentials=ALICE, dst_credentials=BOB)
    assert result.blobs_mounted == 0 and result.blobs_copied >= 5
    users_by_repo: dict[str, set[str | None]] = {}
    for entry in tokens.journal():
        for scope in entry.scopes:
            users_by_repo.setdefault(scope.split(":")[1], set()).add(entry.user)
    assert users_by_repo == {f"{repo}/a": {"alice"}, f"{repo}/b": {"bob"}}


# -- U13: a token that expires in the middle of a chunked upload ---------------------------


async def _one_chunk(data: bytes) -> AsyncGenerator[bytes, None]:
    yield data


async def test_token_expiring_mid_upload_is_renewed_and_the_upload_continues(
    token_reg: RegistryServer, tokens: TokenServer, repo: str,
) -> None:
    """U13: the registry accepts each token for ~1 s while the token server says 300 s. The
    third PATCH is held back 2.5 s by the proxy, so it reaches the registry with an expired
    token: 401. The upload asks the registry where it stands (with a fresh token) and goes on
    from there: no byte before the failed chunk is sent twice."""
    tokens.update(ttl=1.0, expires_in=300)
    chunk = 1024 * 1024
    data = os.urandom(5 * chunk + 1234)
    desc = Descriptor(mediatypes.OCI_LAYER_GZIP, Digest.of(data), len(data))
    opts = options(credentials=ALICE, chunk_size=chunk, chunked_threshold=chunk)
    async with FaultProxy(token_reg.url) as proxy:
        uploads = r"/blobs/uploads/."
        proxy.add("PATCH", uploads, Fault(delay=2.5), attempts={3})
        async with Session(opts) as session:
            dst = open_destination(f"docker://{proxy.address}/{repo}:1", session, opts)
            await asyncio.wait_for(
                dst.push_blob(desc, lambda: verified(_one_chunk(data), desc)), 60
            )
            await dst.close()
        patches = proxy.entries("PATCH", uploads)
        statuses = [e.status for e in patches]
        assert 401 in statuses, statuses
        refused = statuses.index(401)
        after = patches[refused + 1 :]
        assert after and after[0].status == 202
        # Continued from where the refused chunk started, not from byte 0.
        assert after[0].content_range == patches[refused].content_range
        assert proxy.count("GET", uploads) >= 1  # the status request that re-synced
        assert sum(e.received for e in patches if e.status == 202) < len(data)
    assert len([e for e in tokens.journal() if e.status == 200]) >= 2
    async with Session(options()) as session:
        src = open_source(f"docker://{token_reg.address}/{repo}:1", session,
                          options(credentials=ALICE))
        got = b"".join([c async for c in src.fetch_blob(desc)])
        await src.close()
    assert got == data


# -- Basic auth (htpasswd) -----------------------------------------------------------------


async def test_basic_auth_against_an_htpasswd_registry(
    basic_reg: RegistryServer, sample_layout: Path, tmp_path: Path, repo: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A12: Basic credentials over plain HTTP to a loopback registry."""
    dst = f"docker://{basic_reg.address}/{repo}:1.0"
    with pytest.raises(AuthenticationError, match="401"):
        await ociflow.copy(f"oci:{sample_layout}:1.0", dst, options=options())
    with pytest.raises(AuthenticationError, match="401"):
        await ociflow.copy(f"oci:{sample_layout}:1.0", dst, options=options(),
                           dst_credentials=Credentials("alice", "nope"))
    await ociflow.copy(f"oci:{sample_layout}:1.0", dst, options=options(),
                       dst_credentials=ALICE)
    out = tmp_path / "out"
    await ociflow.copy(dst, f"oci:{out}:1.0", options=options(), src_credentials=BOB)
    assert tagged_manifest(out, "1.0") == tagged_manifest(sample_layout, "1.0")
    assert_no_secret(caplog.text, ALICE.password, BOB.password, "nope")


# -- credentials from the Docker config, through the CLI -----------------------------------


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ociflow", *args], capture_output=True,
                          text=True, env=env, timeout=120)


def test_cli_takes_credentials_from_flags_docker_config_and_authfile(
    token_reg: RegistryServer, tokens: TokenServer, sample_layout: Path, tmp_path: Path,
    repo: str,
) -> None:
    env = dict(os.environ)
    dst = f"docker://{token_reg.address}/{repo}:1.0"
    src = f"oci:{sample_layout}:1.0"
    refused = run_cli("copy", "-q", src, dst, env=env)
    assert refused.returncode == 1 and "401" in refused.stderr

    flags = run_cli("copy", "-q", "--dest-creds", f"bob:{BOB.password}", src, dst, env=env)
    assert flags.returncode == 0, flags.stderr

    auth = base64.b64encode(f"alice:{ALICE.password}".encode()).decode()
    config_dir = tmp_path / "docker"
    config_dir.mkdir()
    (config_dir / "config.json").write_text(
        json.dumps({"auths": {token_reg.address: {"auth": auth}}})
    )
    tokens.clear_journal()
    from_config = run_cli("copy", "-q", src, f"{dst}-b", env={**env, "DOCKER_CONFIG":
                                                             str(config_dir)})
    assert from_config.returncode == 0, from_config.stderr
    assert {e.user for e in tokens.journal()} == {"alice"}

    tokens.clear_journal()
    authfile = run_cli("copy", "-q", "--authfile", str(config_dir / "config.json"), src,
                       f"{dst}-c", env=env)
    assert authfile.returncode == 0, authfile.stderr
    assert {e.user for e in tokens.journal()} == {"alice"}

    bad = run_cli("copy", "-q", "--dest-creds", "alice:wrong-one", src, f"{dst}-d", env=env)
    assert bad.returncode == 1
    assert bad.stderr.count("\n") == 1 and "wrong-one" not in bad.stderr


def test_skopeo_reads_what_ociflow_pushed_with_credentials(
    token_reg: RegistryServer, tokens: TokenServer, sample_layout: Path, tmp_path: Path,
    repo: str, skopeo: str,
) -> None:
    dst = f"docker://{token_reg.address}/{repo}:1.0"
    ociflow.copy_sync(f"oci:{sample_layout}:1.0", dst, options=options(),
                      dst_credentials=ALICE)
    subprocess.run(
        [skopeo, "copy", "--all", "--src-tls-verify=false",
         "--src-creds", f"alice:{ALICE.password}", dst, f"oci:{tmp_path / 'sk'}:1.0"],
        check=True, capture_output=True, timeout=120,
    )
    assert tagged_manifest(tmp_path / "sk", "1.0") == tagged_manifest(sample_layout, "1.0")


# -- units: challenges, scopes, realms, token answers ---------------------------------------


def test_challenges_parse_quoted_commas_escapes_and_several_per_header() -> None:
    (bearer,) = parse_challenges([
        'Bearer realm="https://auth.example.com/token",service="reg.example.com",'
        'scope="repository:a/b:pull,push repository:c:pull",error="insufficient_scope"'
    ])
    assert bearer.scheme == "bearer" and bearer.realm == "https://auth.example.com/token"
    assert bearer.service == "reg.example.com" and bearer.error == "insufficient_scope"
    assert bearer.scope_atoms == {("repository", "a/b", "pull"), ("repository", "a/b", "push"),
                                  ("repository", "c", "pull")}
    basic, other = parse_challenges(['Basic realm="say \\"hi\\", please", BEARER realm=x'])
    assert (basic.scheme, basic.realm) == ("basic", 'say "hi", please')
    assert (other.scheme, other.realm) == ("bearer", "x")
    # Garbage yields nothing usable (no realm to fetch a token from), and never raises.
    assert all(not c.realm for c in parse_challenges(["", "=", '"unterminated', 'realm="x"']))


def test_scopes_split_at_first_and_last_colon() -> None:
    assert parse_scopes("repository:localhost:5000/app:pull registry:catalog:* bad x:y") == {
        ("repository", "localhost:5000/app", "pull"), ("registry", "catalog", "*")}


@pytest.mark.parametrize(
    ("method", "url", "expected"),
    [
        ("HEAD", "/v2/a/b/blobs/sha256:00", {("repository", "a/b", "pull")}),
        ("PATCH", "/v2/a/blobs/uploads/u-1?_state=x",
         {("repository", "a", "pull"), ("repository", "a", "push")}),
        ("POST", "/v2/dst/blobs/uploads/?mount=sha256:00&from=src/x",
         {("repository", "dst", "pull"), ("repository", "dst", "push"),
          ("repository", "src/x", "pull")}),
        ("DELETE", "/v2/a/manifests/sha256:00", {("repository", "a", "delete")}),
        ("GET", "/v2/a/blobs/x/tags/list", {("repository", "a/blobs/x", "pull")}),
        ("GET", "/v2/_catalog", {("registry", "catalog", "*")}),
        ("GET", "/v2/", set()),
    ],
)
def test_request_scopes(method: str, url: str, expected: set[tuple[str, str, str]]) -> None:
    assert request_scopes(method, URL(f"https://r.example.com{url}")) == expected


@pytest.mark.parametrize(
    ("registry", "realm", "allowed"),
    [
        ("registry-1.docker.io", "auth.docker.io", True),
        ("ghcr.io", "ghcr.io", True),
        ("reg.example.co.uk", "auth.example.co.uk", True),
        ("reg.example.co.uk", "auth.other.co.uk", False),
        ("registry.example.com", "evil.example.net", False),
        ("registry.example.com", "10.0.0.5", False),
        ("registry.example.com", "169.254.169.254", False),
        ("127.0.0.1", "127.0.0.2", True),
        ("localhost", "127.0.0.1", True),
        ("localhost", "auth.example.com", False),
        ("myreg.azurecr.io", "myreg.azurecr.io", True),
        ("myreg.azurecr.io", "attacker.azurecr.io", False),
        ("a.s3.amazonaws.com", "b.s3.amazonaws.com", False),
        ("example.com", "com", False),
    ],
)
def test_which_realms_may_see_credentials(registry: str, realm: str, allowed: bool) -> None:
    assert realm_may_see_credentials(registry, realm) is allowed


class _Recorder:
    def __init__(self) -> None:
        self.sent: list[Request] = []

    async def send(self, request: Request) -> Response:
        self.sent.append(request)
        raise AssertionError("no token request may be sent")


@pytest.mark.parametrize(
    ("registry", "realm", "needle"),
    [
        ("https://registry.example.com", "https://evil.example.net/token", "not on the registry"),
        ("https://registry.example.com", "http://registry.example.com/token", "downgrade"),
        ("https://registry.example.com", "ftp://registry.example.com/token", "not an http"),
    ],
)
async def test_credentials_never_go_to_a_foreign_or_downgraded_realm(
    registry: str, realm: str, needle: str
) -> None:
    """A2/A3: refused before any request, with a clear error naming the realm."""
    async def creds() -> Credentials | None:
        return ALICE

    auth = Authenticator(lambda: URL(registry), creds)
    recorder = _Recorder()
    auth.token_handler = recorder
    auth.challenge = parse_challenges([f'Bearer realm="{realm}",service="s"'])[0]
    with pytest.raises(AuthenticationError, match=needle) as info:
        await auth.token(frozenset({("repository", "a", "pull")}), "ctx")
    assert recorder.sent == []
    assert_no_secret(str(info.value), ALICE.password)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"token": "t1", "expires_in": 300}', ("t1", 300.0)),
        (b'{"access_token": "t2"}', ("t2", 60.0)),
        (b'{"token": "t3", "expires_in": 5}', ("t3", 60.0)),  # never below 60 s
        (b'{"token": "t4", "expires_in": true}', ("t4", 60.0)),
    ],
)
def test_token_answers(body: bytes, expected: tuple[str, float]) -> None:
    assert _parse_token(body, "ctx") == expected


@pytest.mark.parametrize("body", [b"[]", b"not json", b'{"token": ""}', b'{"token": 7}',
                                  b'{"token": "a\\nb"}'])
def test_bad_token_answers_are_authentication_errors(body: bytes) -> None:
    with pytest.raises(AuthenticationError):
        _parse_token(body, "ctx")


def test_credentials_never_show_their_secret() -> None:
    creds = Credentials("alice", "pw-123", identity_token="idt-456")
    assert "pw-123" not in repr(creds) + str(creds)
    assert "idt-456" not in repr(creds) + str(creds)
    assert Credentials.parse("u:p:q") == Credentials("u", "p:q")
    with pytest.raises(ValueError):
        Credentials.parse("no-colon")


def test_bench_with_credentials_cleans_up(
    token_reg: RegistryServer, tokens: TokenServer, repo: str
) -> None:
    """``ociflow bench --creds``: pushes, pulls and deletes (the delete scope) with a token."""
    env = dict(os.environ)
    refused = run_cli("bench", "-q", "--size", "1MiB", f"{token_reg.address}/{repo}", env=env)
    assert refused.returncode == 1 and "401" in refused.stderr
    done = run_cli("bench", "--json", "--size", "1MiB", "--creds", f"alice:{ALICE.password}",
                   f"{token_reg.address}/{repo}", env=env)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["deleted"] == 2 and report["leftBehind"] == {}
    assert any(s.endswith(":delete") for e in tokens.journal() for s in e.scopes)
    assert ALICE.password not in done.stdout + done.stderr


# -- review findings: what must not happen ------------------------------------------------


async def test_copy_refuses_one_set_of_credentials_for_both_sides(sample_layout: Path) -> None:
    """Credentials in the shared options would go to the source and the destination alike."""
    with pytest.raises(ValueError, match="src_credentials and dst_credentials"):
        await ociflow.copy(f"oci:{sample_layout}:1.0", "docker://registry.example.com/x:1",
                           options=options(credentials=ALICE))


async def test_identity_token_is_exchanged_with_a_refresh_grant(
    token_reg: RegistryServer, tokens: TokenServer, sample_layout: Path, repo: str,
) -> None:
    """A Docker config ``identitytoken`` (an OAuth2 refresh token) is spent with
    ``grant_type=refresh_token`` in a POST form, never as a password."""
    import aiohttp

    form = {"grant_type": "password", "username": "alice", "password": ALICE.password,
            "service": SERVICE, "client_id": "test", "access_type": "offline"}
    async with aiohttp.ClientSession() as http, http.post(tokens.realm, data=form) as answer:
        refresh = (await answer.json())["refresh_token"]
    tokens.clear_journal()
    await ociflow.copy(f"oci:{sample_layout}:1.0", f"docker://{token_reg.address}/{repo}:1",
                       options=options(),
                       dst_credentials=Credentials(identity_token=refresh))
    journal = tokens.journal()
    assert journal and all(e.method == "POST" and e.grant_type == "refresh_token"
                           and e.user == "alice" and e.status == 200 for e in journal)


async def test_registry_token_is_sent_as_is(
    token_reg: RegistryServer, tokens: TokenServer, sample_layout: Path, repo: str,
) -> None:
    minted = tokens.mint([f"repository:{repo}:pull,push"], user="alice")
    await ociflow.copy(f"oci:{sample_layout}:1.0", f"docker://{token_reg.address}/{repo}:1",
                       options=options(), dst_credentials=Credentials(registry_token=minted))
    assert tokens.journal() == []  # never exchanged


async def test_token_server_error_text_stays_out_of_the_message(
    token_reg: RegistryServer, tokens: TokenServer, sample_layout: Path, repo: str,
) -> None:
    """S1: a token server's message may quote what it was sent; only status and codes show."""
    body = b'{"details": "refresh token idt-SECRET-123 expired"}'
    tokens.fail_next(10, 500, body=body)
    with pytest.raises(RegistryError) as info:
        await ociflow.copy(f"oci:{sample_layout}:1.0", f"docker://{token_reg.address}/{repo}:1",
                           options=options(retry=RetryPolicy(attempts=1)),
                           dst_credentials=ALICE)
    assert "500" in str(info.value) and "idt-SECRET-123" not in str(info.value)


async def test_unreachable_token_server_is_not_retried_attempts_squared(
    token_reg: RegistryServer, tokens: TokenServer, sample_layout: Path, repo: str,
) -> None:
    """The token stack retries a dropped token request; the registry's stack above it must
    not retry the whole again (3 attempts, not 9)."""
    async with FaultProxy(tokens.realm.removesuffix("/token")) as proxy:
        proxy.add("GET", "/token", Fault(swallow=True))
        realm = f"http://{proxy.address}/token"
        app = _challenging_registry(f'Bearer realm="{realm}",service="{SERVICE}"')
        async with _serve(app) as port:
            with pytest.raises(AuthenticationError) as info:
                await ociflow.copy(f"docker://127.0.0.1:{port}/{repo}:1", "oci:/nonexistent:1",
                                   options=options(retry=RetryPolicy(attempts=3,
                                                                     base_delay=0.01)))
        # 3 attempts; aiohttp itself sends an idempotent request once more when the server
        # drops the connection unanswered, so each attempt may show twice. Retried at both
        # levels it would be 9 attempts (up to 18 requests).
        assert 3 <= proxy.count("GET", "/token") <= 6
        assert str(info.value).count("gave up") == 1


async def test_401_without_a_challenge_asks_v2_for_one(
    token_reg: RegistryServer, tokens: TokenServer, sample_layout: Path, tmp_path: Path,
    repo: str,
) -> None:
    """gcr.io answers some 401s without ``WWW-Authenticate``: the challenge comes from
    ``/v2/`` (protocol.md §3.2)."""
    dst = f"docker://{token_reg.address}/{repo}:1.0"
    await ociflow.copy(f"oci:{sample_layout}:1.0", dst, options=options(),
                       dst_credentials=ALICE)
    async with FaultProxy(token_reg.url) as proxy:
        proxy.add("GET", "/manifests/", Fault(status=401), attempts={1})
        result = await ociflow.copy(f"docker://{proxy.address}/{repo}:1.0",
                                    f"oci:{tmp_path / 'out'}:1.0", options=options(),
                                    src_credentials=ALICE)
        assert proxy.count("GET", "^/v2/$") == 1
    assert result.blobs_copied >= 5


async def test_token_fetch_failures_are_shared_by_concurrent_waiters() -> None:
    """Twenty requests waiting for one token the server cannot give: one token request (a
    wrong password must not become a burst of failed logins either)."""
    calls = 0

    class Refusing:
        async def send(self, request: Request) -> Response:
            nonlocal calls
            calls += 1
            await asyncio.sleep(0.01)
            raise RegistryError("ctx: 503 unavailable (gave up after 5 attempts)", status=503)

    async def creds() -> Credentials | None:
        return ALICE

    auth = Authenticator(lambda: URL("https://registry.example.com"), creds)
    auth.token_handler = Refusing()
    auth.challenge = parse_challenges(
        ['Bearer realm="https://auth.example.com/token",service="s"'])[0]
    atoms = frozenset({("repository", "a", "pull")})
    results = await asyncio.gather(*(auth.token(atoms, "ctx") for _ in range(20)),
                                   return_exceptions=True)
    assert all(isinstance(r, RegistryError) and r.status == 503 for r in results)
    assert calls == 1


async def test_a_public_registry_cannot_point_the_realm_at_a_private_address() -> None:
    """A4/SSRF: even anonymously, no token is fetched from a link-local or private realm."""
    async def anonymous() -> Credentials | None:
        return None

    for realm in ("https://169.254.169.254/token", "https://10.1.2.3/token",
                  "https://[::1]/token"):
        auth = Authenticator(lambda: URL("https://registry.example.com"), anonymous)
        auth.token_handler = _Recorder()
        auth.challenge = parse_challenges([f'Bearer realm="{realm}"'])[0]
        with pytest.raises(AuthenticationError, match="private address"):
            await auth.token(frozenset(), "ctx")


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"token": "t", "expires_in": NaN}', 60.0),
        (b'{"token": "t", "expires_in": 1e999}', 60.0),
        (b'{"token": "t", "expires_in": 1000000000}', 86400.0),
    ],
)
def test_token_lifetimes_are_finite_and_capped(body: bytes, expected: float) -> None:
    assert _parse_token(body, "ctx")[1] == expected


def test_requests_do_not_show_their_headers_or_body() -> None:
    request = Request("POST", URL("https://r.example.com/token"), "ctx",
                      CIMultiDict({"Authorization": "Bearer secret-1"}), b"refresh_token=s-2")
    assert "secret-1" not in repr(request) and "s-2" not in repr(request)


def test_an_upload_location_may_not_downgrade_to_http() -> None:
    with pytest.raises(RegistryError, match="downgrades"):
        resolve_location(URL("https://r.example.com/v2/a/blobs/uploads/"),
                         "http://r.example.com/v2/a/blobs/uploads/u1?_state=x", "ctx")


def _challenging_registry(challenge: str) -> web.Application:
    """A stand-in registry that answers every request 401 with ``challenge``."""
    async def refuse(request: web.Request) -> web.Response:
        return web.Response(status=401, headers={"WWW-Authenticate": challenge})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", refuse)
    return app


@contextlib.asynccontextmanager
async def _serve(app: web.Application) -> AsyncGenerator[int, None]:
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        assert server.port is not None
        yield server.port
    finally:
        await server.close()


def test_cli_reads_a_missing_password_from_standard_input(
    token_reg: RegistryServer, tokens: TokenServer, sample_layout: Path, repo: str,
) -> None:
    """``--dest-creds USER``: the password comes from stdin (never from the command line)."""
    args = [sys.executable, "-m", "ociflow", "copy", "-q", "--dest-creds", "alice",
            f"oci:{sample_layout}:1.0", f"docker://{token_reg.address}/{repo}:1"]
    done = subprocess.run(args, input=ALICE.password + "\n", capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert {e.user for e in tokens.journal()} == {"alice"}
    both = subprocess.run([*args[:5], "--src-creds", "bob", *args[5:]], input="x\ny\n",
                          capture_output=True, text=True, timeout=120)
    assert both.returncode == 2 and "only one password" in both.stderr


def test_a_jwt_without_expires_in_lives_until_its_exp_claim() -> None:
    """ACR answers with ``access_token`` only; the JWT's ``exp`` says how long it lives."""
    import time as _time

    def jwt(claims: dict[str, object]) -> str:
        payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")
        return f"eyJhbGciOiJub25lIn0.{payload}.sig"

    token = jwt({"exp": int(_time.time()) + 3600})
    value, lifetime = _parse_token(json.dumps({"access_token": token}).encode(), "ctx")
    assert value == token and 3590 <= lifetime <= 3600
    expired = jwt({"exp": int(_time.time()) - 10})
    assert _parse_token(json.dumps({"access_token": expired}).encode(), "ctx")[1] == 60.0
    assert _parse_token(b'{"access_token": "opaque"}', "ctx")[1] == 60.0
