"""The retry policy: how many attempts, how long to wait between them, what is retryable.

One :class:`RetryPolicy` serves every place that retries: whole requests (the retry layer,
:mod:`ociflow.http.retrylayer`) and resumed blob bodies (the registry target). Budgets are small
and bounded, as in the peers (reliability.md §0.2): exponential backoff with jitter,
``Retry-After`` honoured in both of its forms up to a cap (:func:`parse_retry_after`).

Pure policy: no I/O and no aiohttp here, so building a policy (the CLI, the Python API) imports
nothing heavy.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime

# 408/429 and the 5xx a gateway or overloaded registry sends; never 401/403/404 (P13).
RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
# Statuses whose Retry-After header means "come back then" (RFC 9110 §10.2.3).
RETRY_AFTER_STATUSES = frozenset({429, 503})


@dataclass(frozen=True)
class RetryPolicy:
    """``attempts`` is the total number of tries of one request (1 disables retries).

    The wait before retry *n* (1-based) is ``base_delay * 2**(n-1)``, capped at ``max_delay``,
    with +-``jitter`` (a fraction) applied. A ``Retry-After`` longer than ``max_wait`` is not
    waited for: the request fails at once with a rate-limit error that names the wait.
    """

    attempts: int = 5
    base_delay: float = 0.25
    max_delay: float = 8.0
    max_wait: float = 60.0
    jitter: float = 0.2

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("retry attempts must be at least 1")
        if min(self.base_delay, self.max_delay, self.max_wait, self.jitter) < 0:
            raise ValueError("retry delays must not be negative")

    @classmethod
    def with_retries(cls, retries: int, *, max_wait: float = 60.0) -> RetryPolicy:
        """A policy of ``retries`` retries after the first attempt (the CLI's ``--retries``)."""
        if retries < 0:
            raise ValueError("retries must not be negative")
        return cls(attempts=retries + 1, max_wait=max_wait)

    def backoff(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (1 = the first retry)."""
        delay = min(self.max_delay, self.base_delay * 2.0 ** max(0, retry - 1))
        if self.jitter:
            delay *= 1 + random.uniform(-self.jitter, self.jitter)
        return max(0.0, delay)

    def delay(self, retry: int, retry_after: float | None) -> float:
        """The wait before retry ``retry``: the backoff, but never less than ``retry_after``
        (the server's ``Retry-After``, if any)."""
        return max(self.backoff(retry), retry_after or 0.0)

    @staticmethod
    def retryable_status(status: int) -> bool:
        return status in RETRYABLE_STATUSES


NO_RETRY = RetryPolicy(attempts=1)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP-date.

    RFC 9110 §10.2.3. ``now`` is the current Unix time (for tests). A date in the past means
    0. Anything else (absent, negative, malformed) gives ``None``: the caller falls back to
    its own backoff rather than trusting a value it cannot read.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    if text.isascii() and text.isdigit():
        return float(int(text))
    try:
        when = parsedate_to_datetime(text)
    except (ValueError, TypeError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)  # HTTP-dates are GMT; a missing zone means GMT too
    wait = when.timestamp() - (time.time() if now is None else now)
    return max(0.0, wait) if math.isfinite(wait) else None
