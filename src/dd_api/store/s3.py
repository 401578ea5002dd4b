"""S3 store: SSE-C with the document's own key, SSE-S3 for template attachments."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AsyncExitStack
from datetime import datetime
from typing import Any, BinaryIO
from urllib.parse import urlencode
from uuid import uuid4

import aioboto3
from botocore.config import Config as BotoConfig
from botocore.exceptions import BotoCoreError, ClientError

from .base import (
    PENDING_PREFIX,
    DocumentKeyMismatch,
    DocumentNotFound,
    Location,
    PendingCopy,
    StoredDocument,
    StoreError,
    parse_pending_key,
    with_fallback,
)

log = logging.getLogger(__name__)

# Each chunk passes through botocore, Quart, Hypercorn and h11 once: 256 KiB relays a download
# with about 10 % less CPU than 64 KiB, and 1 MiB gains nothing more (bench/results/findings.md).
CHUNK_SIZE = 256 * 1024
# S3's answers when the SSE-C key is missing, wrong, or not 32 bytes.
_KEY_ERRORS = {"InvalidRequest", "AccessDenied", "InvalidArgument", "400", "403"}
_NOT_FOUND = {"NoSuchKey", "404", "NotFound"}
_KEYED_READS = {"get_object", "head_object"}
# a conditional write lost to another writer
_CONDITION_FAILED = {"PreconditionFailed", "ConditionalRequestConflict", "412", "409"}


class _ConditionFailed(StoreError):
    pass


class S3Store:
    def __init__(self, bucket: str, *, max_pool_connections: int = 50) -> None:
        self.bucket = bucket
        self._max_pool_connections = max_pool_connections
        self._stack: AsyncExitStack | None = None
        self._client: Any = None

    async def open(self) -> None:
        # Endpoint and credentials come from the standard AWS variables
        # (AWS_ENDPOINT_URL_S3, AWS_ACCESS_KEY_ID, ...), as for any AWS SDK.
        region = os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION")
        config = BotoConfig(
            max_pool_connections=self._max_pool_connections,
            retries={"mode": "standard", "max_attempts": 3},
        )
        self._stack = AsyncExitStack()
        self._client = await self._stack.enter_async_context(
            aioboto3.Session().client("s3", region_name=region or "ca-central-1", config=config)
        )

    async def close(self) -> None:
        if self._stack is not None:
            await self._stack.aclose()
            self._stack = None

    async def put(
        self,
        location: Location,
        body: BinaryIO,
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
        return StoredDocument(
            mimetype=response["ContentType"],
            size=response["ContentLength"],
            chunks=body.iter_chunks(CHUNK_SIZE),
            release=body.close,
        )

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

    async def put_pending(self, copy: PendingCopy, body: BinaryIO, *, size: int) -> None:
        await self._call(
            self._client.put_object,
            Bucket=self.bucket,
            Key=copy.location.pending_key,
            Body=body,
            ContentLength=size,
            ContentType=copy.mimetype,
            Metadata=copy.metadata(),
            ServerSideEncryption="AES256",
        )

    async def list_pending(self) -> list[PendingCopy]:
        copies = []
        paginator = self._client.get_paginator("list_objects_v2")
        try:
            async for page in paginator.paginate(Bucket=self.bucket, Prefix=f"{PENDING_PREFIX}/"):
                for item in page.get("Contents", []):
                    ids = parse_pending_key(item["Key"])
                    if ids is None:
                        continue
                    try:
                        head = await self._call(
                            self._client.head_object, Bucket=self.bucket, Key=item["Key"]
                        )
                    except DocumentNotFound:
                        continue  # finished while we were listing
                    copies.append(
                        PendingCopy.from_metadata(*ids, head["Metadata"], head["LastModified"])
                    )
        except (ClientError, BotoCoreError) as error:
            raise StoreError(f"S3 listing failed: {type(error).__name__}") from None
        return copies

    async def read_pending(self, location: Location, out: BinaryIO) -> None:
        response = await self._call(
            self._client.get_object, Bucket=self.bucket, Key=location.pending_key
        )
        body = response["Body"]
        try:
            async for chunk in body.iter_chunks(CHUNK_SIZE):
                out.write(chunk)
        finally:
            body.close()

    async def delete_pending(self, location: Location) -> None:
        keys = [{"Key": location.pending_key}, {"Key": location.lease_key}]
        response = await self._call(
            self._client.delete_objects,
            Bucket=self.bucket,
            Delete={"Objects": keys, "Quiet": True},
        )
        if response.get("Errors"):  # reported per key, not raised
            raise StoreError(f"S3 delete_objects failed: {response['Errors'][0].get('Code')}")

    async def claim(self, location: Location, owner: str, until: datetime) -> bool:
        lease = json.dumps({"owner": owner, "until": until.timestamp(), "nonce": uuid4().hex})
        # Usually nobody holds a lease yet: try to create it before reading anything.
        if await self._put_lease(location, lease, IfNoneMatch="*"):
            return True
        try:
            current = await self._call(
                self._client.get_object, Bucket=self.bucket, Key=location.lease_key
            )
        except DocumentNotFound:  # released since: claim it afresh
            return await self._put_lease(location, lease, IfNoneMatch="*")
        async with current["Body"]:
            held = json.loads(await current["Body"].read())
        if held.get("owner") != owner and held.get("until", 0) > time.time():
            return False
        # replace exactly the lease we read: a competing claim changes the ETag
        return await self._put_lease(location, lease, IfMatch=current["ETag"])

    async def _put_lease(self, location: Location, lease: str, **condition: str) -> bool:
        try:
            await self._call(
                self._client.put_object,
                Bucket=self.bucket,
                Key=location.lease_key,
                Body=lease.encode(),
                ServerSideEncryption="AES256",
                **condition,
            )
        except _ConditionFailed:
            return False
        return True

    async def _get_object(self, object_key: str, key: bytes | None) -> dict[str, Any]:
        return await self._call(
            self._client.get_object, Bucket=self.bucket, Key=object_key, **_key_params(key)
        )

    async def _head(self, object_key: str, key: bytes | None) -> str:
        await self._call(
            self._client.head_object, Bucket=self.bucket, Key=object_key, **_key_params(key)
        )
        return object_key

    async def _listed_last_modified(self, object_key: str) -> datetime:
        response = await self._call(
            self._client.list_objects_v2, Bucket=self.bucket, Prefix=object_key, MaxKeys=1
        )
        for item in response.get("Contents", []):
            if item["Key"] == object_key:
                return item["LastModified"]
        raise DocumentNotFound(object_key)

    async def _call(self, method: Callable[..., Awaitable[Any]], **params: Any) -> Any:
        try:
            return await method(**params)
        except ClientError as error:
            code = str(error.response.get("Error", {}).get("Code", ""))
            if code in _CONDITION_FAILED:
                raise _ConditionFailed(code) from None
            if code in _NOT_FOUND:
                raise DocumentNotFound(params.get("Key", "")) from None
            if (
                code in _KEY_ERRORS
                and "SSECustomerAlgorithm" in params
                and method.__name__ in _KEYED_READS
            ):
                raise DocumentKeyMismatch(code) from None
            if code in {"InvalidRequest", "400"} and method.__name__ in _KEYED_READS:
                # an SSE-C object asked for without a key
                raise DocumentKeyMismatch(code) from None
            # a refused write (SSE-C blocked on the bucket, a missing permission) lands here
            raise StoreError(f"S3 {method.__name__} failed: {code}") from None
        except BotoCoreError as error:
            raise StoreError(f"S3 {method.__name__} failed: {type(error).__name__}") from None


def _key_params(key: bytes | None) -> dict[str, Any]:
    return {} if key is None else {"SSECustomerKey": key, "SSECustomerAlgorithm": "AES256"}


def _encryption(key: bytes | None) -> dict[str, Any]:
    return {"ServerSideEncryption": "AES256"} if key is None else _key_params(key)
