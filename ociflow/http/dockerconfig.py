"""Registry credentials from Docker-style config files and credential helpers (protocol §3.8-9).

One config file is read; without an explicit ``auth_file`` the first that exists of:

1. ``$DOCKER_CONFIG/config.json`` when ``DOCKER_CONFIG`` is set (and not empty), else
   ``$HOME/.docker/config.json``: as in Docker, a set ``DOCKER_CONFIG`` replaces the home
   directory's file, even when there is no file in it;
2. ``$REGISTRY_AUTH_FILE``;
3. ``$XDG_RUNTIME_DIR/containers/auth.json``.

No file at all means anonymous access everywhere. For one registry host the sources are tried in
this order:

1. the helper ``credHelpers[host]``, else the helper ``credsStore`` (``docker-credential-<name>
   get`` on ``PATH``); an empty name means no helper, as in Docker;
2. when the helper has no credentials for the host (or there is no helper), the ``auths`` entry.

Helpers are searched for in the absolute directories of ``PATH`` only: empty and relative
entries (``/usr/bin:``, ``::``, ``.``) would find a program in the working directory, such as a
cloned repository, and are skipped, as Go (1.19+) and so Docker refuse them.

Keys of ``auths`` and ``credHelpers`` are compared without scheme, and without a legacy Docker
path (``/v1/``, ``/v2/``, ``/``); ``https://index.docker.io/v1/``, ``index.docker.io``,
``registry-1.docker.io`` and ``docker.io`` all mean Docker Hub (reliability.md A10). A key with
any other path is a namespace (``quay.io/team-a``, as podman writes) and holds the identity of
that part of the registry only, so it is ignored rather than used for the whole host; lookups
are per host, and per-repository matching is not implemented.

A configured helper that is missing, fails, hangs or floods its output is an
:class:`~ociflow.errors.AuthenticationError`, never a silent fall back to anonymous (A7, A9);
helper names are checked before anything runs (A8). Error messages name the file, helper and
host, never a secret nor a helper's output (S1); a file or helper answer that is not JSON
(including one nested too deeply to parse) is such an error too.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ociflow.errors import AuthenticationError
from ociflow.http.credentials import IDENTITY_TOKEN_USER, Credentials

DOCKER_HUB = "docker.io"
"""How ociflow's references name Docker Hub."""

DOCKER_HUB_SERVER_URL = "https://index.docker.io/v1/"
"""How Docker names Docker Hub in ``auths`` and to credential helpers."""

_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})

HELPER_OUTPUT_LIMIT = 1 << 20
"""A helper printing more than this (1 MiB) is killed; real answers are a few hundred bytes."""

_NOT_FOUND = b"credentials not found in native keychain"
_HELPER_NAME = re.compile(r"[A-Za-z0-9._-]+")


