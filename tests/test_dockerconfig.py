"""Keychain: Docker config files and credential helpers (protocol.md §3.8-9, A7-A10, S1).

Config files are real files under ``tmp_path``; helpers are real executables on the ``PATH`` of
the environment handed to the keychain.
"""

from __future__ import annotations

import base64
import json
import stat
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from ociflow.errors import AuthenticationError
from ociflow.http.credentials import Credentials
from ociflow.http.dockerconfig import Keychain

HUB_URL = "https://index.docker.io/v1/"
NOT_FOUND = "credentials not found in native keychain"
SYSTEM_PATH = "/usr/bin:/bin"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def write_json(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


class Env:
    """A home, a bin dir for helpers, and the environment a keychain sees."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.home = root / "home"
        self.bin = root / "bin"
        self.home.mkdir()
        self.bin.mkdir()
        self.vars: dict[str, str] = {
            "HOME": str(self.home),
            "PATH": f"{self.bin}:{SYSTEM_PATH}",
        }

    def config(self, data: Any) -> Path:
        """Write ``$HOME/.docker/config.json``."""
        return write_json(self.home / ".docker" / "config.json", data)

    def keychain(self, **kwargs: Any) -> Keychain:
        return Keychain(env=self.vars, **kwargs)

    def script(self, name: str, text: str) -> Path:
        path = self.bin / f"docker-credential-{name}"
        path.write_text(text)
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
        return path

    def python_helper(self, name: str, body: str) -> Path:
        """A helper in Python; ``url`` holds what it read on stdin, ``action`` its argv[1]."""
        prelude = (
            f"#!{sys.executable}\n"
            "import json, sys, time\n"
            "action = sys.argv[1]\n"
            "url = sys.stdin.read().strip()\n"
        )
        return self.script(name, prelude + body)

    def store_helper(self, name: str, store: dict[str, tuple[str, str]]) -> Path:
        """A well-behaved helper answering from ``store`` (server URL -> user, secret), which
        logs each call as ``action url`` to ``<bin>/<name>.log``."""
        log = self.bin / f"{name}.log"
        return self.python_helper(
            name,
            f"store = {store!r}\n"
            f"with open({str(log)!r}, 'a') as f:\n"
            "    f.write(action + ' ' + url + '\\n')\n"
            "if url not in store:\n"
            f"    print({NOT_FOUND!r})\n"
            "    sys.exit(1)\n"
            "user, secret = store[url]\n"
            "print(json.dumps({'ServerURL': url, 'Username': user, 'Secret': secret}))\n",
        )

    def calls(self, name: str) -> list[str]:
        log = self.bin / f"{name}.log"
        return log.read_text().splitlines() if log.exists() else []


@pytest.fixture
def env(tmp_path: Path) -> Env:
    return Env(tmp_path)


def assert_hidden(credentials: Credentials | None, *secrets: str) -> None:
    assert credentials is not None
    for text in (repr(credentials), str(credentials)):
        for secret in secrets:
            assert secret not in text


# --- files -----------------------------------------------------------------------------------


def test_no_config_file_means_anonymous(env: Env) -> None:
    keychain = env.keychain()
    assert keychain.lookup("docker.io") is None
    assert keychain.lookup("localhost:5000") is None


def test_auth_field_is_split_at_first_colon(env: Env) -> None:
    env.config({"auths": {"ghcr.io": {"auth": b64("alice:pa:ss:word")}}})
    credentials = env.keychain().lookup("ghcr.io")
    assert credentials == Credentials(username="alice", password="pa:ss:word")
    assert_hidden(credentials, "pa:ss:word")


def test_trailing_nuls_are_trimmed_from_password(env: Env) -> None:
    env.config({"auths": {"ghcr.io": {"auth": b64("alice:secret\x00\x00")}}})
    assert env.keychain().lookup("ghcr.io") == Credentials(username="alice", password="secret")


def test_username_and_password_fields(env: Env) -> None:
    env.config({"auths": {"quay.io": {"username": "bob", "password": "hunter2"}}})
    credentials = env.keychain().lookup("quay.io")
    assert credentials == Credentials(username="bob", password="hunter2")
    assert_hidden(credentials, "hunter2")


def test_identity_token(env: Env) -> None:
    env.config(
        {
            "auths": {
                "myreg.azurecr.io": {
                    "auth": b64("00000000-0000-0000-0000-000000000000:"),
                    "identitytoken": "refresh-me-secret",
                }
            }
        }
    )
    credentials = env.keychain().lookup("myreg.azurecr.io")
    assert credentials == Credentials(
        username="00000000-0000-0000-0000-000000000000", identity_token="refresh-me-secret"
    )
    assert credentials.kind == "identity token"
    assert_hidden(credentials, "refresh-me-secret")


def test_registry_token(env: Env) -> None:
    env.config({"auths": {"ghcr.io": {"registrytoken": "bearer-secret"}}})
    credentials = env.keychain().lookup("ghcr.io")
    assert credentials == Credentials(registry_token="bearer-secret")
    assert_hidden(credentials, "bearer-secret")


def test_empty_entry_and_unknown_host_are_anonymous(env: Env) -> None:
    env.config({"auths": {"ghcr.io": {}, "quay.io": {"auth": b64("u:p")}}})
    keychain = env.keychain()
    assert keychain.lookup("ghcr.io") is None
    assert keychain.lookup("example.com") is None


@pytest.mark.parametrize(
    "key", [HUB_URL, "docker.io", "index.docker.io", "registry-1.docker.io", "http://docker.io"]
)
@pytest.mark.parametrize("host", ["docker.io", "index.docker.io", "registry-1.docker.io"])
def test_docker_hub_keys(env: Env, key: str, host: str) -> None:
    """A10: every spelling of Docker Hub in the file serves every spelling of the host."""
    env.config({"auths": {key: {"auth": b64("hubuser:hubpass")}}})
    assert env.keychain().lookup(host) == Credentials(username="hubuser", password="hubpass")


@pytest.mark.parametrize(
    ("key", "host"),
    [
        ("https://ghcr.io/v1/", "ghcr.io"),
        ("http://localhost:5000/", "localhost:5000"),
        ("localhost:5000", "localhost:5000"),
        ("https://[::1]:5000/v2/", "[::1]:5000"),
        ("GHCR.IO", "ghcr.io"),
        ("ghcr.io/v2", "ghcr.io"),
        ("https://ghcr.io/v1", "ghcr.io"),
        ("ghcr.io/", "ghcr.io"),
    ],
)
def test_keys_are_compared_without_scheme_and_legacy_path(env: Env, key: str, host: str) -> None:
    env.config({"auths": {key: {"auth": b64("u:p")}}})
    assert env.keychain().lookup(host) == Credentials(username="u", password="p")


def test_ports_and_hosts_are_distinct(env: Env) -> None:
    env.config({"auths": {"localhost:5000": {"auth": b64("u:p")}}})
    keychain = env.keychain()
    assert keychain.lookup("localhost") is None
    assert keychain.lookup("localhost:5001") is None
    assert keychain.lookup("docker.io") is None


@pytest.mark.parametrize(
    "keys",
    [
        ["quay.io/team-a", "quay.io/team-b"],
        ["https://quay.io/team-a/", "quay.io/team-a/app"],
        ["quay.io/v1/team-a"],
        ["quay.io/v3/"],
    ],
)
def test_namespace_keys_do_not_match_the_whole_host(env: Env, keys: list[str]) -> None:
    """``quay.io/team-a`` is one namespace's identity, not the host's: such keys are ignored."""
    env.config({"auths": {key: {"auth": b64(f"user{i}:pw{i}")} for i, key in enumerate(keys)}})
    assert env.keychain().lookup("quay.io") is None


def test_namespace_keys_of_docker_hub_are_ignored(env: Env) -> None:
    env.config(
        {
            "auths": {
                "docker.io/someorg": {"auth": b64("org:pw")},
                "https://index.docker.io/v1/access-token": {"auth": b64("tok:pw")},
            }
        }
    )
    assert env.keychain().lookup("docker.io") is None


def test_namespace_key_does_not_shadow_the_host_entry(env: Env) -> None:
    env.config(
        {
            "auths": {
                "quay.io/team-a": {"auth": b64("team-a:pw")},
                "https://quay.io/v1/": {"auth": b64("host:pw")},
            }
        }
    )
    assert env.keychain().lookup("quay.io") == Credentials(username="host", password="pw")


def test_namespace_key_in_cred_helpers_is_ignored(env: Env) -> None:
    env.store_helper("team", {"quay.io": ("team-a", "pw")})
    env.config(
        {"credHelpers": {"quay.io/team-a": "team"}, "auths": {"quay.io": {"auth": b64("u:p")}}}
    )
    assert env.keychain().lookup("quay.io") == Credentials(username="u", password="p")
    assert env.calls("team") == []


def test_canonical_key_wins_over_legacy_spelling(env: Env) -> None:
    env.config(
        {
            "auths": {
                "docker.io": {"auth": b64("legacy:old")},
                HUB_URL: {"auth": b64("current:new")},
            }
        }
    )
    assert env.keychain().lookup("docker.io") == Credentials(username="current", password="new")


# --- which file ------------------------------------------------------------------------------


def test_search_order_with_docker_config(env: Env) -> None:
    """$DOCKER_CONFIG/config.json, $REGISTRY_AUTH_FILE, $XDG_RUNTIME_DIR/containers/auth.json:
    the first that exists wins; as in Docker, $HOME is not consulted once DOCKER_CONFIG is set."""
    env.config({"auths": {"ghcr.io": {"auth": b64("home:pw")}}})
    files = {
        "docker_config": env.root / "dc" / "config.json",
        "registry_auth_file": env.root / "podman" / "my-auth.json",
        "xdg": env.root / "run" / "containers" / "auth.json",
    }
    for user, path in files.items():
        write_json(path, {"auths": {"ghcr.io": {"auth": b64(f"{user}:pw")}}})
    env.vars["DOCKER_CONFIG"] = str(env.root / "dc")
    env.vars["REGISTRY_AUTH_FILE"] = str(files["registry_auth_file"])
    env.vars["XDG_RUNTIME_DIR"] = str(env.root / "run")

    assert_search_order(env, files)


def assert_search_order(env: Env, files: dict[str, Path]) -> None:
    """Each file in turn is the one read (its user is found), then is removed."""
    for user, path in files.items():
        credentials = env.keychain().lookup("ghcr.io")
        assert credentials is not None
        assert credentials.username == user
        path.unlink()
    assert env.keychain().lookup("ghcr.io") is None


def test_search_order_without_docker_config(env: Env) -> None:
    """$HOME/.docker/config.json, $REGISTRY_AUTH_FILE, $XDG_RUNTIME_DIR/containers/auth.json."""
    files = {
        "home": env.home / ".docker" / "config.json",
        "registry_auth_file": env.root / "podman" / "my-auth.json",
        "xdg": env.root / "run" / "containers" / "auth.json",
    }
    for user, path in files.items():
        write_json(path, {"auths": {"ghcr.io": {"auth": b64(f"{user}:pw")}}})
    env.vars["DOCKER_CONFIG"] = ""  # empty means unset, as in Docker
    env.vars["REGISTRY_AUTH_FILE"] = str(files["registry_auth_file"])
    env.vars["XDG_RUNTIME_DIR"] = str(env.root / "run")

    assert_search_order(env, files)


def test_docker_config_without_a_file_does_not_fall_back_to_home(env: Env) -> None:
    env.config({"auths": {"ghcr.io": {"auth": b64("home:pw")}}})
    (env.root / "dc").mkdir()
    env.vars["DOCKER_CONFIG"] = str(env.root / "dc")
    assert env.keychain().lookup("ghcr.io") is None


def test_first_existing_file_wins_even_without_an_entry(env: Env) -> None:
    """Files are not merged: the first one is the whole truth."""
    write_json(env.root / "dc" / "config.json", {"auths": {}})
    env.config({"auths": {"ghcr.io": {"auth": b64("u:p")}}})
    env.vars["DOCKER_CONFIG"] = str(env.root / "dc")
    assert env.keychain().lookup("ghcr.io") is None


def test_explicit_auth_file_is_the_only_one_read(env: Env) -> None:
    env.config({"auths": {"ghcr.io": {"auth": b64("home:pw")}}})
    explicit = write_json(env.root / "auth.json", {"auths": {"quay.io": {"auth": b64("x:y")}}})
    keychain = env.keychain(auth_file=explicit)
    assert keychain.lookup("ghcr.io") is None
    assert keychain.lookup("quay.io") == Credentials(username="x", password="y")


def test_explicit_auth_file_missing_is_an_error(env: Env) -> None:
    env.config({"auths": {"ghcr.io": {"auth": b64("home:pw")}}})
    missing = env.root / "nope.json"
    with pytest.raises(AuthenticationError, match=r"nope\.json"):
        env.keychain(auth_file=str(missing)).lookup("ghcr.io")


# --- malformed files -------------------------------------------------------------------------


def test_malformed_json_names_the_file(env: Env) -> None:
    path = env.home / ".docker" / "config.json"
    path.parent.mkdir(parents=True)
    path.write_text('{"auths": {"ghcr.io": {"auth": "c2VjcmV0LXZhbHVl"}}')  # truncated
    with pytest.raises(AuthenticationError) as info:
        env.keychain().lookup("ghcr.io")
    assert str(path) in str(info.value)
    assert "c2VjcmV0LXZhbHVl" not in str(info.value)


@pytest.mark.parametrize(
    "config",
    [
        [],
        {"auths": []},
        {"auths": {"ghcr.io": "dXNlcjpwYXNz"}},
        {"auths": {"ghcr.io": {"auth": 42}}},
        {"credHelpers": {"ghcr.io": 1}},
        {"credsStore": ["desktop"]},
    ],
)
def test_malformed_structure_names_the_file(env: Env, config: Any) -> None:
    path = env.config(config)
    with pytest.raises(AuthenticationError) as info:
        env.keychain().lookup("ghcr.io")
    assert str(path) in str(info.value)


def test_deeply_nested_json_names_the_file(env: Env) -> None:
    depth = 100_000
    path = env.home / ".docker" / "config.json"
    path.parent.mkdir(parents=True)
    path.write_text('{"auths": ' + "[" * depth + "]" * depth + "}")
    with pytest.raises(AuthenticationError, match="not valid JSON") as info:
        env.keychain().lookup("ghcr.io")
    assert str(path) in str(info.value)
    assert info.value.__cause__ is None


@pytest.mark.parametrize(
    ("auth", "secret"),
    [
        ("not base64 s3cr3tvalue!", "s3cr3tvalue"),
        (b64(":emptyusersecret"), "emptyusersecret"),
        (b64("nocolonsecret"), "nocolonsecret"),
        (base64.b64encode(b"u:\xffbinarysecret").decode(), "binarysecret"),
    ],
)
def test_bad_auth_field_is_an_error_without_the_secret(env: Env, auth: str, secret: str) -> None:
    path = env.config({"auths": {"ghcr.io": {"auth": auth}}})
    with pytest.raises(AuthenticationError) as info:
        env.keychain().lookup("ghcr.io")
    message = str(info.value)
    assert str(path) in message
    assert secret not in message
    assert auth not in message


def test_bad_entry_for_another_host_does_not_matter(env: Env) -> None:
    env.config({"auths": {"ghcr.io": {"auth": "!!"}, "quay.io": {"auth": b64("u:p")}}})
    assert env.keychain().lookup("quay.io") == Credentials(username="u", password="p")


# --- helpers ---------------------------------------------------------------------------------


def test_cred_helper_gets_the_bare_host(env: Env) -> None:
    env.store_helper("test", {"localhost:5000": ("alice", "helper-secret")})
    env.config({"credHelpers": {"localhost:5000": "test"}})
    credentials = env.keychain().lookup("localhost:5000")
    assert credentials == Credentials(username="alice", password="helper-secret")
    assert env.calls("test") == ["get localhost:5000"]
    assert_hidden(credentials, "helper-secret")


@pytest.mark.parametrize("key", [HUB_URL, "docker.io", "index.docker.io"])
def test_cred_helper_gets_the_docker_hub_url(env: Env, key: str) -> None:
    env.store_helper("test", {HUB_URL: ("hubuser", "hubsecret")})
    env.config({"credHelpers": {key: "test"}})
    assert env.keychain().lookup("registry-1.docker.io") == Credentials(
        username="hubuser", password="hubsecret"
    )
    assert env.calls("test") == [f"get {HUB_URL}"]


def test_token_user_means_identity_token(env: Env) -> None:
    env.store_helper("test", {"myreg.azurecr.io": ("<token>", "refresh-secret")})
    env.config({"credsStore": "test"})
    credentials = env.keychain().lookup("myreg.azurecr.io")
    assert credentials == Credentials(identity_token="refresh-secret")
    assert_hidden(credentials, "refresh-secret")


def test_not_found_is_anonymous(env: Env) -> None:
    env.store_helper("test", {})
    env.config({"credHelpers": {"ghcr.io": "test"}, "auths": {"ghcr.io": {}}})
    assert env.keychain().lookup("ghcr.io") is None
    assert env.calls("test") == ["get ghcr.io"]


def test_helper_precedence(env: Env) -> None:
    """credHelpers[host], then credsStore, then the auths entry."""
    env.store_helper("per-host", {"a.example": ("from-cred-helpers", "1")})
    env.store_helper("store", {"a.example": ("from-store", "2"), "b.example": ("from-store", "3")})
    env.config(
        {
            "credHelpers": {"a.example": "per-host"},
            "credsStore": "store",
            "auths": {
                "a.example": {"auth": b64("from-auths:4")},
                "b.example": {"auth": b64("from-auths:5")},
                "c.example": {"auth": b64("from-auths:6")},
            },
        }
    )
    keychain = env.keychain()

    def user(host: str) -> str:
        credentials = keychain.lookup(host)
        assert credentials is not None
        return credentials.username

    assert user("a.example") == "from-cred-helpers"
    assert user("b.example") == "from-store"
    # The store does not know c.example: the file entry applies.
    assert user("c.example") == "from-auths"
    assert env.calls("per-host") == ["get a.example"]
    assert env.calls("store") == ["get b.example", "get c.example"]


def test_empty_helper_name_means_no_helper(env: Env) -> None:
    """As in Docker: ``"credsStore": ""`` is unset; ``credHelpers[host] = ""`` uses the file."""
    env.store_helper("store", {"ghcr.io": ("from-store", "x")})
    env.config(
        {
            "credHelpers": {"ghcr.io": ""},
            "credsStore": "store",
            "auths": {"ghcr.io": {"auth": b64("from-auths:y")}},
        }
    )
    assert env.keychain().lookup("ghcr.io") == Credentials(username="from-auths", password="y")
    env.config({"credsStore": "", "auths": {"ghcr.io": {"auth": b64("from-auths:y")}}})
    assert env.keychain().lookup("ghcr.io") == Credentials(username="from-auths", password="y")
    assert env.calls("store") == []


@pytest.mark.parametrize("setting", ["credHelpers", "credsStore"])
def test_missing_helper_is_an_error(env: Env, setting: str) -> None:
    """A7: never silently anonymous."""
    name = "ociflow-test-no-such-helper"
    config: dict[str, Any] = {"auths": {"ghcr.io": {"auth": b64("u:p")}}}
    config[setting] = {"ghcr.io": name} if setting == "credHelpers" else name
    env.config(config)
    with pytest.raises(AuthenticationError) as info:
        env.keychain().lookup("ghcr.io")
    assert f"docker-credential-{name}" in str(info.value)
    assert "ghcr.io" in str(info.value)


@pytest.mark.parametrize(
    "name", ["..", "../../x", "a/b", "a\\b", "a b", "a\tb", "a\x00b", "x;id", "é", "a..b", "$(x)"]
)
def test_bad_helper_name_is_rejected_before_exec(env: Env, name: str) -> None:
    """A8. Where the name can be a file name, a helper by that name exists and would leave a
    marker if it ran."""
    marker = env.root / "ran"
    if "/" not in name and "\x00" not in name:
        env.script(name, f"#!/bin/sh\ntouch '{marker}'\necho '{{}}'\n")
    env.config({"credHelpers": {"ghcr.io": name}})
    with pytest.raises(AuthenticationError, match="not allowed"):
        env.keychain().lookup("ghcr.io")
    assert not marker.exists()


def plant_helpers(env: Env, monkeypatch: pytest.MonkeyPatch, name: str) -> Path:
    """A cloned repository as the working directory, with helper ``name`` at its top and in its
    ``bin``; either one leaves the returned marker if it runs."""
    repo = env.root / "repo"
    marker = env.root / "ran-from-cwd"
    for directory in (repo, repo / "bin"):
        directory.mkdir(exist_ok=True)
        path = directory / f"docker-credential-{name}"
        path.write_text(f"#!/bin/sh\ntouch '{marker}'\necho '{{\"Username\": \"cwd\"}}'\n")
        path.chmod(0o755)
    monkeypatch.chdir(repo)
    return marker


@pytest.mark.parametrize(
    "path",
    [f"{SYSTEM_PATH}:", f":{SYSTEM_PATH}", f"/nonexistent::{SYSTEM_PATH}", ".", "bin", "./bin"],
)
def test_helper_is_not_run_from_the_working_directory(
    env: Env, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    """Empty and relative PATH entries are skipped, as Go (1.19+) and so Docker do."""
    marker = plant_helpers(env, monkeypatch, "desktop")
    env.vars["PATH"] = path
    env.config({"credsStore": "desktop"})
    with pytest.raises(AuthenticationError, match="docker-credential-desktop is not on PATH"):
        env.keychain().lookup("ghcr.io")
    assert not marker.exists()


def test_absolute_path_entry_after_a_relative_one_is_used(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = plant_helpers(env, monkeypatch, "desktop")
    env.store_helper("desktop", {"ghcr.io": ("from-bin", "pw")})
    env.vars["PATH"] = f".:bin::{env.bin}"
    env.config({"credsStore": "desktop"})
    assert env.keychain().lookup("ghcr.io") == Credentials(username="from-bin", password="pw")
    assert not marker.exists()


def test_relative_program_path_is_refused(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the platform's search itself looks in the working directory (Windows does), the
    relative answer is refused rather than run."""
    marker = plant_helpers(env, monkeypatch, "desktop")
    monkeypatch.setattr(
        "ociflow.http.dockerconfig.shutil.which", lambda cmd, mode=0, path=None: f"./{cmd}"
    )
    env.config({"credsStore": "desktop"})
    with pytest.raises(AuthenticationError, match="relative"):
        env.keychain().lookup("ghcr.io")
    assert not marker.exists()


def test_failing_helper_error_hides_its_output(env: Env) -> None:
    env.python_helper(
        "fails",
        "print('oops, the token is leaked-secret-123')\n"
        "sys.stderr.write('stderr-secret-456')\n"
        "sys.exit(3)\n",
    )
    env.config({"credHelpers": {"ghcr.io": "fails"}})
    with pytest.raises(AuthenticationError) as info:
        env.keychain().lookup("ghcr.io")
    for text in (str(info.value), repr(info.value)):
        assert "leaked-secret-123" not in text
        assert "stderr-secret-456" not in text
    assert "docker-credential-fails" in str(info.value)
    assert "ghcr.io" in str(info.value)
    assert "status 3" in str(info.value)
    assert info.value.__cause__ is None


@pytest.mark.parametrize(
    "stdout",
    ["not json secret-789", '["secret-789"]', '{"Username": 1, "Secret": "secret-789"}'],
)
def test_malformed_helper_answer_is_an_error(env: Env, stdout: str) -> None:
    env.python_helper("garbled", f"print({stdout!r})\n")
    env.config({"credsStore": "garbled"})
    with pytest.raises(AuthenticationError, match="docker-credential-garbled") as info:
        env.keychain().lookup("ghcr.io")
    assert "secret-789" not in str(info.value)


def test_deeply_nested_helper_answer_is_an_error(env: Env) -> None:
    depth = 100_000  # 200 kB: under the output cap
    env.python_helper("nested", f"sys.stdout.write('[' * {depth} + ']' * {depth})\n")
    env.config({"credsStore": "nested"})
    with pytest.raises(AuthenticationError, match=r"docker-credential-nested.*malformed") as info:
        env.keychain().lookup("ghcr.io")
    assert info.value.__cause__ is None


def running(pid: int) -> bool:
    """Whether ``pid`` is alive (not gone, not a zombie waiting for its reaper)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return False
    return fields[0] not in ("Z", "X")


def test_hanging_helper_is_killed(env: Env) -> None:
    """A9. The shell's ``sleep`` child holds stdout too: the whole process group must go."""
    pidfile = env.root / "child.pid"
    env.script("hangs", f"#!/bin/sh\nsleep 60 &\necho $! > '{pidfile}'\nwait\n")
    env.config({"credHelpers": {"ghcr.io": "hangs"}})
    with pytest.raises(AuthenticationError, match=r"docker-credential-hangs.*ghcr\.io.*killed"):
        env.keychain(helper_timeout=0.5).lookup("ghcr.io")
    if not Path("/proc/self/stat").exists():
        return
    child = int(pidfile.read_text())
    # SIGKILL was sent before the error was raised; give the kernel a moment to deliver it.
    for _ in range(100):
        if not running(child):
            break
        time.sleep(0.05)
    assert not running(child)


def test_helper_that_closes_stdout_and_hangs_is_killed(env: Env) -> None:
    env.python_helper("lingers", "sys.stdout.close()\ntime.sleep(60)\n")
    env.config({"credHelpers": {"ghcr.io": "lingers"}})
    with pytest.raises(AuthenticationError, match="killed"):
        env.keychain(helper_timeout=0.5).lookup("ghcr.io")


def test_flooding_helper_is_killed(env: Env) -> None:
    """A9: an endless stream of output is cut at 1 MiB."""
    env.python_helper("floods", "chunk = 'x' * 65536\nwhile True:\n    sys.stdout.write(chunk)\n")
    env.config({"credHelpers": {"ghcr.io": "floods"}})
    with pytest.raises(AuthenticationError, match="more than 1048576 bytes") as info:
        env.keychain(helper_timeout=30).lookup("ghcr.io")
    assert "xxxx" not in str(info.value)


def test_helper_has_no_terminal_and_gets_the_environment(env: Env) -> None:
    """stdin is the pipe (EOF after the URL), no controlling TTY, and the keychain's env."""
    report = env.root / "report.json"
    env.python_helper(
        "inspects",
        "import os\n"
        "try:\n"
        "    os.close(os.open('/dev/tty', os.O_RDWR))\n"
        "    tty = True\n"
        "except OSError:\n"
        "    tty = False\n"
        f"json.dump({{'url': url, 'tty': tty, 'home': os.environ.get('HOME')}}, "
        f"open({str(report)!r}, 'w'))\n"
        "print(json.dumps({'Username': 'u', 'Secret': 's'}))\n",
    )
    env.config({"credsStore": "inspects"})
    assert env.keychain().lookup("ghcr.io") == Credentials(username="u", password="s")
    assert json.loads(report.read_text()) == {"url": "ghcr.io", "tty": False, "home": str(env.home)}


# --- caching ---------------------------------------------------------------------------------


def test_answers_are_cached_per_host(env: Env) -> None:
    env.store_helper("test", {"ghcr.io": ("alice", "pw")})
    env.config({"credsStore": "test"})
    keychain = env.keychain()
    assert keychain.lookup("ghcr.io") == Credentials(username="alice", password="pw")
    assert keychain.lookup("quay.io") is None
    env.config({})  # later changes are not seen by this keychain
    assert keychain.lookup("ghcr.io") == Credentials(username="alice", password="pw")
    assert keychain.lookup("quay.io") is None
    assert env.calls("test") == ["get ghcr.io", "get quay.io"]
    # Docker Hub spellings share one cache entry.
    env.config({"credsStore": "test"})
    keychain = env.keychain()
    keychain.lookup("docker.io")
    keychain.lookup("registry-1.docker.io")
    assert env.calls("test")[2:] == [f"get {HUB_URL}"]


def test_concurrent_lookups_run_the_helper_once(env: Env) -> None:
    env.store_helper("test", {"ghcr.io": ("alice", "pw")})
    env.config({"credsStore": "test"})
    keychain = env.keychain()
    results: list[Credentials | None] = []
    barrier = threading.Barrier(8)

    def worker() -> None:
        barrier.wait()
        results.append(keychain.lookup("ghcr.io"))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [Credentials(username="alice", password="pw")] * 8
    assert env.calls("test") == ["get ghcr.io"]


def test_errors_are_not_cached(env: Env) -> None:
    env.config({"credsStore": "later"})
    keychain = env.keychain()
    with pytest.raises(AuthenticationError):
        keychain.lookup("ghcr.io")
    env.store_helper("later", {"ghcr.io": ("u", "p")})
    assert keychain.lookup("ghcr.io") == Credentials(username="u", password="p")


def test_helper_timeout_must_be_positive() -> None:
    with pytest.raises(ValueError):
        Keychain(env={}, helper_timeout=0)
