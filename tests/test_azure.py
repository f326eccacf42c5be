"""Azure AD sign-in to Azure Container Registry (protocol.md §4.1; reliability.md A11).

ACR's token endpoints cannot run here, so a stand-in gateway plays them — ``/oauth2/exchange``
(AAD token → ACR refresh token) and ``/oauth2/token`` (refresh token → access token), and a
``401`` challenge on ``/v2/`` until the access token is shown — in front of the real
distribution registry, which stores and serves the image. The Azure AD credential is an
in-test object with azure-identity's ``get_token`` interface.
"""

from __future__ import annotations

import secrets
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs

import pytest
from aiohttp import web
from azure.core.credentials import AccessToken

import ociflow
from ociflow.errors import AuthenticationError
from ociflow.http.options import HttpOptions
from ociflow.http.retry import RetryPolicy
from tests.fault_proxy import FaultProxy
from tests.layouts import tagged_manifest
from tests.registry_server import RegistryServer

FAST = HttpOptions(retry=RetryPolicy(attempts=2, base_delay=0.05))


class FakeAzureCredential:
    """azure-identity's credential interface: ``get_token(*scopes)``; records the scopes."""

    def __init__(self, token: str, error: Exception | None = None) -> None:
        self.token = token
        self.error = error
        self.scopes: list[tuple[str, ...]] = []

    def get_token(self, *scopes: str, **kwargs: object) -> AccessToken:
        self.scopes.append(scopes)
        if self.error is not None:
            raise self.error
        return AccessToken(self.token, int(time.time()) + 3600)


@dataclass
class FakeACR(FaultProxy):
    """ACR's token endpoints and challenge, in front of a real registry."""

    aad_token: str = ""
    refresh: str = field(default_factory=lambda: "acr-refresh-" + secrets.token_hex(8))
    access: str = field(default_factory=lambda: "acr-access-" + secrets.token_hex(8))
    exchanges: list[tuple[dict[str, list[str]], dict[str, str], bool]] = field(
        default_factory=list)
    token_forms: list[dict[str, list[str]]] = field(default_factory=list)
    refuse_exchange: bool = False

    @property
    def service(self) -> str:
        return self.address

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if request.path == "/oauth2/exchange":
            form = parse_qs((await request.read()).decode())
            self.exchanges.append((form, dict(request.query),
                                   "Authorization" in request.headers))
            good = (form.get("grant_type") == ["access_token"]
                    and form.get("access_token") == [self.aad_token]
                    and form.get("service") == [self.service])
            if self.refuse_exchange or not good:
                return web.json_response({"errors": [{"code": "UNAUTHORIZED",
                                                      "message": f"bad {self.aad_token}"}]},
                                         status=401)
            return web.json_response({"refresh_token": self.refresh})
        if request.path == "/oauth2/token":
            form = parse_qs((await request.read()).decode())
            self.token_forms.append(form)
            if (request.method != "POST" or form.get("grant_type") != ["refresh_token"]
                    or form.get("refresh_token") != [self.refresh]):
                return web.Response(status=401)
            return web.json_response({"access_token": self.access})  # no expires_in, as ACR
        if request.headers.get("Authorization") != f"Bearer {self.access}":
            realm = f"http://{self.address}/oauth2/token"
            return web.Response(status=401, headers={
                "WWW-Authenticate": f'Bearer realm="{realm}",service="{self.service}"'})
        return await super()._handle(request)


@pytest.fixture()
async def acr(registry: RegistryServer) -> AsyncIterator[FakeACR]:
    async with FakeACR(registry.url, aad_token="aad-" + secrets.token_hex(12)) as gateway:
        yield gateway


