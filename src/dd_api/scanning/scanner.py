"""Background scans: bounded concurrency, the verdict written as tags, nothing lost quietly.

Each upload schedules one ``Scanner.run`` with ``app.add_background_task``. Scans
beyond ``SCAN_CONCURRENCY`` wait for a slot; the upload never waits for any of it.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import BinaryIO
from uuid import UUID

from ..store import DocumentNotFound, DocumentStore, Location, StoreError
from .client import SCANNER, ScanClient, ScanResult

log = logging.getLogger(__name__)

TAG_WRITE_ATTEMPTS = 5
SCAN_FILE_PREFIX = "dd-scan-"  # temp files holding documents waiting for their scan


@dataclass
class ScanJob:
    location: Location
    filename: str
    mimetype: str
    source: bytes | Path  # the job's own: the request closes its files before the scan runs
    request_id: str

    @property
    def log_extra(self) -> dict[str, str]:
        return self.location.log_extra

    def discard(self) -> None:
        if isinstance(self.source, Path):
            self.source.unlink(missing_ok=True)


async def copy_for_scan(stream: BinaryIO, size: int, memory_limit: int) -> bytes | Path:
    """Small documents stay in memory; larger ones go to a temp file the scan owns, so a
    backlog of queued scans never holds whole documents in memory."""
    stream.seek(0)
    if size <= memory_limit:
        return stream.read()
    try:
        return await asyncio.to_thread(_spool, stream)
    except OSError as error:  # a full or broken temp disk: refuse the upload, do not 500
        raise StoreError(f"scan copy could not be written: {error.strerror}") from None


def _spool(stream: BinaryIO) -> Path:
    with tempfile.NamedTemporaryFile(prefix=SCAN_FILE_PREFIX, delete=False) as out:
        shutil.copyfileobj(stream, out, 1024 * 1024)
    return Path(out.name)


class Scanner:
    """Runs scans, at most ``concurrency`` at once, each under a lease.

    The lease is what lets several instances share one bucket: a scan starts only
    after its claim on the document's pending copy succeeded, and the copy is
    deleted only once the verdict is written.
    """

    def __init__(
        self,
        client: ScanClient,
        store: DocumentStore,
        *,
        concurrency: int,
        owner: str,
        lease_seconds: float,
        on_finished: Callable[[str, float], None] | None = None,
    ) -> None:
        self._client = client
        self._store = store
        self._slots = asyncio.Semaphore(concurrency)
        self.owner = owner
        self._lease = timedelta(seconds=lease_seconds)
        self._on_finished = on_finished  # told each written verdict and its seconds
        self.waiting = 0
        self.in_flight = 0
        self.active: set[UUID] = set()  # documents queued or scanning in this process

    async def run(self, job: ScanJob) -> None:
        started = time.monotonic()
        document_id = job.location.document_id
        self.active.add(document_id)
        try:
            result = await self._scan_when_a_slot_is_free(job)
            if result is None:
                return
            await self._record(job, result)
        except asyncio.CancelledError:
            # Shutdown ran out of time: the document keeps av-status=in_progress and its
            # pending copy, which a sweeper scans once this instance's lease expires.
            log.error("Scan not finished before shutdown: left in_progress", extra=job.log_extra)
            raise
        except Exception:
            log.exception("Scan could not be recorded: left in_progress", extra=job.log_extra)
        else:
            seconds = time.monotonic() - started
            if self._on_finished is not None:
                self._on_finished(result.verdict, seconds)
            log.info(
                "Scan finished",
                extra={
                    **job.log_extra,
                    "scan_verdict": result.verdict,
                    "scan_reason": result.reason,
                    "scan_seconds": round(seconds, 3),
                    "scan_queue_depth": self.waiting,
                },
            )
            await self._drop_pending_copy(job)
        finally:
            self.active.discard(document_id)
            job.discard()

    async def _scan_when_a_slot_is_free(self, job: ScanJob) -> ScanResult | None:
        self.waiting += 1
        log.info("Scan queued", extra={**job.log_extra, "scan_queue_depth": self.waiting})
        try:
            await self._slots.acquire()
        finally:
            self.waiting -= 1
        try:
            if not await self._claim(job):
                log.info("Another instance is scanning this document", extra=job.log_extra)
                return None
            self.in_flight += 1
            try:
                return await self._client.scan(
                    job.source,
                    filename=job.filename,
                    mimetype=job.mimetype,
                    request_id=job.request_id,
                )
            finally:
                self.in_flight -= 1
        finally:
            self._slots.release()

    async def _claim(self, job: ScanJob) -> bool:
        until = datetime.now(UTC) + self._lease
        try:
            return await self._store.claim(job.location, self.owner, until)
        except StoreError as error:
            # Scanning twice is harmless; not scanning would leave the document unscanned.
            log.warning("Scan lease unavailable (%s), scanning anyway", error, extra=job.log_extra)
            return True

    async def _drop_pending_copy(self, job: ScanJob) -> None:
        try:
            await self._store.delete_pending(job.location)
        except StoreError as error:
            # the sweeper finds the verdict written and only deletes the copy
            log.warning("Pending copy not deleted (%s)", error, extra=job.log_extra)

    async def _record(self, job: ScanJob, result: ScanResult) -> None:
        await write_verdict(self._store, job.location, result.verdict, result.checksum)


async def write_verdict(
    store: DocumentStore, location: Location, verdict: str, checksum: str = ""
) -> None:
    """Write the verdict tags in one set, retrying: a scan's result must not be lost."""
    tags = {
        "av-status": verdict,
        "av-scanner": SCANNER,
        "av-timestamp": str(int(time.time() * 1000)),
    }
    if checksum:
        tags["av-checksum"] = checksum
    for attempt in range(1, TAG_WRITE_ATTEMPTS + 1):
        try:
            await store.put_tags(location, tags)
            return
        except DocumentNotFound:
            log.info("Document deleted before its scan finished", extra=location.log_extra)
            return
        except StoreError as error:
            if attempt == TAG_WRITE_ATTEMPTS:
                raise
            log.warning(
                "Writing the verdict failed (%s), retrying", error, extra=location.log_extra
            )
            await asyncio.sleep(min(2**attempt * 0.2, 5.0))
