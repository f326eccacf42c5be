"""The retry layer: send a replayable request again after a transient failure.

Design.md principle 3: one small layer over ``send(request)``, at the top of a registry's stack
(so a retry re-runs redirects and re-resolves an expired pre-signed URL). What it retries, at
most ``policy.attempts`` tries with :meth:`RetryPolicy.delay` between them:

- a :class:`~ociflow.errors.TransportError` from below (refused, reset, a server that stalls
  before answering) — but never a TLS failure: a bad certificate or a server that does not
  speak TLS will not get better by asking again (reliability.md T1);
- a 408/429/500/502/503/504 answer, whose body (capped) is read and released first.

Only :attr:`Request.replayable` requests are retried; a streamed upload body can be sent once,
and the uploads code resumes those at its own level (U14). 401/403/404/400 are never retried
(P13). When the budget is spent the mapped error of the last attempt is raised, saying how many
attempts were made. Once a response's headers are back the layer is done: a failure while
reading the body belongs to the caller (ranged resume, P1).

``Retry-After`` on 429/503 is honoured in both forms; a wait above ``policy.max_wait`` fails at
once (P12). A 429 also holds back every other request to the host (:class:`HostBackoff`; P11,
C6), as regclient does, so a rate-limited registry sees the client slow down, not a stampede.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import ssl
import time

import aiohttp

from ociflow.errors import OciflowError, RegistryError, TransportError
from ociflow.http.errors import NotTLSError, error_from_response
from ociflow.http.message import Handler, Layer, Request, Response
from ociflow.http.redact import redact_url
from ociflow.http.retry import RETRY_AFTER_STATUSES, RetryPolicy, parse_retry_after

log = logging.getLogger(__name__)


def retryable_error(exc: BaseException) -> bool:
    """Whether a failure to get a response is worth another attempt.

    Transport errors are, except TLS failures. The transport maps aiohttp exceptions with
    ``raise ... from None``, which hides the original from tracebacks but keeps it as
    ``__context__``: that is where a TLS failure shows.
    """
    if not isinstance(exc, TransportError) or isinstance(exc, NotTLSError):
        return False
    cause = exc.__context__
    return not isinstance(cause, aiohttp.ClientSSLError | ssl.SSLError)


class HostBackoff:
    """When one registry host may be sent its next request: the shared state behind P11/C6.

    :meth:`defer` pushes the deadline out (never in); :meth:`wait` sleeps until it, plus a
    random share of the wait (``jitter``) so the requests held back do not all arrive at the
    same instant. One instance per :class:`~ociflow.http.client.RegistryClient`.
    """

    def __init__(self, jitter: float = 0.2) -> None:
        self.jitter = jitter
        self._until = 0.0

    @property
    def remaining(self) -> float:
        """Seconds until requests to the host may go again (0 when they may now)."""
        return max(0.0, self._until - time.monotonic())

    def defer(self, seconds: float) -> None:
        """Hold every request to the host for at least ``seconds`` from now."""
        self._until = max(self._until, time.monotonic() + seconds)

    async def wait(self) -> None:
        """Return once the host may be sent a request."""
        # A loop: another 429 may push the deadline further while this one sleeps.
        while (remaining := self._until - time.monotonic()) > 0:
            await asyncio.sleep(remaining * (1 + random.uniform(0, self.jitter)))


class RetryLayer(Layer):
    """Retries replayable requests under ``policy``; ``backoff`` is the host's shared state."""

    def __init__(self, inner: Handler, policy: RetryPolicy, backoff: HostBackoff) -> None:
        super().__init__(inner)
        self.policy = policy
        self.backoff = backoff

    async def send(self, request: Request) -> Response:
        policy = self.policy
        attempt = 0
        while True:
            attempt += 1
            await self.backoff.wait()
            try:
                response = await self.inner.send(request)
            except OciflowError as exc:
                if not (
                    request.replayable and attempt < policy.attempts and retryable_error(exc)
                ):
                    if attempt > 1:
                        raise _gave_up(exc, attempt) from None
                    raise
                delay = policy.backoff(attempt)
                self._log_retry(request, str(exc), delay, attempt)
                await asyncio.sleep(delay)
                continue

            status = response.status
            if not policy.retryable_status(status):
                return response
            retry_after = None
            if status in RETRY_AFTER_STATUSES:
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
            too_long = retry_after is not None and retry_after > policy.max_wait
            delay = policy.delay(attempt, retry_after)
            if status == 429 and not too_long:
                # Every request to this host waits, not only this one (P11).
                self.backoff.defer(delay)
            if not request.replayable:
                return response  # sent once; the caller maps or resumes it
            error = await error_from_response(response, request.context)  # reads, releases
            if too_long and retry_after is not None:
                raise _too_long(error, status, retry_after, policy.max_wait, attempt) from None
            if attempt >= policy.attempts:
                raise _gave_up(error, attempt) from None
            self._log_retry(request, str(error), delay, attempt)
            if status != 429:
                await asyncio.sleep(delay)
            # After a 429 the loop's backoff.wait() does the waiting, with everyone else.

    def _log_retry(self, request: Request, why: str, delay: float, attempt: int) -> None:
        # INFO, not WARNING: an unconfigured logger prints warnings, and a retry that then
        # succeeds is not the user's concern (the CLI shows it with --debug).
        log.info(
            "%s (%s %s); retrying in %.2f s (attempt %d of %d)",
            why, request.method, redact_url(request.url), delay, attempt + 1,
            self.policy.attempts,
        )


def _attempts(count: int) -> str:
    return f"{count} attempt" + ("" if count == 1 else "s")


def _gave_up(error: OciflowError, attempts: int) -> OciflowError:
    """``error`` (same class, status and codes) with the number of attempts in its message
    (unchanged when there was only one: nothing was retried)."""
    if attempts <= 1:
        return error
    message = f"{error} (gave up after {_attempts(attempts)})"
    if isinstance(error, RegistryError):
        return type(error)(message, status=error.status, codes=error.codes)
    return type(error)(message)


def _too_long(
    error: OciflowError, status: int, wait: float, max_wait: float, attempts: int
) -> OciflowError:
    """The fail-fast error when the server asks for a wait over the cap (P12): a 429 maps to
    :class:`~ociflow.errors.TooManyRequestsError`, a 503 to a plain registry error."""
    what = "rate limited" if status == 429 else "unavailable"
    message = (
        f"{error}: {what}: the registry asks to retry after {_seconds(wait)} s, more than "
        f"--retry-max-wait {_seconds(max_wait)} s"
    )
    if attempts > 1:
        message += f" (after {_attempts(attempts)})"
    codes = error.codes if isinstance(error, RegistryError) else ()
    cls = type(error) if isinstance(error, RegistryError) else RegistryError
    return cls(message, status=status, codes=codes)


def _seconds(value: float) -> str:
    # Whole seconds, rounded up: "retry after 86400 s" reads better than 86399.73.
    return str(math.ceil(value)) if value >= 1 else f"{value:g}"