class Keychain:
    """Looks up the credentials of registry hosts in one Docker-style config file.

    ``env`` (default ``os.environ``) supplies ``DOCKER_CONFIG``, ``HOME``,
    ``REGISTRY_AUTH_FILE``, ``XDG_RUNTIME_DIR`` and ``PATH``, and is the environment helpers
    run in. The file is read on the first :meth:`lookup`; answers (including "none") are cached
    per host for the keychain's life. Safe to call from several threads.
    """

    def __init__(
        self,
        auth_file: str | os.PathLike[str] | None = None,
        *,
        env: Mapping[str, str] | None = None,
        helper_timeout: float = 30.0,
    ) -> None:
        if not helper_timeout > 0:
            raise ValueError("helper_timeout must be positive")
        self._auth_file = Path(auth_file) if auth_file is not None else None
        self._env = dict(os.environ if env is None else env)
        self._helper_timeout = helper_timeout
        self._config: _Config | None = None
        self._config_lock = threading.Lock()
        self._lock = threading.Lock()
        self._host_locks: dict[str, threading.Lock] = {}
        self._cache: dict[str, Credentials | None] = {}

    def lookup(self, host: str) -> Credentials | None:
        """Credentials for registry ``host`` (``docker.io``, ``ghcr.io``, ``localhost:5000``),
        or None for anonymous access.

        Raises :class:`~ociflow.errors.AuthenticationError` when the config file is unreadable
        or malformed, or a configured helper is invalid, missing or fails. Errors are not cached.
        """
        key = _normalize_host(host)
        if not key:
            raise ValueError("registry host must not be empty")
        with self._lock:
            if key in self._cache:
                return self._cache[key]
            host_lock = self._host_locks.setdefault(key, threading.Lock())
        # One resolution per host at a time: a second thread waits for the first one's answer
        # instead of running the same helper again; other hosts are not held up.
        with host_lock:
            with self._lock:
                if key in self._cache:
                    return self._cache[key]
            credentials = self._resolve(key)
            with self._lock:
                self._cache[key] = credentials
            return credentials

    def _resolve(self, host: str) -> Credentials | None:
        config = self._load()
        helper = _pick(config.cred_helpers, host)
        if helper is None:
            helper = config.creds_store
        if helper:
            credentials = self._run_helper(helper, host, config.path)
            if credentials is not None:
                return credentials
        for key, entry in _matching(config.auths, host):
            credentials = _entry_credentials(entry, key, config.path)
            if credentials is not None:
                return credentials
        return None

    def _load(self) -> _Config:
        with self._config_lock:
            if self._config is None:
                path = self._find_file()
                self._config = _Config.empty() if path is None else _read_config(path)
            return self._config

    def _find_file(self) -> Path | None:
        if self._auth_file is not None:
            if not self._auth_file.is_file():
                raise AuthenticationError(f"auth file {self._auth_file} is missing or not a file")
            return self._auth_file
        env = self._env
        candidates: list[Path] = []
        # Docker reads $DOCKER_CONFIG instead of ~/.docker, not before it: no fall back to HOME.
        if env.get("DOCKER_CONFIG"):
            candidates.append(Path(env["DOCKER_CONFIG"]) / "config.json")
        elif env.get("HOME"):
            candidates.append(Path(env["HOME"]) / ".docker" / "config.json")
        if env.get("REGISTRY_AUTH_FILE"):
            candidates.append(Path(env["REGISTRY_AUTH_FILE"]))
        if env.get("XDG_RUNTIME_DIR"):
            candidates.append(Path(env["XDG_RUNTIME_DIR"]) / "containers" / "auth.json")
        return next((path for path in candidates if path.is_file()), None)

    def _run_helper(self, name: str, host: str, config_path: Path | None) -> Credentials | None:
        program = f"docker-credential-{name}"
        where = f" (from {config_path})" if config_path else ""
        if not _valid_helper_name(name):
            raise AuthenticationError(
                f"credential helper name {name!r}{where} for {host} is not allowed: "
                "it must be letters, digits, '.', '_' or '-'"
            )
        label = f"credential helper {program}{where} for {host}"
        path = _find_program(program, self._env.get("PATH", os.defpath))
        if path is None:
            raise AuthenticationError(f"{label}: {program} is not on PATH")
        if not os.path.isabs(path):
            # Windows' search tries the working directory first; never run what it finds there.
            raise AuthenticationError(f"{label}: {program} resolves to a relative path, refused")
        server_url = DOCKER_HUB_SERVER_URL if host == DOCKER_HUB else host
        try:
            status, stdout = _exec_helper(path, server_url, self._env, self._helper_timeout)
        except _HelperTimeout:
            raise AuthenticationError(
                f"{label} did not answer within {self._helper_timeout:g} s and was killed"
            ) from None
        except _HelperFlood:
            raise AuthenticationError(
                f"{label} printed more than {HELPER_OUTPUT_LIMIT} bytes and was killed"
            ) from None
        except OSError as exc:
            raise AuthenticationError(f"{label} could not be run: {exc.strerror}") from None
        if status != 0:
            if stdout.strip() == _NOT_FOUND:
                return None
            # stdout carries the helper's message, which may quote secrets: never shown.
            raise AuthenticationError(f"{label} exited with status {status}")
        return _helper_credentials(stdout, label)


@dataclass(frozen=True)
class _Config:
    """The parts of a config file that hold credentials. ``path`` is None for "no file"."""

    path: Path | None
    auths: Mapping[str, Any]
    cred_helpers: Mapping[str, str]
    creds_store: str

    @classmethod
    def empty(cls) -> _Config:
        return cls(path=None, auths={}, cred_helpers={}, creds_store="")


