"""Descriptors and platforms (image-spec descriptor.md, image-index.md)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ociflow.digest import Digest
from ociflow.errors import InvalidDigestError, InvalidManifestError

# A descriptor size is an int64 that MUST NOT be negative (image-spec main).
MAX_SIZE = 2**63 - 1


@dataclass(frozen=True, slots=True)
class Platform:
    """``os/architecture[/variant]`` of an index entry."""

    os: str
    architecture: str
    variant: str | None = None
    os_version: str | None = None

    @classmethod
    def parse(cls, text: str) -> Platform:
        """Parse ``OS/ARCH[/VARIANT]`` as given to ``--platform``."""
        parts = text.split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise ValueError(f"invalid platform {text!r}: expected OS/ARCH[/VARIANT]")
        return cls(parts[0], parts[1], parts[2] if len(parts) == 3 else None)

    @classmethod
    def from_json(cls, obj: object) -> Platform:
        if not isinstance(obj, dict):
            raise InvalidManifestError("platform is not an object")
        os_, arch = obj.get("os"), obj.get("architecture")
        variant, os_version = obj.get("variant"), obj.get("os.version")
        if not isinstance(os_, str) or not isinstance(arch, str):
            raise InvalidManifestError("platform needs string os and architecture")
        return cls(
            os_,
            arch,
            variant if isinstance(variant, str) else None,
            os_version if isinstance(os_version, str) else None,
        )

    def matches(self, wanted: Platform) -> bool:
        """True when this platform satisfies ``wanted`` (an unset wanted variant matches any)."""
        return (
            self.os == wanted.os
            and self.architecture == wanted.architecture
            and (wanted.variant is None or self.variant == wanted.variant)
        )

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


@dataclass(frozen=True, slots=True)
class Descriptor:
    """A typed, sized, content-addressed pointer to a blob or manifest."""

    media_type: str
    digest: Digest
    size: int
    annotations: Mapping[str, str] | None = field(default=None, compare=False)
    platform: Platform | None = field(default=None, compare=False)
    artifact_type: str | None = field(default=None, compare=False)

    @classmethod
    def from_json(cls, obj: object) -> Descriptor:
        """Build from a JSON descriptor object, validating digest and size (I1, I8)."""
        if not isinstance(obj, dict):
            raise InvalidManifestError("descriptor is not an object")
        media_type, digest, size = obj.get("mediaType"), obj.get("digest"), obj.get("size")
        if not isinstance(media_type, str) or not media_type:
            raise InvalidManifestError("descriptor has no mediaType")
        if not isinstance(digest, str):
            raise InvalidManifestError("descriptor has no digest")
        if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= MAX_SIZE:
            raise InvalidManifestError(f"descriptor {digest[:80]!r} has an invalid size {size!r}")
        try:
            parsed = Digest(digest)
        except InvalidDigestError as exc:
            raise InvalidManifestError(f"descriptor: {exc}") from None
        annotations = obj.get("annotations")
        if annotations is not None and not (
            isinstance(annotations, dict)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in annotations.items())
        ):
            raise InvalidManifestError(f"descriptor {digest}: annotations must map strings")
        platform = obj.get("platform")
        artifact_type = obj.get("artifactType")
        return cls(
            media_type,
            parsed,
            size,
            annotations,
            Platform.from_json(platform) if platform is not None else None,
            artifact_type if isinstance(artifact_type, str) else None,
        )

    def to_json(self) -> dict[str, Any]:
        """The JSON object form, with only the fields that are set."""
        obj: dict[str, Any] = {"mediaType": self.media_type, "digest": str(self.digest),
                               "size": self.size}
        if self.artifact_type:
            obj["artifactType"] = self.artifact_type
        if self.annotations:
            obj["annotations"] = dict(self.annotations)
        if self.platform is not None:
            p: dict[str, str] = {"architecture": self.platform.architecture,
                                 "os": self.platform.os}
            if self.platform.os_version:
                p["os.version"] = self.platform.os_version
            if self.platform.variant:
                p["variant"] = self.platform.variant
            obj["platform"] = p
        return obj
