"""Registry credentials: what a user, a config file or a credential helper hands ociflow, and
the Azure AD sign-in (:class:`AzureAD`, spent by :mod:`ociflow.http.azure`).

A :class:`Credentials` never shows its secrets: ``repr`` and ``str`` name the kind of credential
and the user only (reliability.md S1). Where they come from is
:mod:`ociflow.http.dockerconfig`; how they are spent (Basic, token exchange) is
:mod:`ociflow.http.auth`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

DEFAULT_AUDIENCE = "https://containerregistry.azure.net"
"""The Azure AD resource of Azure Container Registry's data plane (protocol.md §4.2)."""
IDENTITY_TOKEN_USER = "<token>"
"""The user name a credential helper reports when its secret is an identity (refresh) token."""


@dataclass(frozen=True)
class Credentials:
    """One identity at one registry. At most one kind of secret is meaningful:

    - ``username`` + ``password``: Basic auth, or the Basic credentials of a token request;
    - ``identity_token``: an OAuth2 refresh token, exchanged with ``grant_type=refresh_token``;
    - ``registry_token``: a bearer token sent to the registry as is, never exchanged.
    """

    username: str = ""
    password: str = field(default="", repr=False)
    identity_token: str = field(default="", repr=False)
    registry_token: str = field(default="", repr=False)

    @classmethod
    def parse(cls, text: str) -> Credentials:
        """``USER:PASSWORD`` (split at the first colon, as Docker does) into credentials."""
        username, sep, password = text.partition(":")
        if not username or not sep:
            raise ValueError("credentials must be given as USER:PASSWORD")
        return cls(username=username, password=password)

    @property
    def kind(self) -> str:
        """``"registry token"``, ``"identity token"``, ``"password"`` or ``"anonymous"``."""
        if self.registry_token:
            return "registry token"
        if self.identity_token:
            return "identity token"
        if self.username or self.password:
            return "password"
        return "anonymous"

    def __str__(self) -> str:
        who = f" of {self.username!r}" if self.username else ""
        return f"<{self.kind}{who}>"


@dataclass(frozen=True)
class AzureAD:
    """Sign in to a registry with Azure AD.

    ``credential`` is an ``azure.core.credentials.TokenCredential`` (None:
    ``DefaultAzureCredential()``: environment, workload or managed identity, Azure CLI, ...);
    ``audience`` the AAD resource the token is for (the ARM audience of a national cloud, say,
    where a registry wants that); ``tenant`` is passed on to the exchange when set.
    """

    credential: Any = None
    audience: str = DEFAULT_AUDIENCE
    tenant: str | None = None

    def __repr__(self) -> str:
        return f"AzureAD(audience={self.audience!r}, tenant={self.tenant!r})"
