"""Real registries with authentication, for testing ociflow's auth layer.

Two kinds, both the real CNCF distribution registry (``docker-registry`` 2.8) on a loopback
port, started like :func:`tests.registry_server.start_registry` with an ``auth:`` section added:

* **Token auth** — :func:`start_token_registry` (or the context manager :func:`token_registry`)
  starts a :class:`TokenServer` (an aiohttp app in its own thread with its own event loop, so it
  serves any test's loop and session fixtures alike) and a registry that trusts its signing
  certificate. The registry answers ``401`` with
  ``WWW-Authenticate: Bearer realm="http://127.0.0.1:<port>/token",service="...",scope="..."``.

  ::

      registry, tokens = start_token_registry(tmp / "reg", users={"alice": "s3cret"})
      try:
          tokens.update(ttl=2.0, expires_in=300)    # registry accepts a token ~2 s only
          tokens.fail_next(1, 503)                  # the next token request answers 503
          ...
          assert [e.grant_type for e in tokens.journal()] == [...]
      finally:
          registry.stop()
          tokens.stop()

* **htpasswd Basic auth** — :func:`start_htpasswd_registry` writes bcrypt hashes (made with the
  system's libxcrypt, no extra dependency) and answers ``401`` with
  ``WWW-Authenticate: Basic realm="..."`` until ``Authorization: Basic`` is sent.

The policy of a :class:`TokenServer` (:class:`TokenPolicy`) and its faults can be changed at any
time from any thread; its journal records every token request.

What distribution 2.8 requires of a token (the registry's ``registry/auth/token``): a JWS
``header.claims.signature`` whose header names the key by ``x5c`` (a certificate chain up to a
cert in ``rootcertbundle``), or ``jwk``, or ``kid`` (the libtrust key ID of a cert's key in the
bundle); ``iss`` equal to the configured issuer; ``aud`` a *string* equal to the service;
``nbf``/``exp`` integers, checked with 60 s leeway each way; ``access`` a list of
``{"type", "name", "actions"}`` that must contain every action the request needs.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import copy
import ctypes
import datetime
import fnmatch
import hashlib
import math
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import jwt
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.registry_server import RegistryServer, start_registry

ALL_ACTIONS = frozenset({"pull", "push", "delete"})
SERVICE = "ociflow-test-registry"
ISSUER = "ociflow-test-token-server"

# distribution's registry/auth/token adds this to ``exp`` (and subtracts it from ``nbf``).
REGISTRY_LEEWAY = 60

_TOKEN_AUTH = """\
auth:
  token:
    realm: {realm}
    service: {service}
    issuer: {issuer}
    rootcertbundle: {bundle}
"""

_HTPASSWD_AUTH = """\
auth:
  htpasswd:
    realm: {realm}
    path: {path}
"""


# --------------------------------------------------------------------------------------------
# Signing key and certificate


@dataclass(frozen=True)
class SigningKey:
    """An EC P-256 key and its self-signed certificate (the registry's ``rootcertbundle``)."""

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @classmethod
    def generate(cls) -> SigningKey:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ociflow test token signer")])
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256())
        )
        return cls(key, cert)

    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def x5c(self) -> list[str]:
        """The JWS ``x5c`` header: the chain as standard base64 DER, leaf first."""
        return [base64.b64encode(self.cert.public_bytes(serialization.Encoding.DER)).decode()]

    @property
    def key_id(self) -> str:
        """libtrust's key ID: base32 of the first 240 bits of SHA-256(DER SPKI), 4-char groups."""
        spki = self.key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        encoded = base64.b32encode(hashlib.sha256(spki).digest()[:30]).decode().rstrip("=")
        return ":".join(encoded[i : i + 4] for i in range(0, len(encoded), 4))


# --------------------------------------------------------------------------------------------
# Scopes


@dataclass(frozen=True)
class Scope:
    """One resource scope ``type:name:action,...`` (protocol.md §3.5)."""

    type: str
    name: str
    actions: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> Scope:
        # The name may hold a host:port colon, so split the type at the first colon and the
        # actions at the last one.
        kind, sep, rest = text.partition(":")
        name, sep2, actions = rest.rpartition(":")
        if not sep or not sep2 or not kind or not name:
            raise ValueError(f"malformed scope {text!r}")
        kind = kind.split("(", 1)[0]  # "repository(plugin)": the class is ignored
        return cls(kind, name, tuple(a for a in actions.split(",") if a))

    def __str__(self) -> str:
        return f"{self.type}:{self.name}:{','.join(self.actions)}"


