"""Retries with exponential backoff and jitter, honouring ``Retry-After``; sleep and randomness are passed in.

What is retried is decided where the failure is seen (:class:`CallError` carries ``retryable``): timeouts,
connection errors, 429 and 5xx are, and so are answers the gateway's headers show came through a failure
(``not_pinned``, ``gateway_retried``: ``run.unattributable``); other 4xx are not (the same request would fail the
same way, and each attempt may cost money).
"""

from __future__ import annotations

import email.utils
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

__all__ = ["CallError", "RetryPolicy", "parse_retry_after", "with_retries"]

T = TypeVar("T")


class CallError(Exception):
    """One failed attempt: a short reason code (``timeout``, ``http_503``...) and whether trying again may help."""

    def __init__(self, reason: str, retryable: bool, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how long to wait: retry ``n`` waits about ``base_delay * 2**n`` (capped), half of it jittered."""

    retries: int = 3
    base_delay: float = 1.0
    max_delay: float = 30.0
    max_retry_after: float = 120.0
    """A server asking for a longer pause than this is still retried after this long (a run must not stall)."""

    def delay(self, attempt: int, retry_after: float | None, rand: Callable[[], float]) -> float:
        """Seconds to wait before retry ``attempt`` (0-based); ``rand`` returns a float in [0, 1).

        "Equal jitter": at least half the exponential step, so retries spread out (many workers hit by the same
        outage do not retry in lockstep) but never hammer. A server's ``Retry-After`` replaces the step, plus up to
        10% jitter.
        """
        if retry_after is not None:
            wait = min(max(retry_after, 0.0), self.max_retry_after)
            return wait + 0.1 * wait * rand()
        step = min(self.max_delay, self.base_delay * 2.0**attempt)
        return step / 2 + step / 2 * rand()


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delay-seconds or an HTTP date, RFC 9110), None if unusable."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        return max(when.timestamp() - now, 0.0)
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


async def with_retries(
    call: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    sleep: Callable[[float], Awaitable[None]],
    rand: Callable[[], float],
    on_retry: Callable[[CallError], None] = lambda _: None,
) -> T:
    """``await call()``, retrying a retryable :class:`CallError` up to ``policy.retries`` times; the last one raises."""
    attempt = 0
    while True:
        try:
            return await call()
        except CallError as exc:
            if not exc.retryable or attempt >= policy.retries:
                raise
            on_retry(exc)
            await sleep(policy.delay(attempt, exc.retry_after, rand))
            attempt += 1
