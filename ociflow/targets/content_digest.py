"""Checks of the ``Docker-Content-Digest`` header a registry sends with content or a commit.

distribution-spec: a client that uses the header MUST verify it. Both checks take the header's
value (``None`` when absent, which proves nothing) and raise
:class:`~ociflow.errors.DigestMismatchError` naming ``context``.
"""

from __future__ import annotations

from ociflow.digest import Digest
from ociflow.errors import DigestMismatchError, InvalidDigestError

_SHOWN = 140  # the header is untrusted: quote at most this much of it


def check_served(header: str | None, expected: Digest, context: str) -> None:
    """Content asked for by digest: a header naming another digest is believed (P19).

    A header in another algorithm than the one asked for says nothing either way.
    """
    if header is None:
        return
    header = header.strip()
    try:
        said: Digest | None = Digest(header)
    except InvalidDigestError:
        said = None
    if said is None or (said.algorithm == expected.algorithm and said != expected):
        raise DigestMismatchError(
            f"{context}: the registry says it is sending {header[:_SHOWN]!r}, not {expected}"
        )


def check_stored(header: str | None, expected: Digest, context: str) -> None:
    """A push the registry committed: it must have stored exactly ``expected`` (U6)."""
    if header is None:
        return
    header = header.strip()
    try:
        matches = Digest(header) == expected
    except InvalidDigestError:
        matches = False
    if not matches:
        raise DigestMismatchError(
            f"{context}: the registry stored {header[:_SHOWN]!r}, not {expected}"
        )