def _split_scopes(values: list[str]) -> list[str]:
    """Each value may itself hold several space-separated scopes."""
    return [part for value in values for part in value.split(" ") if part]


# --------------------------------------------------------------------------------------------
# Token server


@dataclass
class TokenPolicy:
    """What the token server grants and how it answers. Change it with :meth:`TokenServer.update`.

    ``grants``: user → {fnmatch pattern of repository name → actions}; a user absent from it
    may do :data:`ALL_ACTIONS` on any repository; the actions of all matching patterns add up.
    ``registry:catalog:*`` is granted to any authenticated user.
    ``anonymous_actions``: ``None`` refuses requests without credentials (401); a set (even
    empty) issues anonymous tokens with those actions on any repository.
    ``ttl``: seconds the *registry* accepts a token for (the ``exp`` claim is set 60 s early to
    cancel distribution's leeway; it is rounded up to a whole second, so a token lives between
    ``ttl`` and ``ttl + 1`` s). ``expires_in``: what the JSON tells the client (``None``: ``ttl``
    rounded up), independent of ``ttl``.
    ``fields``: which of ``token``/``access_token`` the JSON carries; ``include_expires_in`` and
    ``include_issued_at`` drop those keys when false.
    ``key_header``: how the JWS header names the signing key: ``x5c`` (cert chain) or ``kid``.
    """

    users: dict[str, str] = field(default_factory=dict)
    grants: dict[str, dict[str, set[str]]] = field(default_factory=dict)
    anonymous_actions: set[str] | None = None
    ttl: float = 300.0
    expires_in: int | None = None
    fields: Literal["both", "token", "access_token"] = "both"
    include_expires_in: bool = True
    include_issued_at: bool = True
    key_header: Literal["x5c", "kid"] = "x5c"

    def actions_for(self, user: str | None, scope: Scope) -> set[str]:
        """The actions of ``scope`` that ``user`` (``None``: anonymous) is granted."""
        wanted = set(scope.actions)
        if scope.type == "registry":
            return wanted if user is not None and scope.name == "catalog" else set()
        if scope.type != "repository":
            return set()
        if user is None:
            return wanted & (self.anonymous_actions or set())
        patterns = self.grants.get(user)
        if patterns is None:
            return wanted & ALL_ACTIONS
        allowed: set[str] = set()
        for pattern, actions in patterns.items():
            if fnmatch.fnmatchcase(scope.name, pattern):
                allowed |= actions
        return wanted & allowed


@dataclass(frozen=True)
class TokenRequest:
    """One journal entry.

    ``method``: ``GET`` or ``POST``; ``scopes``: requested scope strings in order, split at
    spaces; ``user``: the username presented (Basic, form ``username``, or the owner of the
    refresh token), ``None`` when anonymous; ``grant_type``: the POST form's, ``None`` for GET;
    ``time``: ``time.monotonic()`` at arrival; ``status``: what was answered; ``granted``: the
    scopes put in the token (empty when none was issued); ``service``, ``client_id``,
    ``offline``: as sent (``offline`` = ``offline_token=true`` or ``access_type=offline``).
    """

    method: str
    scopes: list[str]
    user: str | None
    grant_type: str | None
    time: float
    status: int
    granted: list[str]
    service: str | None
    client_id: str | None
    offline: bool


@dataclass
class _Fault:
    remaining: int
    status: int
    body: bytes
    headers: dict[str, str]


