import hashlib

import pytest

from ociflow.errors import InvalidReferenceError
from ociflow.reference import LayoutReference, RegistryReference, parse_reference

HEX = hashlib.sha256(b"x").hexdigest()


@pytest.mark.parametrize(
    ("text", "registry", "repository", "tag", "digest"),
    [
        ("alpine", "docker.io", "library/alpine", "latest", None),
        ("docker://alpine:3.20", "docker.io", "library/alpine", "3.20", None),
        ("index.docker.io/foo/bar", "docker.io", "foo/bar", "latest", None),
        ("user/app:1", "docker.io", "user/app", "1", None),
        ("localhost:5000/app", "localhost:5000", "app", "latest", None),
        ("localhost/app:v", "localhost", "app", "v", None),
        ("127.0.0.1:5000/a/b/c:t", "127.0.0.1:5000", "a/b/c", "t", None),
        ("[::1]:5000/app:t", "[::1]:5000", "app", "t", None),
        ("ghcr.io/org/app@sha256:" + HEX, "ghcr.io", "org/app", None, "sha256:" + HEX),
        ("ghcr.io/org/app:1@sha256:" + HEX, "ghcr.io", "org/app", "1", "sha256:" + HEX),
    ],
)
def test_docker_references(text, registry, repository, tag, digest) -> None:
    ref = parse_reference(text)
    assert isinstance(ref, RegistryReference)
    parts = (ref.registry, ref.repository, ref.tag, ref.digest)
    assert parts == (registry, repository, tag, digest)


def test_docker_hub_api_host_and_loopback() -> None:
    assert parse_reference("alpine").api_host == "registry-1.docker.io"  # type: ignore[union-attr]
    for text in ("localhost:5000/a", "127.0.0.5:1/a", "[::1]:5000/a"):
        ref = parse_reference(text)
        assert isinstance(ref, RegistryReference) and ref.is_loopback, text
    ref = parse_reference("example.com:5000/a")
    assert isinstance(ref, RegistryReference) and not ref.is_loopback
    assert ref.host == "example.com"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "upper/CASE",
        "localhost:5000/App",
        "host.io/app:bad tag",
        "host.io/app:" + "t" * 129,
        "host.io/app@sha256:../x",
        "host.io/app@sha256:" + HEX.upper(),
        "host.io/app@sha256:" + HEX[:63],
        "host.io/app@foo:" + HEX,
        "http://host.io/app",
        "docker-daemon:app:1",
        "host.io/" + "a" * 300,
        "oci:",
        "oci:dir@sha256:abc",
        "oci:dir:",
    ],
)
def test_malformed_references(text: str) -> None:
    with pytest.raises(InvalidReferenceError):
        parse_reference(text)


def test_layout_references() -> None:
    assert parse_reference("oci:/tmp/out:1.0") == LayoutReference("/tmp/out", "1.0")
    assert parse_reference("oci:out") == LayoutReference("out")
    ref = parse_reference(f"oci:./out@sha256:{HEX}")
    assert ref == LayoutReference("./out", None, f"sha256:{HEX}")  # type: ignore[arg-type]
    assert str(parse_reference("oci:/x:tag")) == "oci:/x:tag"


@pytest.mark.parametrize("text", ["docker://alice:s3cr3t-pw@registry.example.com/app:1",
                                  "alice:s3cr3t-pw@registry.example.com/app"])
def test_user_information_is_refused_without_echoing_it(text: str) -> None:
    """S2: a password in a reference never reaches the message."""
    with pytest.raises(InvalidReferenceError) as info:
        parse_reference(text)
    assert "s3cr3t-pw" not in str(info.value) and "registry.example.com" in str(info.value)