async def test_push_and_pull_with_azure_ad(
    acr: FakeACR, sample_layout: Path, tmp_path: Path, repo: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A11: the AAD token goes once, in a form body, to the registry's /oauth2/exchange (never
    in a URL, never with an Authorization header); then the ACR refresh token is traded for
    access tokens; nothing secret reaches the log."""
    credential = FakeAzureCredential(acr.aad_token)
    sign_in = ociflow.AzureAD(credential=credential)
    dst = f"docker://{acr.address}/{repo}:1.0"
    await ociflow.copy(f"oci:{sample_layout}:1.0", dst, options=FAST, dst_credentials=sign_in)
    out = tmp_path / "out"
    await ociflow.copy(dst, f"oci:{out}:1.0", options=FAST, src_credentials=sign_in)
    assert tagged_manifest(out, "1.0") == tagged_manifest(sample_layout, "1.0")

    assert credential.scopes == [("https://containerregistry.azure.net/.default",)] * 2
    assert len(acr.exchanges) == 2  # one per copy, not one per request
    for form, query, had_authorization in acr.exchanges:
        assert form["access_token"] == [acr.aad_token] and form["service"] == [acr.service]
        assert query == {"api-version": "2021-07-01"} and not had_authorization
    assert all(f["grant_type"] == ["refresh_token"] and f["scope"] for f in acr.token_forms)
    assert not any(acr.aad_token in e.query or acr.aad_token in e.path for e in acr.journal)
    for secret in (acr.aad_token, acr.refresh, acr.access):
        assert secret not in caplog.text


async def test_refused_azure_token_is_one_clear_error(
    acr: FakeACR, sample_layout: Path, repo: str
) -> None:
    acr.refuse_exchange = True
    with pytest.raises(AuthenticationError) as info:
        await ociflow.copy(f"oci:{sample_layout}:1.0", f"docker://{acr.address}/{repo}:1",
                           options=FAST,
                           dst_credentials=ociflow.AzureAD(
                               credential=FakeAzureCredential(acr.aad_token)))
    message = str(info.value)
    assert "refused the Azure AD token (401)" in message and acr.aad_token not in message
    assert len(acr.exchanges) == 1  # a refusal is not retried


async def test_no_azure_identity_is_one_clear_error(
    acr: FakeACR, sample_layout: Path, repo: str
) -> None:
    failing = FakeAzureCredential("", error=RuntimeError("no identity configured: s3cret"))
    with pytest.raises(AuthenticationError) as info:
        await ociflow.copy(f"oci:{sample_layout}:1.0", f"docker://{acr.address}/{repo}:1",
                           options=FAST, dst_credentials=ociflow.AzureAD(credential=failing))
    assert "no Azure AD token (RuntimeError)" in str(info.value)
    assert "s3cret" not in str(info.value) and acr.exchanges == []


def test_cli_azure_and_password_exclude_each_other(sample_layout: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "ociflow", "copy", "--dest-azure", "--dest-creds", "u:p",
         f"oci:{sample_layout}:1.0", "docker://registry.example.com/x:1"],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 1 and "exclude each other" in done.stderr


def test_azure_sign_in_does_not_show_its_credential() -> None:
    sign_in = ociflow.AzureAD(credential=FakeAzureCredential("tok-123"), tenant="t-1")
    assert "tok-123" not in repr(sign_in) and "FakeAzureCredential" not in repr(sign_in)


async def test_an_aad_token_goes_only_to_an_acr_login_server() -> None:
    """A registry named by mistake (or on purpose) never sees the AAD token: it would open every
    registry the identity has a role on."""
    from yarl import URL

    from ociflow.http.azure import exchange
    from ociflow.http.message import Request, Response

    class Recorder:
        async def send(self, request: Request) -> Response:
            raise AssertionError("nothing may be sent")

    credential = FakeAzureCredential("aad-token")
    with pytest.raises(AuthenticationError, match="not an Azure Container Registry"):
        await exchange(ociflow.AzureAD(credential=credential), URL("https://evil.example.com"),
                       "evil.example.com", Recorder(), "ctx")
    assert credential.scopes == []
