"""Map what the network says to the :mod:`ociflow.errors` tree.

Two boundaries: an HTTP error status with its (capped) OCI error body becomes a
:class:`RegistryError` subclass or :class:`NotFoundError`; an aiohttp or OS exception becomes a
:class:`TransportError`. Messages are built here from known parts only: aiohttp's own ``str()``
embeds the request URL with its query string, so it never reaches a message (reliability.md
§2.2.3).
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
from typing import TYPE_CHECKING

import aiohttp

from ociflow.errors import (
    AuthenticationError,
    NotFoundError,
    OciflowError,
    RegistryError,
    TooManyRequestsError,
    TransportError,
)
from ociflow.http.redact import redact_text

if TYPE_CHECKING:
    from ociflow.http.message import Response

# Error bodies are untrusted and only read for their codes (reliability.md §2.2.6).
MAX_ERROR_BODY = 64 * 1024
# One registry message in an error line; the rest is noise.
_MAX_MESSAGE = 200

# OpenSSL's reasons when the peer answered a TLS ClientHello with something that is not TLS at
# all (a plain-HTTP server answering "HTTP/1.1 400"): 1.1/3.0 say WRONG_VERSION_NUMBER, 3.2+
# RECORD_LAYER_FAILURE, some builds PACKET_LENGTH_TOO_LONG, old ones UNKNOWN_PROTOCOL.
_NOT_TLS_REASONS = frozenset(
    {"WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG", "UNKNOWN_PROTOCOL"}
)


class NotTLSError(TransportError):
    """The server does not speak TLS at all: the only case a loopback registry may fall back
    to plain HTTP (never on a certificate error; reliability.md T1, CVE-2014-5277)."""


def parse_error_body(body: bytes) -> tuple[tuple[str, str], ...]:
    """``(code, message)`` pairs from an OCI error body (distribution-spec "Error Codes").

    Lenient (protocol.md §1.2): a non-JSON body, a missing ``errors`` list, or entries of the
    wrong shape yield what can be read, possibly nothing. Docker Hub's ``{"message": ...}``
    body yields one pair with an empty code. Never raises.
    """
    try:
        obj = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return ()
    if not isinstance(obj, dict):
        return ()
    errors = obj.get("errors")
    pairs: list[tuple[str, str]] = []
    if isinstance(errors, list):
        for entry in errors[:20]:
            if not isinstance(entry, dict):
                continue
            code, message = entry.get("code"), entry.get("message")
            pairs.append(
                (code if isinstance(code, str) else "", message if isinstance(message, str) else "")
            )
    if not pairs:
        for key in ("message", "error", "details"):
            value = obj.get(key)
            if isinstance(value, str) and value:
                pairs.append(("", value))
                break
    return tuple(pairs)


def _clean(text: str) -> str:
    """One line of printable text, URLs redacted, length capped."""
    line = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    line = redact_text(line)
    return line if len(line) <= _MAX_MESSAGE else line[: _MAX_MESSAGE - 3] + "..."


def _describe(
    status: int, reason: str, body: bytes, content_type: str
) -> tuple[str, tuple[str, ...]]:
    pairs = parse_error_body(body)
    codes = tuple(code for code, _ in pairs if code)
    if pairs:
        detail = "; ".join(" ".join(p for p in (code, _clean(msg)) if p) for code, msg in pairs)
        return f"{status} {detail}", codes
    text = f"{status} {_clean(reason)}".strip()
    if content_type.startswith("text/plain") and body:
        # Plain-text bodies (Docker Hub's 429, proxies) say what went wrong; HTML pages don't.
        snippet = _clean(body[:_MAX_MESSAGE * 2].decode("utf-8", "replace"))
        if snippet:
            text += f": {snippet}"
    return text, codes


def error_for_status(
    status: int, body: bytes, context: str, *, reason: str = "", content_type: str = ""
) -> OciflowError:
    """The error for an HTTP error ``status``; ``context`` is ``"<reference>: <operation>"``.

    404 → :class:`NotFoundError`, 401/403 → :class:`AuthenticationError`, 429 →
    :class:`TooManyRequestsError`, anything else → :class:`RegistryError`. ``body`` is cut to
    :data:`MAX_ERROR_BODY` bytes.
    """
    detail, codes = _describe(status, reason, body[:MAX_ERROR_BODY], content_type)
    message = f"{context}: {detail}"
    if status == 404:
        return NotFoundError(message)
    if status in (401, 403):
        return AuthenticationError(message, status=status, codes=codes)
    if status == 429:
        return TooManyRequestsError(message, status=status, codes=codes)
    return RegistryError(message, status=status, codes=codes)


async def error_from_response(response: Response, context: str) -> OciflowError:
    """Read at most :data:`MAX_ERROR_BODY` bytes of ``response``, release it, map its status."""
    try:
        body = await response.read(MAX_ERROR_BODY)
    except TransportError:
        body = b""  # the status alone still says what happened
    finally:
        response.release()
    return error_for_status(
        response.status,
        body,
        context,
        reason=response.reason,
        content_type=response.headers.get("Content-Type", ""),
    )


def transport_error(exc: BaseException, context: str) -> TransportError:
    """A :class:`TransportError` for an aiohttp/OS exception raised while talking to a server."""
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        cert = exc.certificate_error
        why = getattr(cert, "verify_message", None) or getattr(cert, "reason", None) or "untrusted"
        return TransportError(f"{context}: TLS certificate verification failed ({why})")
    if isinstance(exc, aiohttp.ClientSSLError):
        reason = _ssl_reason(exc)
        if reason in _NOT_TLS_REASONS:
            return NotTLSError(f"{context}: the server does not speak TLS ({reason})")
        return TransportError(f"{context}: TLS handshake failed ({reason or 'unknown reason'})")
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return TransportError(f"{context}: timed out connecting to the registry")
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return TransportError(f"{context}: cannot resolve the registry host")
    if isinstance(exc, aiohttp.ClientConnectorError):
        return TransportError(
            f"{context}: cannot connect to the registry ({_os_reason(exc.os_error)})"
        )
    if isinstance(exc, (aiohttp.ServerTimeoutError, asyncio.TimeoutError)):
        return TransportError(f"{context}: the connection stalled (no data within the timeout)")
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return TransportError(f"{context}: the registry closed the connection")
    if isinstance(exc, aiohttp.ClientPayloadError):
        return TransportError(f"{context}: the connection broke while reading the body")
    if isinstance(exc, aiohttp.ClientResponseError):
        return TransportError(f"{context}: invalid HTTP response ({exc.status})")
    if isinstance(exc, aiohttp.InvalidURL):
        return TransportError(f"{context}: invalid URL")
    if isinstance(exc, OSError):  # aiohttp.ClientOSError included
        return TransportError(f"{context}: connection error ({_os_reason(exc)})")
    return TransportError(f"{context}: HTTP client error ({type(exc).__name__})")


def _ssl_reason(exc: BaseException) -> str:
    for candidate in (exc, getattr(exc, "os_error", None), exc.__cause__):
        # aiohttp's ClientSSLError subclasses ssl.SSLError without setting ``reason``.
        reason = getattr(candidate, "reason", None) if isinstance(candidate, ssl.SSLError) else None
        if reason:
            return str(reason)
    return ""


def _os_reason(exc: BaseException | None) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ConnectionResetError):
        return "connection reset"
    if isinstance(exc, socket.gaierror):
        return "cannot resolve host"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return type(exc).__name__ if exc is not None else "unknown error"