def _read_config(path: Path) -> _Config:
    """Parse ``path``; structure is checked here, ``auths`` entries only when used."""
    try:
        data = json.loads(path.read_bytes())
    except OSError as exc:
        raise AuthenticationError(f"auth file {path} cannot be read: {exc.strerror}") from None
    # JSONDecodeError and UnicodeDecodeError may quote the text; RecursionError is deep nesting.
    except (ValueError, RecursionError):
        raise AuthenticationError(f"auth file {path} is not valid JSON") from None
    if not isinstance(data, dict):
        raise AuthenticationError(f"auth file {path} is not a JSON object")
    auths = _field(data, "auths", {})
    helpers = _field(data, "credHelpers", {})
    store = _field(data, "credsStore", "")
    if not isinstance(auths, dict):
        raise AuthenticationError(f"auth file {path}: 'auths' is not an object")
    if not isinstance(helpers, dict) or not all(isinstance(v, str) for v in helpers.values()):
        raise AuthenticationError(f"auth file {path}: 'credHelpers' is not an object of names")
    if not isinstance(store, str):
        raise AuthenticationError(f"auth file {path}: 'credsStore' is not a name")
    return _Config(path=path, auths=auths, cred_helpers=helpers, creds_store=store)


def _field(obj: Mapping[str, Any], name: str, default: Any) -> Any:
    """``obj[name]``, with ``default`` for a missing or ``null`` field."""
    value = obj.get(name)
    return default if value is None else value


def _split_key(key: str) -> tuple[str, str]:
    """A config key or host as (host, path): no scheme, lower-cased, Docker Hub as
    ``docker.io``; the path is empty or starts with ``/``."""
    text = key.strip().lower()
    for scheme in ("https://", "http://"):
        if text.startswith(scheme):
            text = text[len(scheme) :]
            break
    host, slash, path = text.partition("/")
    return (DOCKER_HUB if host in _HUB_ALIASES else host), slash + path


def _normalize_host(key: str) -> str:
    """A config key or host without scheme and path, lower-cased, Docker Hub as ``docker.io``."""
    return _split_key(key)[0]


def _key_host(key: str) -> str | None:
    """The host a config key stands for, or None for a namespace key (``quay.io/team-a``):
    only no path, ``/`` and the legacy ``/v1/`` and ``/v2/`` mean the whole host."""
    host, path = _split_key(key)
    return host if path.rstrip("/") in ("", "/v1", "/v2") else None


def _matching(mapping: Mapping[str, Any], host: str) -> list[tuple[str, Any]]:
    """The items of ``mapping`` whose key means ``host``: the canonical key first (Docker's own
    spelling wins over legacy ``https://host/v1/`` forms), then in file order."""
    canonical = DOCKER_HUB_SERVER_URL if host == DOCKER_HUB else host
    items = [(key, value) for key, value in mapping.items() if _key_host(key) == host]
    items.sort(key=lambda item: item[0] != canonical)  # stable: file order otherwise
    return items


def _pick(mapping: Mapping[str, str], host: str) -> str | None:
    items = _matching(mapping, host)
    return items[0][1] if items else None


def _entry_credentials(entry: Any, key: str, path: Path | None) -> Credentials | None:
    """An ``auths`` entry as credentials; None for an empty marker entry ``{}``."""
    where = f"auth file {path}: auths entry {key!r}"
    if not isinstance(entry, dict):
        raise AuthenticationError(f"{where} is not an object")
    fields: dict[str, str] = {}
    for name in ("auth", "username", "password", "identitytoken", "registrytoken"):
        value = _field(entry, name, "")
        if not isinstance(value, str):
            raise AuthenticationError(f"{where}: {name!r} is not a string")
        fields[name] = value
    if fields["registrytoken"]:
        return Credentials(registry_token=fields["registrytoken"])
    username, password = fields["username"], fields["password"]
    if fields["auth"]:
        username, password = _decode_auth(fields["auth"], where)
    if fields["identitytoken"]:
        return Credentials(username=username, identity_token=fields["identitytoken"])
    if username or password:
        return Credentials(username=username, password=password)
    return None


