"""The auth layer: answer a registry's ``401`` challenge, then send credentials ahead of time.

How (protocol.md §3.1-3.7):

- A request goes out with what is already known for its registry: a cached bearer token that
  covers the request's scopes (:func:`~ociflow.http.challenge.request_scopes`), a token fetched
  now because the registry's challenge is known, or Basic credentials. Nothing is known before
  the registry's first ``401``: that one teaches the challenge (realm, service, scope).
- On a ``401`` the token that was sent is dropped (expired or revoked), a new one is fetched for
  the request's scopes plus the challenge's, and a replayable request is sent once more. A
  request with a one-shot body (an upload chunk) gets its ``401`` back; the next request then
  carries a fresh token, which is how an upload continues after its token expired (U13, see
  :mod:`ociflow.targets.blob_upload`). A second ``401`` is the answer: the caller maps it.
- Tokens are cached per registry client (so per set of credentials, A5) with their scopes, and
  reused while they cover a request and are not near expiry. ``expires_in`` defaults to 60 s and
  is never taken below it; a token is renewed :data:`RENEW_BEFORE` seconds early. Concurrent
  requests that need the same token wait for one fetch.
- Token requests: ``GET realm?service=&scope=`` with Basic credentials when there is a password
  (or anonymously), ``POST`` ``grant_type=refresh_token`` for an identity token; a registry
  token is sent as is, never exchanged. Token responses are capped at :data:`MAX_TOKEN_RESPONSE`.

Where credentials may go (reliability.md A2-A4, S1): only to the registry's own origin and to a
realm on the registry's domain (:func:`realm_may_see_credentials`); an ``http://`` realm for an
``https://`` registry is refused outright (A3); redirects of a token request never carry them to
another origin (the redirect layer strips them). Tokens and passwords never reach a message or a
log line.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import quote_plus

from multidict import CIMultiDict
from yarl import URL

from ociflow.errors import (
    AuthenticationError,
    OciflowError,
    RegistryError,
    TooManyRequestsError,
    TransportError,
)
from ociflow.http.addresses import ip_literal, is_local, is_local_address, is_loopback
from ociflow.http.challenge import Atom, Challenge, format_scopes, parse_challenges, request_scopes
from ociflow.http.credentials import Credentials
from ociflow.http.errors import error_from_response
from ociflow.http.message import Handler, Layer, Request, Response
from ociflow.http.redact import redact_url
from ociflow.http.redirect import origin

log = logging.getLogger(__name__)

MIN_TOKEN_LIFETIME = 60.0
"""Seconds a token is assumed to live when the server says less or nothing (token.md)."""
MAX_TOKEN_LIFETIME = 24 * 3600.0
"""Seconds a token is trusted at most, whatever the server says."""
RENEW_BEFORE = 10.0
"""Seconds before its expiry that a cached token stops being used."""
MAX_TOKEN_RESPONSE = 1024 * 1024
CLIENT_ID = "ociflow"
# Second-level labels under which a registrable domain has three labels (example.co.uk): a
# short list instead of the public suffix list, erring on the side of not sending credentials.
_SECOND_LEVEL = frozenset({"co", "com", "net", "org", "gov", "edu", "ac", "or", "ne", "go"})
# Domains under which every tenant has its own name: a realm elsewhere under them belongs to
# someone else (the public suffix list's "private" section, the registries' part of it).
_SHARED_SUFFIXES = (
    "azurecr.io", "amazonaws.com", "cloudfront.net", "github.io", "herokuapp.com",
    "appspot.com", "pkg.dev", "azurewebsites.net", "ondigitalocean.app",
)

CredentialSource = Callable[[], Awaitable[Credentials | None]]
"""Returns the credentials for one registry (None: anonymous); called at most once."""


@dataclass
class _Token:
    value: str
    atoms: frozenset[Atom]
    expires: float  # time.monotonic() deadline

    def covers(self, atoms: frozenset[Atom]) -> bool:
        return atoms <= self.atoms and time.monotonic() < self.expires


class Authenticator:
    """The credentials and token cache of one registry client.

    ``registry_url`` returns the registry's base URL once its scheme is decided (None before);
    ``credentials`` is asked once, the first time the registry asks for credentials;
    ``token_handler`` sends token requests (a stack without the auth layer), set by
    :func:`~ociflow.http.client.build_stack`.
    """

    token_handler: Handler

    def __init__(
        self, registry_url: Callable[[], URL | None], credentials: CredentialSource
    ) -> None:
        self._registry_url = registry_url
        self._credential_source = credentials
        self._credentials: Credentials | None = None
        self._credentials_error: OciflowError | None = None
        self._resolved = False
        self._resolving = asyncio.Lock()
        self.challenge: Challenge | None = None
        self._tokens: list[_Token] = []
        self._fetching: dict[frozenset[Atom], asyncio.Lock] = {}
        # A token fetch that failed (after its retries) is not repeated by every request
        # waiting for it: a wrong password must not become a burst of failed logins.
        self._failed: dict[frozenset[Atom], OciflowError] = {}

    def is_registry(self, url: URL) -> bool:
        """Whether ``url`` is on the registry's own origin (the only one credentials go to)."""
        base = self._registry_url()
        return base is not None and origin(url) == origin(base)

    async def credentials(self) -> Credentials | None:
        """The registry's credentials, looked up once (a failed lookup fails every caller)."""
        if not self._resolved:
            async with self._resolving:
                if not self._resolved:
                    try:
                        self._credentials = await self._credential_source()
                    except OciflowError as exc:
                        self._credentials_error = exc
                    self._resolved = True
        if self._credentials_error is not None:
            raise self._credentials_error
        return self._credentials

    async def authorization(self, request: Request) -> tuple[str, _Token | None] | None:
        """The ``Authorization`` value to send ahead with ``request`` (and the token it uses),
        or None when nothing is known yet."""
        challenge = self.challenge
        if challenge is None:
            creds = await self.credentials() if self._resolved else None
            if creds is not None and creds.registry_token:
                return f"Bearer {creds.registry_token}", None
            return None
        if challenge.scheme == "basic":
            basic = _basic(await self.credentials())
            return (basic, None) if basic else None
        token = await self.token(request_scopes(request.method, request.url), request.context)
        return f"Bearer {token.value}", token

    def learn(self, response: Response) -> Challenge | None:
        """Take the challenge of a ``401`` (Bearer preferred over Basic). A ``401`` without
        one (gcr.io does that) means the challenge already known; None when there is none."""
        challenges = parse_challenges(response.headers.getall("WWW-Authenticate", []))
        for scheme in ("bearer", "basic"):
            for challenge in challenges:
                if challenge.scheme == scheme and (scheme == "basic" or challenge.realm):
                    self.challenge = challenge
                    return challenge
        return self.challenge if not challenges else None

    def drop(self, token: _Token | None) -> None:
        """Forget ``token``: the registry refused it."""
        if token is not None and token in self._tokens:
            self._tokens.remove(token)

    async def token(self, atoms: frozenset[Atom], context: str) -> _Token:
        """A token covering ``atoms``: cached, or fetched (once for concurrent callers)."""
        cached = self._cached(atoms)
        if cached is not None:
            return cached
        lock = self._fetching.setdefault(atoms, asyncio.Lock())
        async with lock:
            if atoms in self._failed:
                raise self._failed[atoms]
            cached = self._cached(atoms)
            if cached is not None:
                return cached
            try:
                token = await self._fetch(atoms, context)
            except OciflowError as exc:
                self._failed[atoms] = exc
                raise
            self._tokens = [t for t in self._tokens if time.monotonic() < t.expires]
            self._tokens.append(token)
            return token

    def _cached(self, atoms: frozenset[Atom]) -> _Token | None:
        for token in self._tokens:
            if token.covers(atoms):
                return token
        return None

    async def _fetch(self, atoms: frozenset[Atom], context: str) -> _Token:
        challenge = self.challenge
        assert challenge is not None
        creds = await self.credentials()
        if creds is not None and creds.registry_token:
            # Used as is; the registry's next 401 says whether it is good.
            return _Token(creds.registry_token, atoms, float("inf"))
        realm = self._check_realm(challenge, creds, context)
        scopes = format_scopes(atoms)
        headers: CIMultiDict[str] = CIMultiDict()
        if creds is not None and creds.identity_token:
            form = {"grant_type": "refresh_token", "refresh_token": creds.identity_token,
                    "client_id": CLIENT_ID, "service": challenge.service}
            if scopes:
                form["scope"] = " ".join(scopes)
            headers["Content-Type"] = "application/x-www-form-urlencoded"
            body = "&".join(f"{k}={quote_plus(v)}" for k, v in form.items()).encode()
            request = Request("POST", realm, context, headers, body)
        else:
            query = [("service", challenge.service)] if challenge.service else []
            query += [("scope", scope) for scope in scopes]
            basic = _basic(creds)
            if basic:
                headers["Authorization"] = basic
            request = Request("GET", realm.extend_query(query), context, headers)
        log.debug("%s: fetching a token from %s for %s", context, redact_url(realm),
                  " ".join(scopes) or "no scope")
        received = time.monotonic()
        try:
            response = await self.token_handler.send(request)
        except TransportError as exc:
            # The token stack has retried already; an error the registry's stack would retry
            # again (attempts squared) becomes one that it does not.
            raise AuthenticationError(
                f"{exc} (token request to {redact_url(realm)})", status=0
            ) from None
        except RegistryError as exc:  # a 5xx or 429 the token stack gave up on
            raise _token_error(exc.status, exc.codes, realm, context) from None
        async with response:
            if response.status != 200:
                raise await self._refused(response, creds, realm, context)
            body = await response.read(MAX_TOKEN_RESPONSE)
        if len(body) > MAX_TOKEN_RESPONSE:
            raise AuthenticationError(f"{context}: the token server's answer is too large")
        value, lifetime = _parse_token(body, context)
        expires = received + lifetime - RENEW_BEFORE  # lifetime: 60 s to 24 h
        return _Token(value, atoms, expires)

    def _check_realm(self, challenge: Challenge, creds: Credentials | None, context: str) -> URL:
        try:
            realm = URL(challenge.realm)
        except ValueError:
            realm = URL()
        if realm.scheme not in ("http", "https") or not realm.host or realm.user is not None:
            raise AuthenticationError(
                f"{context}: the registry's token realm is not an http(s) URL without "
                "user information",
                status=401,
            )
        registry = self._registry_url()
        registry_host = registry.host if registry is not None else ""
        if not is_local(registry_host or "") and is_local_address(realm.host):
            # A public registry pointing the client at a private or link-local address (a
            # cloud metadata service): the token it returned would go back to the registry.
            raise AuthenticationError(
                f"{context}: refusing the token realm {redact_url(realm)}: a private address "
                f"for a registry on {registry_host}",
                status=401,
            )
        if registry is not None and registry.scheme == "https" and realm.scheme != "https":
            raise AuthenticationError(
                f"{context}: refusing the token realm {redact_url(realm)}: plain http for an "
                "https registry (downgrade)",
                status=401,
            )
        sends_secret = creds is not None and (creds.password or creds.identity_token)
        if sends_secret and not realm_may_see_credentials(registry_host or "", realm.host):
            raise AuthenticationError(
                f"{context}: the token realm {redact_url(realm)} is not on the registry's "
                f"domain ({registry_host}); refusing to send it credentials",
                status=401,
            )
        return realm

    async def _refused(
        self, response: Response, creds: Credentials | None, realm: URL, context: str
    ) -> RegistryError:
        # Only the status and error codes: a token server's message may quote the refresh
        # token or the user's input (S1).
        error = await error_from_response(response, context)
        status = response.status
        codes = error.codes if isinstance(error, RegistryError) else ()
        if status in (401, 403):
            who = f"the credentials {creds}" if creds is not None else "an anonymous request"
            return AuthenticationError(
                f"{context}: the token server {redact_url(realm)} refused {who} "
                f"({_status(status, codes)})",
                status=status, codes=codes,
            )
        return _token_error(status, codes, realm, context)


