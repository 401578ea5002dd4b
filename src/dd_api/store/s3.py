"""S3 store: SSE-C with the document's own key, SSE-S3 for template attachments."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AsyncExitStack
from datetime import datetime
from typing import IO, Any
from urllib.parse import urlencode

import aioboto3
from botocore.config import Config as BotoConfig
from botocore.exceptions import BotoCoreError, ClientError
from botocore.handlers import add_expect_header

from .base import (
    DocumentKeyMismatch,
    DocumentNotFound,
    Location,
    StoredDocument,
    StoreError,
    with_fallback,
)

log = logging.getLogger(__name__)

# Each chunk passes through botocore, Quart, Hypercorn and h11 once: 256 KiB relays a download
# with about 10 % less CPU than 64 KiB, and 1 MiB gains nothing more (bench/results/findings.md).
CHUNK_SIZE = 256 * 1024
# S3's answers when the SSE-C key is missing, wrong, or not 32 bytes.
_KEY_ERRORS = {"InvalidRequest", "AccessDenied", "InvalidArgument", "400", "403"}
# S3's answer when an SSE-C object is asked for without a key
_NO_KEY_ERRORS = {"InvalidRequest", "400"}
_NOT_FOUND = {"NoSuchKey", "404", "NotFound"}
# Standard mode's own default: a transient error is tried three times in all, so an endpoint
# that never answers holds a call for three read timeouts plus at most 3 s of backoff.
MAX_ATTEMPTS = 3
MAX_BACKOFF = sum(2**attempt for attempt in range(MAX_ATTEMPTS - 1))  # botocore: rand * 2^n s


class S3Store:
    def __init__(
        self,
        bucket: str,
        *,
        max_pool_connections: int = 50,
        download_pool_connections: int = 32,
        connect_timeout: float = 3.0,
        read_timeout: float = 10.0,
    ) -> None:
        self.bucket = bucket
        self._max_pool_connections = max_pool_connections
        self._download_pool_connections = download_pool_connections
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        # every attempt timing out, plus the backoff between them
        self._deadline = MAX_ATTEMPTS * (connect_timeout + read_timeout) + MAX_BACKOFF
        self._stack: AsyncExitStack | None = None
        self._client: Any = None
        # A download holds its GetObject connection for as long as its reader takes. On a
        # pool of their own, downloads can never take the connections that uploads,
        # deletes, verdicts and scans need.
        self._downloads: Any = None

    async def open(self) -> None:
        # Endpoint and credentials come from the standard AWS variables
        # (AWS_ENDPOINT_URL_S3, AWS_ACCESS_KEY_ID, ...), as for any AWS SDK.
        session = aioboto3.Session()
        stack = AsyncExitStack()
        try:
            self._client = await self._open_client(stack, session, self._max_pool_connections)
            self._downloads = await self._open_client(
                stack, session, self._download_pool_connections
            )
        except BaseException:
            await stack.aclose()
            raise
        self._stack = stack

    async def _open_client(
        self, stack: AsyncExitStack, session: aioboto3.Session, pool: int
    ) -> Any:
        region = os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION")
        config = BotoConfig(
            max_pool_connections=pool,
            # botocore's defaults (60 s each) let an endpoint that accepts and never answers
            # hold a request for minutes; these bound every attempt.
            connect_timeout=self._connect_timeout,
            read_timeout=self._read_timeout,
            retries={"mode": "standard", "total_max_attempts": MAX_ATTEMPTS},
        )
        client = await stack.enter_async_context(
            session.client("s3", region_name=region or "ca-central-1", config=config)
        )
        # botocore asks for "100 Continue" before sending any file body, and aiohttp waits for
        # it with no timeout (its read timeout starts once the body is sent): an endpoint
        # that never answered would hold every upload for ever. Bodies here are 10 MiB at most.
        client.meta.events.unregister("before-call.s3", add_expect_header)
        return client

    async def close(self) -> None:
        if self._stack is not None:
            await self._stack.aclose()
            self._stack = None

    async def put(
        self,
        location: Location,
        body: IO[bytes],
        *,
        size: int,
        mimetype: str,
        key: bytes | None,
        tags: Mapping[str, str],
    ) -> None:
        await self._call(
            self._client.put_object,
            Bucket=self.bucket,
            Key=location.key,
            Body=body,
            ContentLength=size,
            ContentType=mimetype,
            Tagging=urlencode(tags),
            **_encryption(key),
        )

    async def get(self, location: Location, key: bytes | None) -> StoredDocument:
        response = await with_fallback(
            location, lambda object_key: self._get_object(object_key, key)
        )
        body = response["Body"]
        try:
            return StoredDocument(
                mimetype=response["ContentType"],
                size=response["ContentLength"],
                chunks=body.iter_chunks(CHUNK_SIZE),
                release=body.close,
            )
        except BaseException:
            body.close()  # an unclosed body pins its pool connection
            raise

    async def get_tags(self, location: Location) -> dict[str, str]:
        response = await with_fallback(
            location,
            lambda object_key: self._call(
                self._client.get_object_tagging, Bucket=self.bucket, Key=object_key
            ),
        )
        return {tag["Key"]: tag["Value"] for tag in response["TagSet"]}

    async def last_modified(self, location: Location) -> datetime:
        # Listing needs no SSE-C key, unlike HeadObject and GetObjectAttributes.
        return await with_fallback(location, self._listed_last_modified)

    async def put_tags(self, location: Location, tags: Mapping[str, str]) -> None:
        if not tags:
            await with_fallback(
                location,
                lambda object_key: self._call(
                    self._client.delete_object_tagging, Bucket=self.bucket, Key=object_key
                ),
            )
            return
        tag_set = [{"Key": name, "Value": value} for name, value in tags.items()]
        await with_fallback(
            location,
            lambda object_key: self._call(
                self._client.put_object_tagging,
                Bucket=self.bucket,
                Key=object_key,
                Tagging={"TagSet": tag_set},
            ),
        )

    async def delete(self, location: Location, key: bytes | None) -> None:
        object_key = await with_fallback(location, lambda object_key: self._head(object_key, key))
        # DeleteObject takes no SSE-C parameters: the key was checked by the HEAD above.
        await self._call(self._client.delete_object, Bucket=self.bucket, Key=object_key)

    async def ping(self) -> None:
        await self._call(self._client.head_bucket, Bucket=self.bucket)

    # -- scan copies: what scan-files' own role reads for documents above its size cap ----

    async def copy_for_scanner(
        self, location: Location, key: bytes | None, bucket: str, object_key: str
    ) -> None:
        """Copy the document, server-side, to ``bucket/object_key`` under SSE-S3, untagged:
        scan-files reads it with a role, which no SSE-C object allows."""
        await with_fallback(
            location,
            lambda source_key: self._read_keyed(
                self._client.copy_object,
                Bucket=bucket,
                Key=object_key,
                CopySource={"Bucket": self.bucket, "Key": source_key},
                ServerSideEncryption="AES256",
                TaggingDirective="REPLACE",
                Tagging="",
                **_copy_source_key(key),
            ),
        )

    async def object_tags(self, bucket: str, object_key: str) -> dict[str, str]:
        response = await self._call(self._client.get_object_tagging, Bucket=bucket, Key=object_key)
        return {tag["Key"]: tag["Value"] for tag in response["TagSet"]}

    async def tag_object(self, bucket: str, object_key: str, tags: Mapping[str, str]) -> None:
        tag_set = [{"Key": name, "Value": value} for name, value in tags.items()]
        await self._call(
            self._client.put_object_tagging,
            Bucket=bucket,
            Key=object_key,
            Tagging={"TagSet": tag_set},
        )

    async def delete_object(self, bucket: str, object_key: str) -> None:
        await self._call(self._client.delete_object, Bucket=bucket, Key=object_key)

    async def _get_object(self, object_key: str, key: bytes | None) -> dict[str, Any]:
        response: dict[str, Any] = await self._read_keyed(
            self._downloads.get_object, Bucket=self.bucket, Key=object_key, **_key_params(key)
        )
        return response

    async def _head(self, object_key: str, key: bytes | None) -> str:
        await self._read_keyed(
            self._client.head_object, Bucket=self.bucket, Key=object_key, **_key_params(key)
        )
        return object_key

    async def _listed_last_modified(self, object_key: str) -> datetime:
        response = await self._call(
            self._client.list_objects_v2, Bucket=self.bucket, Prefix=object_key, MaxKeys=1
        )
        for item in response.get("Contents", []):
            if item["Key"] == object_key:
                modified: datetime = item["LastModified"]
                return modified
        raise DocumentNotFound(object_key)

    async def _call(self, method: Callable[..., Awaitable[Any]], **params: Any) -> Any:
        """A call whose refusals are store errors (a missing object: DocumentNotFound)."""
        return await self._mapped(method, params, reads_keyed_object=False)

    async def _read_keyed(self, method: Callable[..., Awaitable[Any]], **params: Any) -> Any:
        """A read of the document itself, where S3 refusing the SSE-C key (or its absence)
        means the caller's key does not open it, not that the store failed."""
        return await self._mapped(method, params, reads_keyed_object=True)

    async def _mapped(
        self,
        method: Callable[..., Awaitable[Any]],
        params: dict[str, Any],
        *,
        reads_keyed_object: bool,
    ) -> Any:
        try:
            # The timeouts bound waiting for an answer, not sending a body: a peer that
            # stops reading would hold a large upload for ever without this.
            async with asyncio.timeout(self._deadline):
                return await method(**params)
        except TimeoutError:
            raise StoreError(
                f"S3 {method.__name__} failed: no answer within {self._deadline:g} s"
            ) from None
        except ClientError as error:
            code = str(error.response.get("Error", {}).get("Code", ""))
            if code in _NOT_FOUND:
                raise DocumentNotFound(params.get("Key", "")) from None
            key_sent = "SSECustomerKey" in params or "CopySourceSSECustomerKey" in params
            if reads_keyed_object and code in (_KEY_ERRORS if key_sent else _NO_KEY_ERRORS):
                raise DocumentKeyMismatch(code) from None
            # a refused write (SSE-C blocked on the bucket, a missing permission) lands here
            raise StoreError(f"S3 {method.__name__} failed: {code}") from None
        except BotoCoreError as error:
            raise StoreError(f"S3 {method.__name__} failed: {type(error).__name__}") from None


def _key_params(key: bytes | None) -> dict[str, Any]:
    return {} if key is None else {"SSECustomerKey": key, "SSECustomerAlgorithm": "AES256"}


def _copy_source_key(key: bytes | None) -> dict[str, Any]:
    if key is None:
        return {}
    return {"CopySourceSSECustomerKey": key, "CopySourceSSECustomerAlgorithm": "AES256"}


def _encryption(key: bytes | None) -> dict[str, Any]:
    return {"ServerSideEncryption": "AES256"} if key is None else _key_params(key)
