"""One scan, as attempts within a deadline: shared by every scan engine.

An engine knows how to make one attempt (send the bytes to scan-files, or to clamd); this
module decides whether to try again, when, and what the scan's result is.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

logger = logging.getLogger("dd_api.scanning")

# An attempt started with less time than this would end as "deadline reached" whatever the
# scanner does, hiding the failure that made it retry.
MIN_ATTEMPT_SECONDS = 0.5


@dataclass(frozen=True)
class ScanResult:
    verdict: str | None
    """The scanner's verdict ("clean", "malicious", "unable_to_scan", ...); None if none."""
    checksum: str
    """SHA-256 hex of the bytes sent in the attempt that got the verdict ("" without one)."""
    attempts: int
    reason: str | None = None
    """Without a verdict: why, short and secret-free."""
    retryable: bool = False
    """Without a verdict: whether trying again later may succeed."""


@dataclass(frozen=True)
class Attempt:
    """What one attempt produced: a verdict, a retryable failure, or a permanent failure."""

    verdict: str | None = None
    failure: str | None = None  # a short, fixed vocabulary: "http 502", "ConnectError", ...
    detail: str | None = None  # the result's reason, when it says more than the failure
    retryable: bool = False
    retry_after: float | None = None  # the scanner's own word on when to try again
    checksum: str = ""

    @property
    def reason(self) -> str | None:
        return self.detail or self.failure


class Retrier:
    def __init__(
        self,
        *,
        label: str,
        backoff_base: float,
        backoff_max: float,
        on_failure: Callable[[str], None] | None,
    ) -> None:
        self._label = label  # names the engine in log lines
        self._backoff_base = backoff_base
        self._backoff_max = backoff_max
        self._on_failure = on_failure  # told each failed attempt's kind (a metric label)

    async def run(
        self,
        attempt: Callable[[float], Awaitable[Attempt]],
        *,
        deadline: float,
        retry: bool,
        request_id: str,
    ) -> ScanResult:
        """``attempt(seconds left)`` until it has a verdict, fails for good, or the
        deadline leaves no time for another; once only unless ``retry``."""
        loop = asyncio.get_running_loop()
        deadline_at = loop.time() + deadline
        attempts = 0
        outcome = Attempt(failure="no time for an attempt", retryable=True)
        while (remaining := deadline_at - loop.time()) > 0:
            attempts += 1
            outcome = await attempt(remaining)
            if outcome.verdict is None and self._on_failure is not None:
                self._on_failure(outcome.failure or "unknown")
            if outcome.verdict is not None or not outcome.retryable or not retry:
                break
            delay = outcome.retry_after
            if delay is None:
                delay = self._backoff(attempts)
            if deadline_at - (loop.time() + delay) < min(MIN_ATTEMPT_SECONDS, deadline / 4):
                break  # no time for a real attempt: give up now, with this attempt's reason
            logger.warning(
                "%s attempt %d failed (%s), retrying in %.2fs",
                self._label,
                attempts,
                outcome.reason,
                delay,
                extra={"scan_request_id": request_id, "scan_attempts": attempts},
            )
            await asyncio.sleep(delay)
        return ScanResult(
            verdict=outcome.verdict,
            checksum=outcome.checksum,
            attempts=attempts,
            reason=None if outcome.verdict else outcome.reason,
            retryable=outcome.retryable,
        )

    def _backoff(self, attempts: int) -> float:
        """Full jitter: uniform in [0, base * 2^(attempts-1)], capped at backoff_max."""
        ceiling = min(self._backoff_max, self._backoff_base * 2 ** (attempts - 1))
        return random.uniform(0.0, ceiling)