class AuthLayer(Layer):
    """Adds credentials to requests for the registry's origin and answers its ``401``."""

    def __init__(self, inner: Handler, auth: Authenticator) -> None:
        super().__init__(inner)
        self.auth = auth

    async def send(self, request: Request) -> Response:
        if not self.auth.is_registry(request.url) or "Authorization" in request.headers:
            return await self.inner.send(request)  # not ours to authorize, or done by the caller
        # A copy: the retry layer above sends the caller's request again, and it must not
        # carry a token this layer has since dropped.
        request = dataclasses.replace(request, headers=request.headers.copy())
        sent = await self.auth.authorization(request)
        if sent is not None:
            request.headers["Authorization"] = sent[0]
        response = await self.inner.send(request)
        if response.status != 401:
            return response
        token = sent[1] if sent is not None else None
        self.auth.drop(token)
        challenge = self.auth.learn(response)
        if challenge is None and request.replayable:
            challenge = await self._ping(request)
        if challenge is None or not request.replayable:
            # Nothing to answer with; or a one-shot body, which cannot be sent again: the
            # caller sees the 401 and the next request gets a fresh token.
            return response
        if challenge.scheme == "basic":
            header = _basic(await self.auth.credentials())
            if header is None or (sent is not None and sent[0] == header):
                return response  # no password, or the one sent was refused
        else:
            atoms = request_scopes(request.method, request.url) | challenge.scope_atoms
            fresh = await self.auth.token(atoms, request.context)
            if token is not None and fresh.value == token.value:
                return response  # the token server has nothing better
            header = f"Bearer {fresh.value}"
        response.release()
        request.headers["Authorization"] = header
        return await self.inner.send(request)

    async def _ping(self, request: Request) -> Challenge | None:
        """A ``401`` that says nothing of how to authenticate: ask ``/v2/``, which does
        (protocol.md §3.2, containers/image)."""
        ping = Request("GET", request.url.with_path("/v2/").with_query(None), request.context)
        answer = await self.inner.send(ping)
        try:
            return self.auth.learn(answer) if answer.status == 401 else None
        finally:
            answer.release()


