"""SQS scan queue on aioboto3 (a standard queue)."""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

import aioboto3
from botocore.config import Config as BotoConfig
from botocore.exceptions import BotoCoreError, ClientError

from .base import (
    MAX_WAIT,
    QueueDepth,
    QueueError,
    ReceiptInvalid,
    Received,
    clamp_delay,
    clamp_max_messages,
    clamp_visibility,
    clamp_wait,
)

log = logging.getLogger(__name__)

DEFAULT_REGION = "ca-central-1"
# A receive may legitimately take the whole long poll: the read timeout must outlast it,
# or every idle poll would end in a timeout and a retry.
READ_TIMEOUT = MAX_WAIT + 15
CONNECT_TIMEOUT = 3.0
MAX_ATTEMPTS = 3  # the first call and two retries, with botocore's standard backoff
# SQS's answers for a receipt that is outdated or for a message no longer in flight
_RECEIPT_ERRORS = {"ReceiptHandleIsInvalid", "MessageNotInflight", "InvalidReceiptHandle"}
_RECEIVE_ATTRIBUTES = ["ApproximateReceiveCount", "SentTimestamp"]
_DEPTH_ATTRIBUTES = [
    "ApproximateNumberOfMessages",
    "ApproximateNumberOfMessagesNotVisible",
    "ApproximateNumberOfMessagesDelayed",
]


class SqsQueue:
    def __init__(self, url: str, *, region: str | None = None) -> None:
        self.url = url
        self._region = region
        self._stack: AsyncExitStack | None = None
        self._client: Any = None

    async def open(self) -> None:
        # Endpoint and credentials come from the standard AWS variables
        # (AWS_ENDPOINT_URL_SQS or AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...), read by botocore.
        region = (
            self._region
            or os.environ.get("AWS_DEFAULT_REGION")
            or os.environ.get("AWS_REGION")
            or DEFAULT_REGION
        )
        config = BotoConfig(
            connect_timeout=CONNECT_TIMEOUT,
            read_timeout=READ_TIMEOUT,
            retries={"mode": "standard", "max_attempts": MAX_ATTEMPTS},
        )
        stack = AsyncExitStack()
        try:
            self._client = await stack.enter_async_context(
                aioboto3.Session().client("sqs", region_name=region, config=config)
            )
        except BotoCoreError as error:
            await stack.aclose()
            raise QueueError(f"SQS client failed: {type(error).__name__}") from None
        self._stack = stack

    async def close(self) -> None:
        if self._stack is not None:
            stack, self._stack, self._client = self._stack, None, None
            await stack.aclose()

    async def send(self, body: str, *, delay: float = 0.0) -> None:
        await self._call(
            "send_message",
            QueueUrl=self.url,
            MessageBody=body,
            # SQS takes whole seconds: round up so a message never comes out early
            DelaySeconds=math.ceil(clamp_delay(delay)),
        )

    async def receive(self, *, max_messages: int, wait: float, visibility: float) -> list[Received]:
        response = await self._call(
            "receive_message",
            QueueUrl=self.url,
            MaxNumberOfMessages=clamp_max_messages(max_messages),
            WaitTimeSeconds=math.ceil(clamp_wait(wait)),
            VisibilityTimeout=math.ceil(clamp_visibility(visibility)),
            MessageSystemAttributeNames=_RECEIVE_ATTRIBUTES,
        )
        return [_received(message) for message in response.get("Messages", [])]

    async def delete(self, receipt: str) -> None:
        try:
            await self._call("delete_message", QueueUrl=self.url, ReceiptHandle=receipt)
        except ReceiptInvalid:
            # AWS accepts an outdated receipt without deleting; some emulators refuse it.
            # Either way the message was received again and will be dealt with then.
            log.info("Scan queue receipt no longer current: message not deleted")

    async def set_visibility(self, receipt: str, seconds: float) -> None:
        await self._call(
            "change_message_visibility",
            QueueUrl=self.url,
            ReceiptHandle=receipt,
            VisibilityTimeout=math.ceil(clamp_visibility(seconds)),
        )

    async def depth(self) -> QueueDepth:
        response = await self._call(
            "get_queue_attributes", QueueUrl=self.url, AttributeNames=_DEPTH_ATTRIBUTES
        )
        attributes = response.get("Attributes", {})

        def count(name: str) -> int:
            return int(attributes.get(name, 0))

        return QueueDepth(
            visible=count("ApproximateNumberOfMessages"),
            in_flight=count("ApproximateNumberOfMessagesNotVisible"),
            delayed=count("ApproximateNumberOfMessagesDelayed"),
        )

    async def ping(self) -> None:
        await self._call("get_queue_attributes", QueueUrl=self.url, AttributeNames=["QueueArn"])

    async def _call(self, operation: str, **params: Any) -> Any:
        if self._client is None:
            raise QueueError(f"SQS {operation} failed: queue not open")
        method: Callable[..., Awaitable[Any]] = getattr(self._client, operation)
        try:
            return await method(**params)
        except ClientError as error:
            code = _error_code(error)
            if code in _RECEIPT_ERRORS:
                raise ReceiptInvalid(f"SQS {operation} failed: {code}") from None
            raise QueueError(f"SQS {operation} failed: {code}") from None
        except BotoCoreError as error:
            raise QueueError(f"SQS {operation} failed: {type(error).__name__}") from None


def _error_code(error: ClientError) -> str:
    # The JSON protocol may name errors "AWS.SimpleQueueService.X" or "com.amazonaws.sqs#X"
    code = str(error.response.get("Error", {}).get("Code", "")) or "unknown"
    return code.rsplit("#", 1)[-1].rsplit(".", 1)[-1]


def _received(message: dict[str, Any]) -> Received:
    attributes = message.get("Attributes", {})
    sent_ms = attributes.get("SentTimestamp")
    return Received(
        body=message["Body"],
        receipt=message["ReceiptHandle"],
        receive_count=int(attributes.get("ApproximateReceiveCount", 1)),
        sent_at=int(sent_ms) / 1000 if sent_ms else time.time(),
    )
