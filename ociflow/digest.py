"""Digests: parsing with strict validation, and streaming verification.

A :class:`Digest` is validated when it is made (image-spec descriptor.md grammar, plus the exact
encoded form of sha256 and sha512), so a digest that exists can be used in a path or URL safely
(CVE-2024-3727). Unknown algorithms are rejected: ociflow never skips verification.
"""

from __future__ import annotations

import hashlib
import re
from typing import TYPE_CHECKING

from ociflow.errors import DigestMismatchError, InvalidDigestError

if TYPE_CHECKING:
    from hashlib import _Hash

_GRAMMAR = re.compile(r"[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+")
_ENCODED = {
    "sha256": re.compile(r"[a-f0-9]{64}"),
    "sha512": re.compile(r"[a-f0-9]{128}"),
}
SUPPORTED_ALGORITHMS = tuple(_ENCODED)


class Digest(str):
    """A validated ``algorithm:encoded`` digest string (sha256 or sha512)."""

    __slots__ = ()

    def __new__(cls, value: str) -> Digest:
        if isinstance(value, Digest):
            return value
        if not isinstance(value, str) or not _GRAMMAR.fullmatch(value):
            raise InvalidDigestError(f"invalid digest {_show(value)}: not algorithm:encoded")
        algorithm, _, encoded = value.partition(":")
        pattern = _ENCODED.get(algorithm)
        if pattern is None:
            raise InvalidDigestError(
                f"invalid digest {_show(value)}: unsupported algorithm {algorithm!r} "
                f"(supported: {', '.join(SUPPORTED_ALGORITHMS)})"
            )
        if not pattern.fullmatch(encoded):
            raise InvalidDigestError(
                f"invalid digest {_show(value)}: {algorithm} needs "
                f"{len(hashlib.new(algorithm).hexdigest())} lowercase hex characters"
            )
        return super().__new__(cls, value)

    @property
    def algorithm(self) -> str:
        return self.partition(":")[0]

    @property
    def encoded(self) -> str:
        return self.partition(":")[2]

    @classmethod
    def of(cls, data: bytes, algorithm: str = "sha256") -> Digest:
        """The digest of ``data``."""
        return cls(f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}")


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


class Verifier:
    """Checks a byte stream against an expected size and digest, incrementally.

    ``update`` refuses bytes beyond the expected size at once (no unbounded reads);
    ``verify`` checks the total and the digest. ``what`` names the content in errors.
    """

    __slots__ = ("_hash", "digest", "received", "size", "what")

    def __init__(self, digest: Digest, size: int, what: str = "blob") -> None:
        self.digest = digest
        self.size = size
        self.what = what
        self.received = 0
        self._hash: _Hash = hashlib.new(digest.algorithm)

    def update(self, chunk: bytes | memoryview) -> None:
        self.received += len(chunk)
        if self.received > self.size:
            raise DigestMismatchError(
                f"{self.what} {self.digest}: received more than the expected {self.size} bytes"
            )
        self._hash.update(chunk)

    def verify(self) -> None:
        if self.received != self.size:
            raise DigestMismatchError(
                f"{self.what} {self.digest}: size mismatch, expected {self.size} bytes, "
                f"received {self.received}"
            )
        actual = f"{self.digest.algorithm}:{self._hash.hexdigest()}"
        if actual != self.digest:
            raise DigestMismatchError(
                f"{self.what} {self.digest}: digest mismatch, content hashes to {actual}"
            )


def verify_bytes(data: bytes, digest: Digest, size: int | None = None, what: str = "blob") -> None:
    """Raise :class:`DigestMismatchError` unless ``data`` matches ``digest`` (and ``size``)."""
    verifier = Verifier(digest, len(data) if size is None else size, what)
    if len(data) > verifier.size:
        raise DigestMismatchError(
            f"{what} {digest}: size mismatch, expected {verifier.size} bytes, received {len(data)}"
        )
    verifier.update(data)
    verifier.verify()