def realm_may_see_credentials(registry_host: str, realm_host: str) -> bool:
    """Whether a token realm on ``realm_host`` may be sent the credentials meant for
    ``registry_host``: the same host, both loopback, or both under one registrable domain
    (``registry-1.docker.io`` and ``auth.docker.io``). An IP literal must match exactly."""
    registry_host, realm_host = registry_host.lower().rstrip("."), realm_host.lower().rstrip(".")
    if registry_host == realm_host:
        return True
    if is_loopback(registry_host) or is_loopback(realm_host):
        return is_loopback(registry_host) and is_loopback(realm_host)
    if ip_literal(registry_host) is not None or ip_literal(realm_host) is not None:
        return False
    return _registrable(registry_host) == _registrable(realm_host) != ""


def _registrable(host: str) -> str:
    """The registrable domain of ``host``: its last two labels, three under a two-letter
    country code's second level (``example.co.uk``), and the whole host under a domain shared
    by many tenants (``myreg.azurecr.io``), where only the host itself is trusted."""
    labels = host.split(".")
    if len(labels) < 2:
        return ""
    if any(host.endswith("." + suffix) for suffix in _SHARED_SUFFIXES):
        return host
    keep = 3 if len(labels[-1]) == 2 and labels[-2] in _SECOND_LEVEL else 2
    return ".".join(labels[-keep:]) if len(labels) >= keep else ""


