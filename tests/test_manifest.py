import json

import pytest

from ociflow import mediatypes
from ociflow.descriptor import Platform
from ociflow.digest import Digest
from ociflow.errors import InvalidManifestError, NotFoundError
from ociflow.manifest import MAX_MANIFEST_SIZE, parse_manifest, select_platform

CFG = {"mediaType": mediatypes.OCI_CONFIG, "digest": str(Digest.of(b"{}")), "size": 2}
LAYER = {"mediaType": mediatypes.OCI_LAYER_GZIP, "digest": str(Digest.of(b"l")), "size": 1}


def manifest(**extra: object) -> bytes:
    doc = {"schemaVersion": 2, "mediaType": mediatypes.OCI_MANIFEST, "config": CFG,
           "layers": [LAYER], **extra}
    return json.dumps(doc).encode()


def index(*platforms: str) -> bytes:
    entries = []
    for i, p in enumerate(platforms):
        os_, arch, *variant = p.split("/")
        plat = {"os": os_, "architecture": arch, **({"variant": variant[0]} if variant else {})}
        entries.append({"mediaType": mediatypes.OCI_MANIFEST, "size": 10 + i,
                        "digest": str(Digest.of(p.encode())), "platform": plat})
    return json.dumps({"schemaVersion": 2, "mediaType": mediatypes.OCI_INDEX,
                       "manifests": entries}).encode()


def test_image_manifest_successors_config_first() -> None:
    m = parse_manifest(manifest(), mediatypes.OCI_MANIFEST)
    assert [d.digest for d in m.successors()] == [CFG["digest"], LAYER["digest"]]
    assert not m.is_index


def test_index_and_platform_selection() -> None:
    m = parse_manifest(index("linux/amd64", "linux/arm64/v8", "linux/arm64"))
    assert m.is_index
    chosen = select_platform(m, Platform.parse("linux/arm64"), "ref")
    assert chosen.platform == Platform("linux", "arm64", "v8")
    with pytest.raises(NotFoundError, match="linux/amd64, linux/arm64/v8"):
        select_platform(m, Platform.parse("windows/amd64"), "ref")


@pytest.mark.parametrize(
    "data",
    [
        b"not json",
        b"[]",
        b'{"schemaVersion": 2, "schemaVersion": 2, "config": {}}',
        json.dumps({"schemaVersion": 2, "manifests": [], "layers": []}).encode(),
        json.dumps({"schemaVersion": 1, "config": CFG}).encode(),
        json.dumps({"schemaVersion": 2, "mediaType": mediatypes.OCI_MANIFEST}).encode(),
        json.dumps({"schemaVersion": 2, "config": {**CFG, "size": -1}}).encode(),
        json.dumps({"schemaVersion": 2, "config": {**CFG, "digest": "sha256:../x"}}).encode(),
        json.dumps({"schemaVersion": 2, "config": {**CFG, "size": 2**63}}).encode(),
        json.dumps({"schemaVersion": 2, "mediaType": "text/plain", "config": CFG}).encode(),
    ],
)
def test_malformed_or_ambiguous_manifests(data: bytes) -> None:
    with pytest.raises(InvalidManifestError):
        parse_manifest(data)


def test_media_type_must_match_content_type() -> None:
    with pytest.raises(InvalidManifestError, match="differs"):
        parse_manifest(manifest(), mediatypes.OCI_INDEX)
    # parameters on the content type are ignored (distribution-spec: clients SHOULD ignore them)
    parse_manifest(manifest(), mediatypes.OCI_MANIFEST + "; charset=utf-8")


def test_size_cap() -> None:
    big = manifest(annotations={"pad": "x" * MAX_MANIFEST_SIZE})
    with pytest.raises(InvalidManifestError, match="cap"):
        parse_manifest(big)
