"""Parse raw manifest bytes into what the copy engine needs: the children and platform choice.

The raw bytes are never re-serialized (digests are of the exact bytes). Parsing is strict where
parsers disagree: duplicate keys are rejected, and so are documents that could be read as both an
index and a manifest (CVE-2021-41190), or whose ``mediaType`` contradicts the type they were
served or described as.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ociflow import mediatypes
from ociflow.descriptor import Descriptor, Platform
from ociflow.errors import InvalidManifestError, NotFoundError

# Clients and registries SHOULD support manifests of at least 4 MB (distribution-spec §1.7);
# peers cap reads there (containers/image, oras-go, containerd).
MAX_MANIFEST_SIZE = 4 * 1024 * 1024
# Caps on untrusted structure (reliability.md I7).
MAX_DESCRIPTORS = 10_000
MAX_INDEX_DEPTH = 8


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise InvalidManifestError(f"manifest has a duplicate key {key!r}")
        obj[key] = value
    return obj


@dataclass(frozen=True, slots=True)
class Manifest:
    """A parsed manifest or index: its media type and child descriptors, plus the raw bytes."""

    media_type: str
    data: bytes
    config: Descriptor | None
    layers: tuple[Descriptor, ...]
    manifests: tuple[Descriptor, ...]
    subject: Descriptor | None

    @property
    def is_index(self) -> bool:
        return mediatypes.is_index(self.media_type)

    def successors(self) -> tuple[Descriptor, ...]:
        """What must exist before this manifest can be pushed: children first, config first."""
        config = (self.config,) if self.config is not None else ()
        return config + self.layers + self.manifests


def check_manifest_size(desc: Descriptor, context: str) -> None:
    """Refuse a manifest descriptor over :data:`MAX_MANIFEST_SIZE` before anything is read."""
    if desc.size > MAX_MANIFEST_SIZE:
        raise InvalidManifestError(
            f"{context}: manifest {desc.digest} of {desc.size} bytes exceeds the "
            f"{MAX_MANIFEST_SIZE}-byte cap"
        )


def parse_manifest(data: bytes, media_type: str | None = None) -> Manifest:
    """Parse ``data``; ``media_type`` is the type it was served or described as, if known."""
    if len(data) > MAX_MANIFEST_SIZE:
        raise InvalidManifestError(
            f"manifest of {len(data)} bytes exceeds the {MAX_MANIFEST_SIZE}-byte cap"
        )
    try:
        obj = json.loads(data, object_pairs_hook=_no_duplicates)
    except InvalidManifestError:
        raise
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidManifestError(f"manifest is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise InvalidManifestError("manifest is not a JSON object")
    declared = obj.get("mediaType")
    if declared is not None and not isinstance(declared, str):
        raise InvalidManifestError("manifest mediaType is not a string")
    outer = mediatypes.base(media_type) if media_type else None
    if declared and outer and declared != outer:
        raise InvalidManifestError(
            f"manifest mediaType {declared!r} differs from its content type {outer!r}"
        )
    has_manifests, has_image = "manifests" in obj, "config" in obj or "layers" in obj
    if has_manifests and has_image:
        raise InvalidManifestError("document has both manifests and config/layers (ambiguous)")
    kind = declared or outer
    if kind is None:
        # Neither the document nor its carrier names the type: infer from the shape.
        kind = mediatypes.OCI_INDEX if has_manifests else mediatypes.OCI_MANIFEST
    if not mediatypes.is_manifest(kind):
        raise InvalidManifestError(f"unsupported manifest media type {kind!r}")
    if obj.get("schemaVersion") != 2:
        raise InvalidManifestError(f"unsupported schemaVersion {obj.get('schemaVersion')!r}")
    if mediatypes.is_index(kind):
        if has_image:
            raise InvalidManifestError(f"{kind} must not carry config or layers")
        manifests = _descriptors(obj.get("manifests"), "manifests")
        return Manifest(kind, data, None, (), manifests, _optional(obj.get("subject")))
    if has_manifests:
        raise InvalidManifestError(f"{kind} must not carry manifests")
    config = obj.get("config")
    if config is None:
        raise InvalidManifestError("image manifest has no config")
    layers = _descriptors(obj.get("layers", []), "layers")
    return Manifest(
        kind, data, Descriptor.from_json(config), layers, (), _optional(obj.get("subject"))
    )


def _descriptors(value: object, field: str) -> tuple[Descriptor, ...]:
    if not isinstance(value, list):
        raise InvalidManifestError(f"manifest field {field!r} is not a list")
    if len(value) > MAX_DESCRIPTORS:
        raise InvalidManifestError(f"manifest lists {len(value)} {field}, over {MAX_DESCRIPTORS}")
    return tuple(Descriptor.from_json(item) for item in value)


def _optional(value: object) -> Descriptor | None:
    return None if value is None else Descriptor.from_json(value)


def select_platform(index: Manifest, wanted: Platform, reference: str) -> Descriptor:
    """The first image manifest in ``index`` for ``wanted`` (image-index.md: first match wins)."""
    for child in index.manifests:
        if (
            child.platform is not None
            and child.platform.matches(wanted)
            and mediatypes.is_manifest(child.media_type)
        ):
            return child
    available = ", ".join(str(c.platform) for c in index.manifests if c.platform) or "none"
    raise NotFoundError(f"{reference}: no manifest for platform {wanted} (available: {available})")
