"""The exception tree. Every error ociflow raises is an :class:`OciflowError`.

::

    OciflowError
    ├── InvalidReferenceError      a reference string that does not parse
    ├── InvalidDigestError         a digest that fails the grammar or its algorithm's length
    ├── InvalidManifestError       a manifest or index that is malformed, ambiguous or too large
    ├── LayoutError                an OCI layout that is missing, malformed or unsafe
    ├── NotFoundError              a tag, manifest, blob or layout entry that does not exist
    ├── VerificationError          content that does not match its descriptor
    │   └── DigestMismatchError    (size or digest)
    ├── TransportError             the network failed: refused, reset, TLS, stalled
    ├── RegistryError              the registry answered with an error status
    │   ├── AuthenticationError    401 / 403
    │   └── TooManyRequestsError   429
    └── CancelledTransferError     the copy was interrupted; it can be run again

Messages name the reference and the operation; they never carry a credential, token or the
query string of a URL (see :func:`ociflow.http.redact.redact_url`).
"""

from __future__ import annotations


class OciflowError(Exception):
    """Base of every error ociflow raises."""


class InvalidReferenceError(OciflowError, ValueError):
    """A reference string does not follow the grammar of its transport."""


class InvalidDigestError(OciflowError, ValueError):
    """A digest fails the OCI grammar or its algorithm's encoded form (image-spec descriptor.md)."""


class InvalidManifestError(OciflowError):
    """A manifest or index is malformed, ambiguous, or over the size cap."""


class LayoutError(OciflowError):
    """An OCI image layout is missing, malformed, or unsafe to read (symlinks, escapes)."""


class NotFoundError(OciflowError):
    """The named tag, manifest or blob does not exist."""


class VerificationError(OciflowError):
    """Content does not match the descriptor it was fetched for."""


class DigestMismatchError(VerificationError):
    """Size or digest of received content differs from the descriptor."""


class TransportError(OciflowError):
    """The connection failed: refused, reset, TLS failure, or stalled."""


class RegistryError(OciflowError):
    """A registry answered with an error status.

    ``status`` is the HTTP status; ``codes`` the OCI error codes from the body, if any.
    """

    def __init__(self, message: str, *, status: int = 0, codes: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.codes = codes


class AuthenticationError(RegistryError):
    """The registry refused the request for lack of (valid) credentials: 401 or 403."""


class TooManyRequestsError(RegistryError):
    """The registry rate-limited the request (429)."""


class CancelledTransferError(OciflowError):
    """The transfer was interrupted (Ctrl-C, cancellation); running it again continues it."""