def _decode_auth(auth: str, where: str) -> tuple[str, str]:
    """``auth`` = base64 of ``user:password``; split at the first colon, trailing NULs dropped
    from the password (as Docker does)."""
    try:
        text = base64.b64decode(auth, validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        raise AuthenticationError(f"{where}: 'auth' is not base64 of UTF-8 text") from None
    username, sep, password = text.partition(":")
    if not sep:
        raise AuthenticationError(f"{where}: 'auth' is not user:password")
    if not username:
        raise AuthenticationError(f"{where}: 'auth' has an empty user name")
    return username, password.rstrip("\x00")


def _valid_helper_name(name: str) -> bool:
    return bool(_HELPER_NAME.fullmatch(name)) and ".." not in name


def _find_program(program: str, search_path: str) -> str | None:
    """``program`` in the absolute directories of ``search_path``; empty and relative entries
    would mean the working directory and are skipped."""
    directories = [entry for entry in search_path.split(os.pathsep) if os.path.isabs(entry)]
    if not directories:  # shutil.which would fall back to os.environ for path=None, not for ""
        return None
    return shutil.which(program, path=os.pathsep.join(directories))


def _helper_credentials(stdout: bytes, label: str) -> Credentials | None:
    """The ``get`` answer ``{"ServerURL", "Username", "Secret"}`` as credentials."""
    try:
        answer = json.loads(stdout)
    except (ValueError, RecursionError):  # RecursionError: deeply nested output
        answer = None
    username = answer.get("Username", "") if isinstance(answer, dict) else None
    secret = answer.get("Secret", "") if isinstance(answer, dict) else None
    if not isinstance(username, str) or not isinstance(secret, str):
        raise AuthenticationError(f"{label} answered with malformed output")
    if username == IDENTITY_TOKEN_USER:
        return Credentials(identity_token=secret) if secret else None
    if not username and not secret:
        return None
    return Credentials(username=username, password=secret)


class _HelperTimeout(Exception):
    pass


class _HelperFlood(Exception):
    pass


def _exec_helper(
    path: str, server_url: str, env: Mapping[str, str], timeout: float
) -> tuple[int, bytes]:
    """Run ``path get`` with ``server_url`` on stdin; its exit status and stdout.

    The helper gets no terminal: stdin is a pipe, stderr is discarded, and on POSIX it runs in
    its own session so it cannot open the controlling TTY. On a timeout or more than
    :data:`HELPER_OUTPUT_LIMIT` bytes of output its whole process group is killed.
    """
    posix = os.name == "posix"
    proc = subprocess.Popen(
        [path, "get"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=dict(env),
        close_fds=True,
        start_new_session=posix,
    )
    assert proc.stdin is not None and proc.stdout is not None
    deadline = time.monotonic() + timeout
    output = bytearray()
    flooded = threading.Event()

    def kill() -> None:
        # The group, not just the helper: a child left behind would hold stdout open.
        try:
            if posix:
                os.killpg(proc.pid, signal.SIGKILL)
            else:
                proc.kill()
        except (ProcessLookupError, PermissionError):
            pass

    def pump(fd: int) -> None:
        while chunk := os.read(fd, 65536):
            if len(output) + len(chunk) > HELPER_OUTPUT_LIMIT:
                flooded.set()
                kill()
                return
            output.extend(chunk)

    reader = threading.Thread(target=pump, args=(proc.stdout.fileno(),), daemon=True)
    reader.start()
    try:
        # A few bytes: always fits the pipe buffer, so this cannot block on a helper that
        # does not read stdin.
        proc.stdin.write(server_url.encode())
        proc.stdin.close()
    except OSError:  # the helper exited without reading; its status tells the rest
        pass
    reader.join(timeout)
    if reader.is_alive():
        kill()
        proc.wait()
        # A process that left the group may still hold stdout; do not wait for it forever.
        reader.join(1.0)
        if not reader.is_alive():
            proc.stdout.close()
        raise _HelperTimeout
    proc.stdout.close()
    if flooded.is_set():
        proc.wait()
        raise _HelperFlood
    try:
        status = proc.wait(max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:  # closed stdout but kept running
        kill()
        proc.wait()
        raise _HelperTimeout from None
    return status, bytes(output)
