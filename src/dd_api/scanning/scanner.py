"""Scans after the upload: a fast path in the uploading process, the queue for everything else.

Every upload sends a scan message (see ``views/upload.py``). When a scan slot and the byte
budget allow it, the upload also keeps the bytes and scans them at once (the fast path), and
its message is delayed past the fast path's window: a delivered message then finds the
verdict written and is deleted unread. Otherwise the bytes are not kept, and the message,
sent without delay, is scanned by whichever instance receives it, reading the document back
from the store with the key the message carries (encrypted). The process never holds a
backlog: what waits, waits in the queue.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dd_compat.tracing import resolve_trace_ids, set_current_trace_ids

from ..queue import (
    MalformedMessage,
    MessageCodec,
    QueueError,
    Received,
    ScanMessage,
    ScanQueue,
    UndecryptableKey,
)
from ..store import DocumentNotFound, DocumentStore, Location, StoreError
from .attempts import ScanResult
from .capacity import ByteBudget, ScanSlots
from .client import SCANNER
from .engine import ScanEngine
from .s3_route import S3Route
from .source import BytesSource, FileSource, ScanSource, StoreSource
from .verdict import AV_STATUS_TAG, is_final, supersedes

log = logging.getLogger(__name__)

TAG_WRITE_ATTEMPTS = 5
FAST, QUEUE, S3_ROUTE = "fast", "queue", "s3"
# A message may arrive before its document is written (the two go out in parallel); after
# this long a missing document was deleted, or its upload failed.
MISSING_DOCUMENT_GRACE = 120.0
POLL_SECONDS = 20.0  # SQS's longest long poll


def location_of(message: ScanMessage) -> Location:
    return Location(message.service_id, message.document_id, message.sending_method)


@dataclass
class Held:
    """The bytes of one fast-path scan, and what they take from the budgets."""

    source: BytesSource | FileSource
    size: int
    budget: ByteBudget
    spool: Path | None = None
    released: bool = field(default=False, init=False)

    def release(self, slots: ScanSlots) -> None:
        if self.released:
            return
        self.released = True
        self.budget.give_back(self.size)
        slots.give_back()
        if self.spool is not None:
            self.spool.unlink(missing_ok=True)


class Scanner:
    def __init__(
        self,
        engine: ScanEngine,
        store: DocumentStore,
        queue: ScanQueue,
        codec: MessageCodec,
        *,
        concurrency: int,
        memory_bytes: int,
        disk_bytes: int,
        fast_window: float,
        attempt_timeout: float,
        visibility: float,
        retry_max: float,
        max_age: float,
        on_finished: Callable[[str, str, float], None] | None = None,
        s3_route: S3Route | None = None,
    ) -> None:
        self._s3_route = s3_route  # for documents above scan-files' request cap
        self._engine = engine
        self._store = store
        self._queue = queue
        self._codec = codec
        self.slots = ScanSlots(concurrency)
        self.memory = ByteBudget(memory_bytes)
        self.disk = ByteBudget(disk_bytes)
        self._fast_window = fast_window
        self._attempt_timeout = attempt_timeout
        self._visibility = visibility
        self._retry_max = retry_max
        self._max_age = max_age
        self._on_finished = on_finished  # told each written verdict, its path and seconds
        self.scanning = 0  # scans talking to the scanner now

    # -- the fast path -------------------------------------------------------------------

    def hold(self, size: int, data: Path | Callable[[], bytes]) -> Held | None:
        """Keep the bytes for a scan now, if a slot is free and the budget allows; else None
        and the caller keeps nothing (a spool file stays the request's to remove).

        ``data`` is the spool file, or a reader of the bytes, called only once they are to
        be kept: an upload left to the queue copies nothing."""
        budget = self.disk if isinstance(data, Path) else self.memory
        if self._s3_route is not None and self._s3_route.takes(size):
            return None  # polled under its queue message, which must exist first
        if not self.slots.try_take():
            return None
        if not budget.try_take(size):
            self.slots.give_back()
            return None
        if isinstance(data, Path):
            return Held(FileSource(data, size), size, budget, spool=data)
        return Held(BytesSource(data()), size, budget)

    def release(self, held: Held) -> None:
        held.release(self.slots)

    async def scan_held(self, message: ScanMessage, held: Held) -> None:
        """The fast path. Without a verdict inside the window, nothing is written: the
        message, delayed past the window, brings the document to the queue path."""
        started = time.monotonic()
        try:
            async with asyncio.timeout(self._fast_window):
                result = await self._scan(message, held.source, deadline=self._fast_window * 0.8)
                if result.verdict is None and result.retryable:
                    self._left_to_queue(message, result.reason)
                    return
                await self._record(message, result, FAST, started)
        except TimeoutError:
            self._left_to_queue(message, "fast-path window ended")
        except asyncio.CancelledError:
            self._left_to_queue(message, "shutting down")
            raise
        except Exception:
            log.exception("Fast-path scan failed: left to the queue", extra=message.log_extra)
        finally:
            self.release(held)

    def _left_to_queue(self, message: ScanMessage, reason: str | None) -> None:
        log.info(
            "Fast-path scan without a verdict (%s): the queue will scan it",
            reason,
            extra=message.log_extra,
        )

    # -- the queue path ------------------------------------------------------------------

    async def consume(
        self,
        stop: asyncio.Event,
        spawn: Callable[[Callable[[Received], Awaitable[None]], Received], None],
    ) -> None:
        """Receive messages while a slot is free, until ``stop`` is set; ``spawn(handle,
        message)`` runs each (``app.add_background_task``, so shutdown waits for them)."""
        while not stop.is_set():
            await _until(self.slots.wait_free(), stop)
            if stop.is_set():
                return
            try:
                received = await _until(
                    self._queue.receive(
                        max_messages=self.slots.free, wait=POLL_SECONDS, visibility=self._visibility
                    ),
                    stop,
                )
            except QueueError as error:
                log.warning("Receiving scan messages failed (%s), retrying", error)
                await _until(asyncio.sleep(min(5.0, self._retry_max)), stop)
                continue
            for message in received or []:
                if self.slots.try_take():
                    spawn(self.handle, message)
                else:  # a fast-path scan took the slot meanwhile: let another take it
                    await self._retry_later(message, 0)

    async def handle(self, received: Received) -> None:
        """Scan one message, holding the slot taken for it."""
        try:
            await self._handle(received)
        except asyncio.CancelledError:
            log.warning("Queued scan cut off by shutdown: its message will come back")
            raise
        except Exception:
            log.exception("Queued scan failed: its message will come back")
        finally:
            self.slots.give_back()

    async def _handle(self, received: Received) -> None:
        try:
            message = self._codec.decode(received.body)
        except MalformedMessage as error:
            # redelivered until the queue's redrive policy moves it to the dead-letter queue
            log.error("Unusable scan message (%s), receive %d", error, received.receive_count)
            return
        except UndecryptableKey as error:
            log.error("No queue key opens this scan message", extra=error.message.log_extra)
            await self._record_error(error.message, "queue key does not open the message")
            await self._queue.delete(received.receipt)
            return
        # the upload's trace id: this scan's log lines join the upload's
        set_current_trace_ids(resolve_trace_ids(message.trace_id, None))
        if not await self._needs_scan(received, message):
            return
        started = time.monotonic()
        location = location_of(message)
        route = self._s3_route if self._s3_route and self._s3_route.takes(message.size) else None
        async with self._kept_invisible(received):
            if route is not None:
                result = await self._counted(route.scan(message, location))
            else:
                source = StoreSource(self._store, location, message.key, message.size)
                # one attempt: a failure comes back as the same message, after a backoff
                result = await self._scan(
                    message, source, deadline=self._attempt_timeout, retry=False
                )
        if result.verdict is None and result.retryable and not self._too_old(message):
            await self._retry_later(received, self._backoff(received.receive_count))
            log.info(
                "Queued scan failed (%s): retried later",
                result.reason,
                extra={**message.log_extra, "scan_receive_count": received.receive_count},
            )
            return
        await self._record(message, result, S3_ROUTE if route else QUEUE, started)
        await self._queue.delete(received.receipt)
        if route is not None:
            await route.discard(location)

    async def _needs_scan(self, received: Received, message: ScanMessage) -> bool:
        """False, having dealt with the message, when there is nothing to scan (yet)."""
        try:
            tags = await self._store.get_tags(location_of(message))
        except DocumentNotFound:
            if time.time() - message.created < MISSING_DOCUMENT_GRACE:
                await self._retry_later(received, self._backoff(received.receive_count))
            else:
                log.info("Scan message of a deleted document dropped", extra=message.log_extra)
                await self._queue.delete(received.receipt)
            return False
        except StoreError as error:
            log.warning("Scan tags unreadable (%s): retried later", error, extra=message.log_extra)
            await self._retry_later(received, self._backoff(received.receive_count))
            return False
        if is_final(tags.get(AV_STATUS_TAG)):
            await self._queue.delete(received.receipt)  # scanned by the fast path, or twice sent
            return False
        return True

    @asynccontextmanager
    async def _kept_invisible(self, received: Received) -> AsyncIterator[None]:
        """While the scan runs, no other instance may receive its message."""

        async def extend() -> None:
            while True:
                await asyncio.sleep(self._visibility / 3)
                try:
                    await self._queue.set_visibility(received.receipt, self._visibility)
                except QueueError as error:
                    log.warning("Scan message visibility not extended (%s)", error)

        task = asyncio.create_task(extend())
        try:
            yield
        finally:
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task

    async def _retry_later(self, received: Received, seconds: float) -> None:
        try:
            await self._queue.set_visibility(received.receipt, seconds)
        except QueueError as error:  # it comes back when its visibility runs out anyway
            log.warning("Scan message not put back (%s)", error)

    def _backoff(self, receive_count: int) -> float:
        """Jittered exponential, capped: scans resume within ``retry_max`` of a recovery."""
        ceiling = min(self._retry_max, 2.0 ** min(receive_count, 16))
        return random.uniform(ceiling / 2, ceiling)

    def _too_old(self, message: ScanMessage) -> bool:
        return time.time() - message.created > self._max_age

    # -- both paths ----------------------------------------------------------------------

    async def _scan(
        self, message: ScanMessage, source: ScanSource, *, deadline: float, retry: bool = True
    ) -> ScanResult:
        return await self._counted(
            self._engine.scan(
                source,
                filename=message.filename,
                mimetype=message.mimetype,
                request_id=message.trace_id,
                deadline=deadline,
                retry=retry,
            )
        )

    async def _counted(self, scan: Awaitable[ScanResult]) -> ScanResult:
        self.scanning += 1
        try:
            return await scan
        finally:
            self.scanning -= 1

    async def _record(
        self, message: ScanMessage, result: ScanResult, path: str, started: float
    ) -> None:
        verdict = result.verdict or "error"
        await write_verdict(
            self._store,
            location_of(message),
            verdict,
            result.checksum,
            scanner=self._engine.scanner_name,
        )
        seconds = time.monotonic() - started
        if self._on_finished is not None:
            self._on_finished(verdict, path, seconds)
        log.log(
            logging.INFO if result.verdict else logging.WARNING,
            "Scan finished",
            extra={
                **message.log_extra,
                "scan_path": path,
                "scan_verdict": verdict,
                "scan_reason": None if result.verdict else result.reason,
                "scan_attempts": result.attempts,
                "scan_seconds": round(seconds, 3),
                "scan_age_seconds": round(time.time() - message.created, 3),
            },
        )

    async def _record_error(self, message: ScanMessage, reason: str) -> None:
        result = ScanResult(verdict=None, checksum="", attempts=0, reason=reason)
        await self._record(message, result, QUEUE, time.monotonic())


async def _until[T](work: Coroutine[Any, Any, T], stop: asyncio.Event) -> T | None:
    """``work``'s result, or None (``work`` cancelled) once ``stop`` is set."""
    task = asyncio.ensure_future(work)
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        task.cancel()  # cancelled ourselves: the work goes with us
        raise
    finally:
        stopping.cancel()
    if task.done():
        return task.result()
    task.cancel()
    with suppress(asyncio.CancelledError):
        await task
    return None


async def write_verdict(
    store: DocumentStore,
    location: Location,
    verdict: str,
    checksum: str = "",
    *,
    scanner: str = SCANNER,
) -> None:
    """Write the verdict tags, retrying: a scan's result must not be lost.

    Tags that dd-api did not write (GuardDuty's, an operator's) are kept, and a verdict
    that says less than the one already there (``error`` over ``malicious``) is not written.
    """
    ours = {
        AV_STATUS_TAG: verdict,
        "av-scanner": scanner,
        "av-timestamp": str(int(time.time() * 1000)),
    }
    if checksum:
        ours["av-checksum"] = checksum
    for attempt in range(1, TAG_WRITE_ATTEMPTS + 1):
        try:
            current = await store.get_tags(location)
            if not supersedes(verdict, current.get(AV_STATUS_TAG)):
                log.warning(
                    "Verdict %s not written over %s",
                    verdict,
                    current.get(AV_STATUS_TAG),
                    extra=location.log_extra,
                )
                return
            await store.put_tags(location, {**current, **ours})
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
