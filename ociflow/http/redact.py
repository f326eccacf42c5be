"""Make URLs and free text safe to put in error messages and logs.

Query strings carry secrets (pre-signed S3 ``X-Amz-Signature``, Azure SAS ``sig=``, distribution's
HMAC'd upload ``_state``) and userinfo carries passwords, so neither may reach a message
(reliability.md §2.2.3, S1). Query *names* are kept: they help debugging and reveal nothing.
"""

from __future__ import annotations

import re
from urllib.parse import SplitResult, urlsplit, urlunsplit

from yarl import URL

REDACTED = "REDACTED"

# A URL inside free text (a registry's error message, say): scheme://, then up to a space or a
# character that commonly closes a quoted URL.
_URL_IN_TEXT = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://[^\s\"'<>]+")


def redact_url(url: str | URL) -> str:
    """``url`` without userinfo or fragment, every query value replaced by ``REDACTED``.

    Never raises: text that does not parse as a URL is reduced to ``<unparsable URL>``.
    """
    text = url.human_repr() if isinstance(url, URL) else str(url)
    try:
        parts = urlsplit(text)
        host = parts.hostname or ""
        port = parts.port  # raises ValueError on a malformed port
    except ValueError:
        return "<unparsable URL>"
    if ":" in host:  # IPv6 literal: urlsplit dropped its brackets
        host = f"[{host}]"
    netloc = host if port is None else f"{host}:{port}"
    # A parameter without ``=`` (``?opaque-token``) may itself be the secret: redacted whole.
    query = "&".join(
        f"{param.partition('=')[0]}={REDACTED}" if "=" in param else REDACTED
        for param in parts.query.split("&")
        if param
    )
    return urlunsplit(SplitResult(parts.scheme, netloc, parts.path, query, ""))


def redact_text(text: str) -> str:
    """``text`` with every URL in it passed through :func:`redact_url`."""
    return _URL_IN_TEXT.sub(lambda match: redact_url(match.group(0)), text)
