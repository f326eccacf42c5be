"""The retry policy: how many attempts, how long to wait between them, what is retryable.

One :class:`RetryPolicy` serves every place that retries: whole requests (the retry layer) and
resumed blob bodies (the registry target). Budgets are small and bounded, as in the peers
(reliability.md §0.2): exponential backoff with jitter, ``Retry-After`` honoured up to a cap.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

# 408/429 and the 5xx a gateway or overloaded registry sends; never 401/403/404 (P13).
RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


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

    def backoff(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (1 = the first retry)."""
        delay = min(self.max_delay, self.base_delay * 2.0 ** max(0, retry - 1))
        if self.jitter:
            delay *= 1 + random.uniform(-self.jitter, self.jitter)
        return max(0.0, delay)

    @staticmethod
    def retryable_status(status: int) -> bool:
        return status in RETRYABLE_STATUSES


NO_RETRY = RetryPolicy(attempts=1)
