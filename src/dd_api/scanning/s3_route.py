"""Documents above scan-files' request cap, scanned through its S3 route.

scan-files runs behind a Lambda function URL whose request payload is capped at 6 MB, so a
larger document cannot be sent to ``/clamav``. Instead dd-api copies it (server-side) to a
short-lived **scan copy** under SSE-S3, which scan-files' role can read, asks
``POST /clamav/s3`` to scan it, and polls ``GET /clamav/{scan_id}``. The scan id is kept as a
tag on the copy: an instance that receives the document's message again (the first one died,
or gave up polling for now) polls that scan instead of starting another. The copy is removed
with the verdict; a lifecycle rule on its prefix removes what a crash leaves.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging

from ..queue import ScanMessage
from ..store import DocumentKeyMismatch, DocumentNotFound, Location, StoreError
from ..store.s3 import S3Store
from .attempts import ScanResult
from .client import ScanClient, ScanFailed
from .source import SourceError, StoreSource

log = logging.getLogger(__name__)

PREFIX = "scan-copies"
SCAN_ID_TAG = "scan-id"
FIRST_POLL_SECONDS = 0.5
MAX_POLL_SECONDS = 10.0


class S3Route:
    def __init__(
        self,
        client: ScanClient,
        store: S3Store,
        *,
        bucket: str,
        aws_account: str,
        sns_arn: str,
        max_bytes: int,
        poll_seconds: float,
    ) -> None:
        self._client = client
        self._store = store
        self._bucket = bucket
        self._aws_account = aws_account
        self._sns_arn = sns_arn
        self._max_bytes = max_bytes
        self._poll_seconds = poll_seconds  # how long one delivery polls before backing off

    def takes(self, size: int) -> bool:
        return size > self._max_bytes

    async def scan(self, message: ScanMessage, location: Location) -> ScanResult:
        """The verdict, or a failure saying whether a later delivery may succeed."""
        checksum = asyncio.create_task(self._checksum(message, location))
        try:
            scan_id = await self._scan_id(location) or await self._start(message, location)
            verdict = await self._poll(scan_id, message.trace_id)
            if verdict is None:
                return _failed("scan-files is still scanning", retryable=True)
            return ScanResult(verdict=verdict, checksum=await checksum, attempts=1)
        except ScanFailed as failure:
            return _failed(failure.reason, retryable=failure.retryable)
        except SourceError as error:
            return _failed(error.reason, retryable=error.retryable)
        except DocumentNotFound:
            return _failed("document deleted", retryable=False)
        except DocumentKeyMismatch:
            return _failed("key does not open the document", retryable=False)
        except StoreError as error:
            return _failed(f"store unavailable: {error}", retryable=True)
        finally:
            checksum.cancel()

    async def discard(self, location: Location) -> None:
        """Remove the scan copy once it is no longer needed (verdict written, or given up)."""
        try:
            await self._store.delete_object(self._bucket, _copy_key(location))
        except StoreError as error:  # the lifecycle rule on the prefix removes it later
            log.warning("Scan copy not removed (%s)", error, extra=location.log_extra)

    async def _scan_id(self, location: Location) -> str | None:
        try:
            tags = await self._store.object_tags(self._bucket, _copy_key(location))
        except DocumentNotFound:
            return None
        return tags.get(SCAN_ID_TAG) or None

    async def _start(self, message: ScanMessage, location: Location) -> str:
        object_key = _copy_key(location)
        await self._store.copy_for_scanner(location, message.key, self._bucket, object_key)
        scan_id = await self._client.start_s3_scan(
            f"s3://{self._bucket}/{object_key}",
            aws_account=self._aws_account,
            sns_arn=self._sns_arn,
            request_id=message.trace_id,
        )
        await self._store.tag_object(self._bucket, object_key, {SCAN_ID_TAG: scan_id})
        log.info("Scan started through scan-files' S3 route", extra=message.log_extra)
        return scan_id

    async def _poll(self, scan_id: str, request_id: str) -> str | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._poll_seconds
        wait = FIRST_POLL_SECONDS
        while True:
            verdict = await self._client.s3_scan_verdict(scan_id, request_id=request_id)
            if verdict is not None or loop.time() + wait > deadline:
                return verdict
            await asyncio.sleep(wait)
            wait = min(wait * 2, MAX_POLL_SECONDS)

    async def _checksum(self, message: ScanMessage, location: Location) -> str:
        """dd-api's own SHA-256 of the document, for ``av-checksum``, hashed off the loop."""
        digest = hashlib.sha256()
        source = StoreSource(self._store, location, message.key, message.size)
        async for chunk in source.chunks():
            await asyncio.to_thread(digest.update, chunk)
        return digest.hexdigest()


def _copy_key(location: Location) -> str:
    return f"{PREFIX}/{location.service_id}/{location.document_id}"


def _failed(reason: str, *, retryable: bool) -> ScanResult:
    return ScanResult(verdict=None, checksum="", attempts=1, reason=reason, retryable=retryable)
