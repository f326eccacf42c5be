"""Azure AD sign-in for Azure Container Registry: an AAD token exchanged for an ACR refresh token.

The exchange (protocol.md §4.1): an Azure AD access token for ``<audience>/.default`` (from
``azure-identity``: ``DefaultAzureCredential`` unless a credential is given) is POSTed, in a
form body and to the registry's own origin only, to ``/oauth2/exchange`` with
``grant_type=access_token``; the answer's ``refresh_token`` is an ACR refresh token. From there
on it is an ordinary identity token: :mod:`ociflow.http.auth` trades it for access tokens at the
registry's realm (``POST /oauth2/token``, ``grant_type=refresh_token``), scope by scope.

``azure.identity`` is imported only when an :class:`~ociflow.http.credentials.AzureAD` sign-in is
used (it takes about
0.15 s to import).
"""

from __future__ import annotations

import asyncio
import json
from urllib.parse import urlencode

from multidict import CIMultiDict
from yarl import URL

from ociflow.errors import AuthenticationError, OciflowError
from ociflow.http.addresses import is_loopback
from ociflow.http.credentials import AzureAD, Credentials
from ociflow.http.message import Handler, Request

API_VERSION = "2021-07-01"
ACR_SUFFIXES = (".azurecr.io", ".azurecr.cn", ".azurecr.us")
"""Login servers of Azure Container Registry (public, China and US Government clouds)."""
MAX_EXCHANGE_RESPONSE = 1024 * 1024


async def exchange(
    sign_in: AzureAD, registry: URL, service: str, handler: Handler, context: str
) -> Credentials:
    """The ACR refresh token for ``registry`` (its base URL; ``service`` its login server
    name), as identity-token credentials. ``handler`` sends the exchange (no auth layer).

    An AAD token opens every registry the identity has a role on, so it goes only to an ACR
    login server (or a loopback stand-in): never to a registry named by mistake."""
    host = (registry.host or "").lower()
    if not (host.endswith(ACR_SUFFIXES) or is_loopback(host)):
        raise AuthenticationError(
            f"{context}: {host} is not an Azure Container Registry login server "
            f"(*{', *'.join(ACR_SUFFIXES)}); not sending it an Azure AD token",
            status=0,
        )
    aad_token = await asyncio.to_thread(_aad_token, sign_in, context)
    form = {"grant_type": "access_token", "service": service, "access_token": aad_token}
    if sign_in.tenant:
        form["tenant"] = sign_in.tenant
    url = registry.with_path("/oauth2/exchange").with_query({"api-version": API_VERSION})
    headers = CIMultiDict({"Content-Type": "application/x-www-form-urlencoded"})
    request = Request("POST", url, context, headers, urlencode(form).encode())
    try:
        response = await handler.send(request)
    except OciflowError as exc:
        raise AuthenticationError(f"{context}: Azure AD token exchange failed: {_tail(exc)}",
                                  status=0) from None
    async with response:
        status = response.status
        body = await response.read(MAX_EXCHANGE_RESPONSE)
    if status != 200:
        # Status only: the answer may quote the token it was sent.
        raise AuthenticationError(
            f"{context}: the registry refused the Azure AD token ({status}); check that the "
            f"identity has a role on the registry and the audience {sign_in.audience}",
            status=status,
        )
    try:
        refresh = json.loads(body).get("refresh_token") if len(body) <= MAX_EXCHANGE_RESPONSE \
            else None
    except (ValueError, AttributeError, RecursionError):
        refresh = None
    if not isinstance(refresh, str) or not refresh or not refresh.isprintable():
        raise AuthenticationError(f"{context}: the Azure AD token exchange returned no token")
    return Credentials(identity_token=refresh)


def _aad_token(sign_in: AzureAD, context: str) -> str:
    credential = sign_in.credential
    try:
        if credential is None:
            from azure.identity import DefaultAzureCredential

            credential = DefaultAzureCredential()
        token = credential.get_token(f"{sign_in.audience.rstrip('/')}/.default")
    except Exception as exc:  # azure-identity raises its own tree; none of it may escape
        raise AuthenticationError(
            f"{context}: no Azure AD token ({type(exc).__name__}); sign in with az login, "
            "environment variables or a managed identity",
            status=0,
        ) from None
    value = getattr(token, "token", None)
    if not isinstance(value, str) or not value:
        raise AuthenticationError(f"{context}: the Azure credential returned no token", status=0)
    return value


def _tail(exc: OciflowError) -> str:
    text = str(exc)
    return text.split(": ", 1)[1] if ": " in text else text
