"""Shared fixtures: real registries on loopback, and the independent tools skopeo and umoci.

In CI (``CI`` set) a missing binary is a failure, never a skip.
"""

from __future__ import annotations

import base64
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.auth_servers import TokenServer, token_registry
from tests.registry_server import RegistryServer, start_registry

SAMPLE_LAYOUT = Path(__file__).resolve().parent.parent / "bench_data" / "sample"

PASSWORDS = {"alice": "wonder-land-7", "bob": "builder-42"}
"""The registry users of the auth tests. Their passwords, and any bearer token (every JWT
starts with ``eyJ``), must never reach ociflow's log in any test (reliability.md S1)."""


def require_binary(name: str) -> str:
    """The path of ``name``; fails in CI and skips elsewhere when it is missing."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (the test command installs it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(autouse=True, scope="session")
def isolated_state_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Crash-resume journals of the tests go to a temp dir, never to the user's state dir."""
    state = tmp_path_factory.mktemp("ociflow-state")
    # Nor do they read the user's registry credentials: an empty Docker config comes first.
    docker_config = tmp_path_factory.mktemp("docker-config")
    (docker_config / "config.json").write_text("{}")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OCIFLOW_STATE_DIR", str(state))
        patch.setenv("DOCKER_CONFIG", str(docker_config))
        patch.delenv("REGISTRY_AUTH_FILE", raising=False)
        yield state


@pytest.fixture(autouse=True)
def no_secret_in_the_log(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Every test runs with ociflow's DEBUG log captured, and fails if a secret shows in it."""
    caplog.set_level(logging.DEBUG, logger="ociflow")
    yield
    # (caplog.text would hold only the teardown phase's records by now)
    text = "\n".join(
        record.getMessage() for when in ("setup", "call") for record in caplog.get_records(when)
    )
    for user, password in PASSWORDS.items():
        basic = base64.b64encode(f"{user}:{password}".encode()).decode()
        assert password not in text and basic not in text, f"{user}'s password is in the log"
    assert "eyJ" not in text, "a bearer token is in the log"


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    """One real distribution registry for the whole session (tests use distinct repositories)."""
    require_binary("docker-registry")
    server = start_registry(tmp_path_factory.mktemp("registry"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def registry2(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    """A second, independent registry, for registry-to-registry copies."""
    require_binary("docker-registry")
    server = start_registry(tmp_path_factory.mktemp("registry2"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def token_servers(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[RegistryServer, TokenServer]]:
    """A registry with token auth and its token server (:mod:`tests.auth_servers`), shared by
    the session: each test sets its policy with :meth:`TokenServer.reset`."""
    require_binary("docker-registry")
    with token_registry(tmp_path_factory.mktemp("token-registry")) as pair:
        yield pair


@pytest.fixture()
def repo(request: pytest.FixtureRequest) -> str:
    """A repository name unique to the test."""
    name = request.node.name.lower()
    cleaned = "".join(c if c.isalnum() else "-" for c in name).strip("-")
    while "--" in cleaned:
        cleaned = cleaned.replace("--", "-")
    return f"t/{cleaned[:100]}"


@pytest.fixture(scope="session")
def skopeo() -> str:
    return require_binary("skopeo")


@pytest.fixture(scope="session")
def umoci() -> str:
    return require_binary("umoci")


@pytest.fixture(scope="session")
def sample_layout() -> Path:
    """The committed two-platform sample image (an OCI layout, tag ``1.0``)."""
    assert (SAMPLE_LAYOUT / "index.json").is_file(), "bench_data/sample is missing"
    return SAMPLE_LAYOUT
