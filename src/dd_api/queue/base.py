"""The scan queue interface shared by the SQS and local implementations.

Semantics are SQS's (standard queue) so that code tested on the local queue behaves the same
on AWS: delivery is at least once and unordered, a received message stays invisible for its
visibility timeout and then comes back unless deleted, and each receive hands out a new
receipt that is the only way to delete the message or change its visibility.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

# SQS limits (https://docs.aws.amazon.com/AWSSimpleQueueService/latest/SQSDeveloperGuide/
# quotas-messages.html); the local queue clamps to them too, so both behave alike.
MAX_DELAY = 900.0
MAX_VISIBILITY = 43_200.0
MAX_WAIT = 20.0
MAX_MESSAGES = 10
MAX_BODY_BYTES = 262_144


class QueueError(Exception):
    """The queue is unreachable or refused a call. The text is safe to log: class names and
    error codes only, never an endpoint, a receipt or a message body."""


class ReceiptInvalid(QueueError):
    """The receipt no longer identifies an in-flight message: it was deleted, or received
    again since (which hands out a new receipt)."""


@dataclass(frozen=True)
class Received:
    body: str
    receipt: str  # for delete and set_visibility; a new one on every receive
    receive_count: int  # 1 on the first delivery
    sent_at: float  # epoch seconds when first sent


@dataclass(frozen=True)
class QueueDepth:
    """Approximate message counts, as SQS reports them."""

    visible: int
    in_flight: int  # received, not deleted, visibility timeout not over
    delayed: int  # sent with a delay that has not run out


class ScanQueue(Protocol):
    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def send(self, body: str, *, delay: float = 0.0) -> None:
        """Queue ``body``; it becomes receivable after ``delay`` seconds (0-900)."""

    async def receive(self, *, max_messages: int, wait: float, visibility: float) -> list[Received]:
        """Long poll: up to ``max_messages`` (1-10) as soon as one is available, or [] after
        ``wait`` seconds (0-20). Each stays invisible for ``visibility`` seconds (0-43200).

        Cancelling the call raises CancelledError; messages the queue had already handed
        out by then come back when their visibility runs out."""

    async def delete(self, receipt: str) -> None:
        """Delete the message received with ``receipt``. A receipt that is no longer current
        (the message was deleted, or received again since) is ignored, as on SQS: the call
        succeeds and a message received again stays."""

    async def set_visibility(self, receipt: str, seconds: float) -> None:
        """Hide the message for ``seconds`` from now (0 makes it visible at once).

        Raises ReceiptInvalid when the receipt is no longer current (where the queue says
        so: SQS may accept an outdated receipt)."""

    async def depth(self) -> QueueDepth: ...

    async def ping(self) -> None:
        """Raise QueueError when the queue cannot be used."""


def clamp_delay(seconds: float) -> float:
    return _clamp("delay", seconds, 0.0, MAX_DELAY)


def clamp_visibility(seconds: float) -> float:
    return _clamp("visibility", seconds, 0.0, MAX_VISIBILITY)


def clamp_wait(seconds: float) -> float:
    return _clamp("wait", seconds, 0.0, MAX_WAIT)


def clamp_max_messages(count: int) -> int:
    return max(1, min(MAX_MESSAGES, int(count)))


def _clamp(name: str, value: float, low: float, high: float) -> float:
    # min/max let NaN through as the upper bound: refuse it instead of guessing
    if math.isnan(value):
        raise ValueError(f"queue {name} is not a number")
    return max(low, min(high, float(value)))
