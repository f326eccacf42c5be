import hashlib

import pytest

from ociflow.digest import Digest, Verifier, verify_bytes
from ociflow.errors import DigestMismatchError, InvalidDigestError

HEX = hashlib.sha256(b"x").hexdigest()


@pytest.mark.parametrize(
    "text",
    [
        "sha256:../x",
        "sha256:../../outside",
        f"sha256:{HEX[:-1]}",
        f"sha256:{HEX}0",
        f"sha256:{HEX.upper()}",
        "sha256:",
        ":abc",
        f"foo:{HEX}",
        f"md5:{HEX}",
        f"sha256:{HEX}\x00",
        f"SHA256:{HEX}",
        f"sha512:{HEX}",
        "",
    ],
)
def test_invalid_digests_are_rejected_at_parse(text: str) -> None:
    with pytest.raises(InvalidDigestError):
        Digest(text)


def test_valid_digests_and_parts() -> None:
    d = Digest(f"sha256:{HEX}")
    assert (d.algorithm, d.encoded) == ("sha256", HEX)
    long = Digest("sha512:" + hashlib.sha512(b"x").hexdigest())
    assert long.algorithm == "sha512"
    assert Digest.of(b"x") == f"sha256:{HEX}"
    assert Digest.of(b"x", "sha512") == long


def test_error_message_is_bounded() -> None:
    with pytest.raises(InvalidDigestError) as info:
        Digest("sha256:" + "z" * 10_000)
    assert len(str(info.value)) < 300


def test_verifier_detects_size_and_content() -> None:
    data = b"hello world"
    good = Digest.of(data)
    verify_bytes(data, good, len(data))
    with pytest.raises(DigestMismatchError, match="digest mismatch"):
        verify_bytes(b"hello worle", good, len(data))
    with pytest.raises(DigestMismatchError, match="size mismatch"):
        verify_bytes(data[:-1], good, len(data))
    v = Verifier(good, 4)
    with pytest.raises(DigestMismatchError, match="more than"):
        v.update(data)


def test_sha512_verification() -> None:
    data = b"content" * 100
    verify_bytes(data, Digest.of(data, "sha512"))
    with pytest.raises(DigestMismatchError):
        verify_bytes(data + b"!", Digest.of(data, "sha512"))
