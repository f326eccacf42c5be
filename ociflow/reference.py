"""Image references for every transport: ``docker://``, bare Docker refs, and ``oci:``.

Docker references follow distribution/reference (``normalize.go``): a first path component is a
registry host when it is ``localhost`` or contains ``.`` or ``:``; otherwise the image lives on
Docker Hub, whose official images are ``library/<name>``. Digests are validated here, before
any URL or path is built from them.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from ociflow.digest import Digest
from ociflow.errors import InvalidDigestError, InvalidReferenceError

DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"
DEFAULT_TAG = "latest"

_HOST_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_HOST = re.compile(
    rf"(?:{_HOST_COMPONENT}(?:\.{_HOST_COMPONENT})*|\[[0-9a-fA-F:.]+\])(?::[0-9]{{1,5}})?"
)
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPOSITORY = re.compile(rf"{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*")
TAG_PATTERN = re.compile(r"[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}")
# org.opencontainers.image.ref.name (image-spec annotations.md)
_REF_COMPONENT = r"[A-Za-z0-9]+(?:(?:[-._:@+]|--)[A-Za-z0-9]+)*"
_REF_NAME = re.compile(rf"{_REF_COMPONENT}(?:/{_REF_COMPONENT})*")
MAX_NAME_LENGTH = 255


@dataclass(frozen=True, slots=True)
class RegistryReference:
    """``registry/repository[:tag][@digest]``; ``registry`` is ``host[:port]`` as written."""

    registry: str
    repository: str
    tag: str | None = None
    digest: Digest | None = None

    @property
    def host(self) -> str:
        """The registry host without port or IPv6 brackets."""
        host = self.registry
        if host.startswith("["):
            return host[1 : host.index("]")]
        return host.rsplit(":", 1)[0] if ":" in host else host

    @property
    def api_host(self) -> str:
        """Where the API is served (Docker Hub's ``docker.io`` is ``registry-1.docker.io``)."""
        return DOCKER_HUB_API if self.registry == DOCKER_HUB else self.registry

    @property
    def is_loopback(self) -> bool:
        host = self.host
        if host == "localhost":
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False

    def with_(self, *, tag: str | None = None, digest: Digest | None = None) -> RegistryReference:
        return RegistryReference(self.registry, self.repository, tag, digest)

    def __str__(self) -> str:
        text = f"{self.registry}/{self.repository}"
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


@dataclass(frozen=True, slots=True)
class LayoutReference:
    """``oci:PATH[:TAG|@DIGEST]``: an OCI image layout directory and an entry in its index.

    ``transport`` ``oci-archive`` is the same layout in a tar file; ``docker-archive`` is a tar
    file ``docker load`` reads (``docker-archive:PATH[:NAME:TAG]``, as skopeo writes it):
    ``image_name`` is the ``NAME:TAG`` it is saved as, and ``tag`` that name's tag.
    """

    path: str
    tag: str | None = None
    digest: Digest | None = None
    transport: str = "oci"
    image_name: str | None = None

    @property
    def archive(self) -> bool:
        """Whether the layout is in a tar file."""
        return self.transport != "oci"

    def __str__(self) -> str:
        text = f"{self.transport}:{self.path}"
        if self.transport == "docker-archive":
            return f"{text}:{self.image_name}" if self.image_name else text
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


Reference = RegistryReference | LayoutReference


def parse_reference(text: str) -> Reference:
    """Parse a reference with its transport prefix; a bare reference is ``docker://``."""
    if not isinstance(text, str) or not text or "\x00" in text:
        raise InvalidReferenceError(f"invalid reference {text!r}")
    if text.startswith("docker://"):
        return parse_docker_reference(text[len("docker://") :])
    if text.startswith("oci:"):
        return parse_layout_reference(text[len("oci:") :])
    if text.startswith("oci-archive:"):
        return parse_layout_reference(text[len("oci-archive:") :], archive=True)
    if text.startswith("docker-archive:"):
        return parse_docker_archive_reference(text[len("docker-archive:") :])
    scheme = text.split(":", 1)[0]
    if "://" in text or scheme in ("dir", "docker-daemon"):
        raise InvalidReferenceError(f"unsupported transport in reference {text!r}")
    return parse_docker_reference(text)


def parse_docker_reference(text: str) -> RegistryReference:
    """Parse ``[host[:port]/]repo[:tag][@digest]`` with docker.io normalisation."""
    original = text
    head = text.split("/", 1)[0]
    if "@" in head and "/" in text:
        # ``user:password@host/...``: never echoed, a password may be in it (S2).
        raise InvalidReferenceError(
            f"reference with user information before host {head.rpartition('@')[2][:80]!r}: "
            "not supported; pass credentials with --src-creds/--dest-creds or a Docker config"
        )
    name, at, digest_text = text.partition("@")
    digest = _digest(digest_text, original) if at else None
    last_slash = name.rfind("/")
    tag: str | None = None
    colon = name.rfind(":")
    if colon > last_slash:
        name, tag = name[:colon], name[colon + 1 :]
        if not TAG_PATTERN.fullmatch(tag):
            raise InvalidReferenceError(f"invalid tag {tag!r} in reference {original!r}")
    first, slash, rest = name.partition("/")
    if slash and (first == "localhost" or "." in first or ":" in first or first != first.lower()):
        registry, repository = first, rest
        if not _HOST.fullmatch(registry):
            raise InvalidReferenceError(f"invalid registry {registry!r} in reference {original!r}")
    else:
        registry, repository = DOCKER_HUB, name
    if registry == "index.docker.io":
        registry = DOCKER_HUB
    if registry == DOCKER_HUB and "/" not in repository:
        repository = f"library/{repository}"
    if not _REPOSITORY.fullmatch(repository):
        raise InvalidReferenceError(
            f"invalid repository {repository!r} in reference {original!r} "
            "(lowercase letters, digits and . _ - separators)"
        )
    if len(registry) + 1 + len(repository) > MAX_NAME_LENGTH:
        raise InvalidReferenceError(f"reference {original[:80]!r}... is longer than 255 characters")
    if tag is None and digest is None:
        tag = DEFAULT_TAG
    return RegistryReference(registry, repository, tag, digest)


def parse_layout_reference(text: str, *, archive: bool = False) -> LayoutReference:
    """Parse ``PATH[:TAG]`` or ``PATH@DIGEST`` (the path itself holds no ``:``, as in skopeo)."""
    prefix = "oci-archive" if archive else "oci"
    original = text
    digest: Digest | None = None
    tag: str | None = None
    if "@" in text:
        text, _, digest_text = text.rpartition("@")
        digest = _digest(digest_text, original)
    elif ":" in text:
        text, _, tag = text.partition(":")
        if not tag or not _REF_NAME.fullmatch(tag):
            raise InvalidReferenceError(f"invalid layout tag {tag!r} in {prefix}:{original}")
    if not text:
        raise InvalidReferenceError(f"{prefix}:{original}: no layout path")
    return LayoutReference(text, tag, digest, "oci-archive" if archive else "oci")


def parse_docker_archive_reference(text: str) -> LayoutReference:
    """Parse ``PATH[:NAME[:TAG]]``: the path holds no ``:``; NAME is a Docker reference, kept
    in the short form ``docker load`` shows (``app:1``, ``org/app:1``, ``host:5000/app:1``)."""
    path, _, name = text.partition(":")
    if not path:
        raise InvalidReferenceError(f"docker-archive:{text}: no archive path")
    if not name:
        return LayoutReference(path, transport="docker-archive")
    if "@" in name:
        raise InvalidReferenceError(f"docker-archive:{text}: the image name cannot hold a digest")
    ref = parse_docker_reference(name)
    repository = ref.repository
    if ref.registry == DOCKER_HUB:
        short = repository.removeprefix("library/")
    else:
        short = f"{ref.registry}/{repository}"
    return LayoutReference(path, ref.tag, None, "docker-archive", f"{short}:{ref.tag}")


def is_valid_ref_name(name: str) -> bool:
    """Does ``name`` follow the ``org.opencontainers.image.ref.name`` grammar?"""
    return bool(_REF_NAME.fullmatch(name))


def _digest(text: str, reference: str) -> Digest:
    try:
        return Digest(text)
    except InvalidDigestError as exc:
        raise InvalidReferenceError(f"reference {reference[:120]!r}: {exc}") from None
