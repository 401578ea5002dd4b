"""The scan queue: every upload sends a message, a consumer in every instance scans them.

One interface with an SQS and a local (SQLite) implementation, and the message codec."""

from .base import QueueDepth, QueueError, ReceiptInvalid, Received, ScanQueue
from .local import LocalQueue
from .message import (
    MalformedMessage,
    MessageCodec,
    MessageError,
    ScanMessage,
    UndecryptableKey,
    new_queue_key,
    parse_queue_key,
)
from .sqs import SqsQueue

__all__ = [
    "LocalQueue",
    "MalformedMessage",
    "MessageCodec",
    "MessageError",
    "QueueDepth",
    "QueueError",
    "ReceiptInvalid",
    "Received",
    "ScanMessage",
    "ScanQueue",
    "SqsQueue",
    "UndecryptableKey",
    "new_queue_key",
    "parse_queue_key",
]
