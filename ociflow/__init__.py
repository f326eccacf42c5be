"""ociflow: a fast, verifying transfer engine for container images and OCI artifacts.

The public API is small: :func:`copy` (async) and :func:`copy_sync`, their :class:`CopyResult`,
:class:`HttpOptions`, progress sinks, the model types, and the error tree. Names are imported
lazily so that ``import ociflow`` (and ``ociflow --version``) stays fast.
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# A library logs; the application decides where that goes (without this, Python's last-resort
# handler would print ociflow's warnings on stderr of every program that uses it).
logging.getLogger(__name__).addHandler(logging.NullHandler())

_EXPORTS = {
    "AuthenticationError": "ociflow.errors",
    "AzureAD": "ociflow.http.credentials",
    "CancelledTransferError": "ociflow.errors",
    "CopyResult": "ociflow.engine",
    "Credentials": "ociflow.http.credentials",
    "Descriptor": "ociflow.descriptor",
    "Digest": "ociflow.digest",
    "DigestMismatchError": "ociflow.errors",
    "HttpOptions": "ociflow.http.transport",
    "InvalidDigestError": "ociflow.errors",
    "InvalidManifestError": "ociflow.errors",
    "InvalidReferenceError": "ociflow.errors",
    "LayoutError": "ociflow.errors",
    "LayoutReference": "ociflow.reference",
    "NotFoundError": "ociflow.errors",
    "OciflowError": "ociflow.errors",
    "Platform": "ociflow.descriptor",
    "Progress": "ociflow.progress",
    "Registry": "ociflow.manage",
    "RegistryError": "ociflow.errors",
    "RegistryReference": "ociflow.reference",
    "TooManyRequestsError": "ociflow.errors",
    "TqdmProgress": "ociflow.progress",
    "TransportError": "ociflow.errors",
    "VerificationError": "ociflow.errors",
    "copy": "ociflow.engine",
    "copy_sync": "ociflow.engine",
    "parse_reference": "ociflow.reference",
}

__all__ = [
    "AuthenticationError",
    "AzureAD",
    "CancelledTransferError",
    "CopyResult",
    "Credentials",
    "Descriptor",
    "Digest",
    "DigestMismatchError",
    "HttpOptions",
    "InvalidDigestError",
    "InvalidManifestError",
    "InvalidReferenceError",
    "LayoutError",
    "LayoutReference",
    "NotFoundError",
    "OciflowError",
    "Platform",
    "Progress",
    "Registry",
    "RegistryError",
    "RegistryReference",
    "TooManyRequestsError",
    "TqdmProgress",
    "TransportError",
    "VerificationError",
    "__version__",
    "copy",
    "copy_sync",
    "parse_reference",
]

if TYPE_CHECKING:
    from ociflow.descriptor import Descriptor, Platform
    from ociflow.digest import Digest
    from ociflow.engine import CopyResult, copy, copy_sync
    from ociflow.errors import (
        AuthenticationError,
        CancelledTransferError,
        DigestMismatchError,
        InvalidDigestError,
        InvalidManifestError,
        InvalidReferenceError,
        LayoutError,
        NotFoundError,
        OciflowError,
        RegistryError,
        TooManyRequestsError,
        TransportError,
        VerificationError,
    )
    from ociflow.http.credentials import AzureAD, Credentials
    from ociflow.http.transport import HttpOptions
    from ociflow.manage import Registry
    from ociflow.progress import Progress, TqdmProgress
    from ociflow.reference import LayoutReference, RegistryReference, parse_reference


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ociflow' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