def _status(status: int, codes: tuple[str, ...]) -> str:
    return f"{status}" + (f" {', '.join(codes)}" if codes else "")


def _token_error(status: int, codes: tuple[str, ...], realm: URL, context: str) -> RegistryError:
    """A failed token request, told by status and error codes only: a token server's message
    may quote what it was sent, a refresh token say (S1)."""
    cls = TooManyRequestsError if status == 429 else RegistryError
    return cls(
        f"{context}: token request to {redact_url(realm)} failed ({_status(status, codes)})",
        status=status, codes=codes,
    )


def _basic(creds: Credentials | None) -> str | None:
    if creds is None or not creds.username or creds.kind != "password":
        return None
    raw = f"{creds.username}:{creds.password}".encode()
    return "Basic " + base64.b64encode(raw).decode("ascii")


def _parse_token(body: bytes, context: str) -> tuple[str, float]:
    """(token, lifetime in seconds, within 60 s and 24 h) from a token response;
    ``access_token`` is an alias."""
    try:
        obj = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        obj = None
    if not isinstance(obj, dict):
        raise AuthenticationError(f"{context}: the token server's answer is not a JSON object")
    value = obj.get("token") or obj.get("access_token")
    if not isinstance(value, str) or not value or not value.isprintable():
        raise AuthenticationError(f"{context}: the token server's answer holds no token")
    lifetime = _seconds(obj.get("expires_in"))
    if lifetime is None:
        # ACR sends no expires_in; a JWT says when it expires (protocol.md §4.1).
        lifetime = _jwt_lifetime(value)
    return value, min(max(lifetime or MIN_TOKEN_LIFETIME, MIN_TOKEN_LIFETIME), MAX_TOKEN_LIFETIME)


def _seconds(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) and value > 0 else None


def _jwt_lifetime(token: str) -> float | None:
    """Seconds until the ``exp`` claim of ``token`` when it is a JWT; None otherwise. The token
    is only read for this hint, never trusted for anything else."""
    parts = token.split(".")
    if len(parts) != 3 or len(parts[1]) > 64 * 1024:
        return None
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    expiry = _seconds(claims.get("exp")) if isinstance(claims, dict) else None
    return None if expiry is None else _seconds(expiry - time.time())