class TokenServer:
    """A Docker-style token server (token.md GET and oauth.md POST) on ``127.0.0.1``.

    ``GET /token?service=S&scope=..&scope=..[&offline_token=true&client_id=..]`` with optional
    ``Authorization: Basic``; ``POST /token`` form with ``grant_type=password`` (``username``,
    ``password``) or ``grant_type=refresh_token`` (``refresh_token``), plus ``service``,
    ``client_id`` (both required), optional ``scope`` (space separated) and
    ``access_type=offline``. Answers JSON ``token``, ``access_token``, ``expires_in``,
    ``issued_at`` (and ``refresh_token``, ``scope`` when asked); a wrong password or unknown
    refresh token → 401; a ``service`` other than ours or a malformed request → 400.
    Granted actions are the intersection of requested and allowed, never an error.

    Thread-safe: :meth:`update`, :meth:`fail_next`, :meth:`journal`, :meth:`clear_journal` and
    :attr:`tokens_issued` may be used from any thread while it serves.
    """

    def __init__(
        self,
        *,
        service: str = SERVICE,
        issuer: str = ISSUER,
        policy: TokenPolicy | None = None,
        signing_key: SigningKey | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        self.service = service
        self.issuer = issuer
        self.signing_key = signing_key or SigningKey.generate()
        self.host = host
        self.port = 0
        self._policy = copy.deepcopy(policy or TokenPolicy())
        self._lock = threading.Lock()
        self._journal: list[TokenRequest] = []
        self._faults: list[_Fault] = []
        self._refresh_tokens: dict[str, str] = {}  # refresh token -> user
        self._issued = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def realm(self) -> str:
        return f"http://{self.host}:{self.port}/token"

    def start(self) -> TokenServer:
        """Serve from a new daemon thread with its own event loop; returns once listening."""
        sock = socket.socket()
        sock.bind((self.host, 0))
        self.port = int(sock.getsockname()[1])
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._serve(sock))
            except BaseException as exc:  # reported to start() below
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=run, name=f"token-server-{self.port}", daemon=True)
        self._thread.start()
        ready.wait(timeout=20)
        if failure or not ready.is_set():
            raise RuntimeError(f"token server did not start on {self.host}:{self.port}: {failure}")
        return self

    async def _serve(self, sock: socket.socket) -> None:
        app = web.Application()
        app.router.add_get("/token", self._handle)
        app.router.add_post("/token", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.SockSite(self._runner, sock).start()

    def stop(self) -> None:
        """Stop serving and join the thread; calling it twice is harmless."""
        loop, thread, runner = self._loop, self._thread, self._runner
        if loop is None or thread is None or not thread.is_alive():
            return
        if runner is not None:
            asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        self._thread = None

    # -- test controls -----------------------------------------------------------------------

    @property
    def policy(self) -> TokenPolicy:
        """A snapshot of the policy (change it with :meth:`update`)."""
        with self._lock:
            return copy.deepcopy(self._policy)

    def update(self, **changes: Any) -> None:
        """Change :class:`TokenPolicy` fields at once, e.g. ``update(ttl=2.0, expires_in=300)``."""
        with self._lock:
            self._policy = replace(self._policy, **copy.deepcopy(changes))

    def reset(self, policy: TokenPolicy) -> None:
        """Install ``policy`` and drop pending faults, the journal and refresh tokens.

        For a shared (session-scoped) server between tests; ``tokens_issued`` keeps counting.
        """
        with self._lock:
            self._policy = copy.deepcopy(policy)
            self._faults.clear()
            self._journal.clear()
            self._refresh_tokens.clear()

    def fail_next(
        self, count: int, status: int, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> None:
        """Answer the next ``count`` token requests with ``status`` (after any earlier faults)."""
        with self._lock:
            self._faults.append(_Fault(count, status, body, dict(headers or {})))

    def journal(self) -> list[TokenRequest]:
        """A copy of the journal, oldest first."""
        with self._lock:
            return list(self._journal)

    def clear_journal(self) -> None:
        with self._lock:
            self._journal.clear()

    @property
    def tokens_issued(self) -> int:
        """How many access tokens were issued over HTTP since start (not reset by clearing)."""
        with self._lock:
            return self._issued

    def mint(self, scopes: list[str], *, user: str | None = None, ttl: float | None = None) -> str:
        """A token granting exactly ``scopes`` (no policy check), for tests that need one."""
        policy = self.policy
        return self._sign([Scope.parse(s) for s in scopes], user, policy, ttl)

    # -- protocol ----------------------------------------------------------------------------

    def _sign(
        self, access: list[Scope], user: str | None, policy: TokenPolicy, ttl: float | None = None
    ) -> str:
        now = time.time()
        lifetime = policy.ttl if ttl is None else ttl
        claims = {
            "iss": self.issuer,
            "sub": user or "",
            "aud": self.service,  # distribution 2.8 unmarshals aud into a string
            # Integers: distribution 2.8 unmarshals nbf/exp into int64.
            "exp": math.ceil(now + lifetime) - REGISTRY_LEEWAY,
            "nbf": int(now) - REGISTRY_LEEWAY,
            "iat": int(now) - REGISTRY_LEEWAY,
            "jti": secrets.token_hex(16),
            "access": [
                {"type": s.type, "name": s.name, "actions": list(s.actions)} for s in access
            ],
        }
        headers: dict[str, Any] = {"typ": "JWT"}
        if policy.key_header == "kid":
            headers["kid"] = self.signing_key.key_id
        else:
            headers["x5c"] = self.signing_key.x5c
        return jwt.encode(claims, self.signing_key.key, algorithm="ES256", headers=headers)

    async def _handle(self, request: web.Request) -> web.Response:
        arrived = time.monotonic()
        form = await request.post() if request.method == "POST" else None
        with self._lock:
            policy = self._policy
            fault = self._take_fault()
        query = request.query
        if form is None:
            scopes = _split_scopes(query.getall("scope", []))
            service = query.get("service")
            client_id = query.get("client_id")
            offline = query.get("offline_token") == "true"
            grant_type = None
        else:
            scopes = _split_scopes([str(v) for v in form.getall("scope", [])])
            service = _form_str(form, "service")
            client_id = _form_str(form, "client_id")
            offline = _form_str(form, "access_type") == "offline"
            grant_type = _form_str(form, "grant_type")

        def record(status: int, user: str | None, granted: list[str]) -> None:
            entry = TokenRequest(
                request.method, scopes, user, grant_type, arrived, status, granted, service,
                client_id, offline,
            )  # fmt: skip
            with self._lock:
                self._journal.append(entry)

        user, authenticated, problem = self._identify(request, form, policy)
        if fault is not None:
            record(fault.status, user, [])
            return web.Response(status=fault.status, body=fault.body, headers=fault.headers)
        if problem is not None:
            status, message = problem
            record(status, user, [])
            return _error(status, message, basic=status == 401)
        if service != self.service:
            record(400, user, [])
            return _error(400, "invalid_request: unknown or missing service")
        if form is not None and not client_id:
            record(400, user, [])
            return _error(400, "invalid_request: client_id is required")
        if not authenticated:
            record(401, user, [])
            return _error(401, "unauthorized: authentication required", basic=True)
        try:
            parsed = [Scope.parse(s) for s in scopes]
        except ValueError:
            record(400, user, [])
            return _error(400, "invalid_request: malformed scope")

        granted = [
            Scope(s.type, s.name, tuple(a for a in s.actions if a in allowed))
            for s in parsed
            if (allowed := policy.actions_for(user, s))
        ]
        token = self._sign(granted, user, policy)
        now = datetime.datetime.now(datetime.UTC)
        body: dict[str, Any] = {}
        if policy.fields in ("both", "token"):
            body["token"] = token
        if policy.fields in ("both", "access_token"):
            body["access_token"] = token
        if policy.include_expires_in:
            reported = policy.expires_in
            body["expires_in"] = math.ceil(policy.ttl) if reported is None else reported
        if policy.include_issued_at:
            body["issued_at"] = now.isoformat().replace("+00:00", "Z")
        if form is not None:
            body["scope"] = " ".join(str(s) for s in granted)
        if offline and user is not None:
            refresh = secrets.token_urlsafe(24)
            body["refresh_token"] = refresh
            with self._lock:
                self._refresh_tokens[refresh] = user
        with self._lock:
            self._issued += 1
        record(200, user, [str(s) for s in granted])
        return web.json_response(body)

    def _take_fault(self) -> _Fault | None:
        while self._faults:
            fault = self._faults[0]
            if fault.remaining <= 0:
                self._faults.pop(0)
                continue
            fault.remaining -= 1
            return fault
        return None

    def _identify(
        self, request: web.Request, form: Any, policy: TokenPolicy
    ) -> tuple[str | None, bool, tuple[int, str] | None]:
        """(user, authenticated, problem): who asks, whether that is accepted, or why not."""
        if form is None:
            header = request.headers.get("Authorization", "")
            if not header:
                return None, policy.anonymous_actions is not None, None
            scheme, _, value = header.partition(" ")
            if scheme.lower() != "basic":
                return None, False, (400, "invalid_request: unsupported Authorization scheme")
            try:
                user, colon, password = (
                    base64.b64decode(value, validate=True).decode().partition(":")
                )
            except (binascii.Error, UnicodeDecodeError):
                return None, False, (400, "invalid_request: malformed Basic credentials")
            if not colon or policy.users.get(user) != password:
                return user, False, (401, "unauthorized: wrong username or password")
            return user, True, None
        grant = _form_str(form, "grant_type")
        if grant == "password":
            name = _form_str(form, "username")
            if name is None or policy.users.get(name) != _form_str(form, "password"):
                return name, False, (401, "unauthorized: wrong username or password")
            return name, True, None
        if grant == "refresh_token":
            with self._lock:
                owner = self._refresh_tokens.get(_form_str(form, "refresh_token") or "")
            if owner is None or owner not in policy.users:
                return owner, False, (401, "unauthorized: invalid refresh token")
            return owner, True, None
        return None, False, (400, "unsupported_grant_type")


def _form_str(form: Any, name: str) -> str | None:
    value = form.get(name)
    return value if isinstance(value, str) else None


def _error(status: int, message: str, *, basic: bool = False) -> web.Response:
    headers = {"WWW-Authenticate": 'Basic realm="ociflow-test-token-server"'} if basic else None
    error, _, description = message.partition(": ")
    return web.json_response(
        {"error": error, "error_description": description, "details": message},
        status=status,
        headers=headers,
    )


# --------------------------------------------------------------------------------------------
# Registries


def _launch(base: Path, auth_config: str) -> RegistryServer:
    """The suite's registry with ``auth_config`` added; ready once ``/v2/`` challenges."""
    return start_registry(base, extra_config=auth_config)


def start_token_registry(
    workdir: Path,
    *,
    users: dict[str, str] | None = None,
    policy: TokenPolicy | None = None,
    service: str = SERVICE,
    issuer: str = ISSUER,
) -> tuple[RegistryServer, TokenServer]:
    """A token server and a registry that trusts it; the caller stops both (registry first).

    ``users`` (name → password) seeds the policy's ``users``; ``policy`` sets the rest.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    policy = copy.deepcopy(policy or TokenPolicy())
    if users is not None:
        policy.users = dict(users)
    tokens = TokenServer(service=service, issuer=issuer, policy=policy).start()
    try:
        bundle = workdir / "token-signer.pem"
        bundle.write_bytes(tokens.signing_key.cert_pem())
        auth = _TOKEN_AUTH.format(realm=tokens.realm, service=service, issuer=issuer, bundle=bundle)
        return _launch(workdir, auth), tokens
    except BaseException:
        tokens.stop()
        raise


@contextmanager
def token_registry(workdir: Path, **kwargs: Any) -> Iterator[tuple[RegistryServer, TokenServer]]:
    """:func:`start_token_registry` as a context manager that stops both on exit."""
    registry, tokens = start_token_registry(workdir, **kwargs)
    try:
        yield registry, tokens
    finally:
        registry.stop()
        tokens.stop()


_CRYPT_LOCK = threading.Lock()  # libxcrypt's crypt() returns a static buffer


def bcrypt_hash(password: str, cost: int = 4) -> str:
    """A ``$2y$`` bcrypt hash from the system's libxcrypt (``libcrypt.so.1``, always on Debian).

    Cost 4 (bcrypt's minimum) because the registry checks the hash on every request.
    """
    lib = ctypes.CDLL("libcrypt.so.1")
    lib.crypt_gensalt.restype = ctypes.c_char_p
    lib.crypt_gensalt.argtypes = [ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p, ctypes.c_int]
    lib.crypt.restype = ctypes.c_char_p
    lib.crypt.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    with _CRYPT_LOCK:
        salt = lib.crypt_gensalt(b"$2y$", cost, None, 0)
        hashed = lib.crypt(password.encode(), salt) if salt else None
    if not hashed or not hashed.startswith(b"$2y$"):
        raise RuntimeError("libcrypt.so.1 cannot make bcrypt hashes")
    return str(hashed.decode())


def start_htpasswd_registry(
    workdir: Path, users: dict[str, str], *, realm: str = "ociflow-test"
) -> RegistryServer:
    """A registry with htpasswd Basic auth for ``users`` (name → password), plain HTTP.

    distribution reads the file once at start: users are fixed for the registry's life.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    htpasswd = workdir / "htpasswd"
    htpasswd.write_text("".join(f"{name}:{bcrypt_hash(pw)}\n" for name, pw in users.items()))
    return _launch(workdir, _HTPASSWD_AUTH.format(realm=realm, path=htpasswd))
