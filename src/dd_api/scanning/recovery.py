"""The recovery sweeper: scans that a dead instance left unfinished are finished here.

Every upload leaves a pending copy, readable without the document key, until its
verdict is written. A copy older than the grace period whose lease has expired
belongs to no live scan; the sweeper claims it, scans it and deletes it. A copy
older than the retention bound is given up: its document is tagged ``error``.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from ..store import DocumentNotFound, DocumentStore, PendingCopy, StoreError
from .scanner import SCAN_FILE_PREFIX, ScanJob, Scanner, write_verdict
from .verdict import AV_STATUS_TAG, IN_PROGRESS

log = logging.getLogger(__name__)


class Sweeper:
    def __init__(
        self,
        store: DocumentStore,
        scanner: Scanner,
        schedule: Callable[[ScanJob], None],
        *,
        grace_seconds: float,
        max_age_seconds: float,
        lease_seconds: float,
    ) -> None:
        self._store = store
        self._scanner = scanner
        self._schedule = schedule
        self._grace = timedelta(seconds=grace_seconds)
        self._max_age = timedelta(seconds=max_age_seconds)
        self._lease = timedelta(seconds=lease_seconds)

    async def run(self, interval: float, stop: asyncio.Event) -> None:
        """Sweep now, then every ``interval`` seconds until ``stop`` is set."""
        while not stop.is_set():
            try:
                await self.sweep(stop)
            except StoreError as error:
                log.warning("Pending-scan sweep failed (%s), will retry", error)
            except Exception:
                log.exception("Pending-scan sweep failed, will retry")
            try:
                await asyncio.wait_for(stop.wait(), interval)
            except TimeoutError:
                pass

    async def sweep(self, stop: asyncio.Event | None = None) -> int:
        """One pass; returns how many scans it started."""
        started = 0
        now = datetime.now(UTC)
        for copy in await self._store.list_pending():
            if stop is not None and stop.is_set():
                break  # shutting down: leave the rest to the next instance
            if copy.location.document_id in self._scanner.active:
                continue  # this process is still on it
            age = now - (copy.created or now)
            if age < self._grace:
                continue
            if age > self._max_age:
                await self._give_up(copy)
            elif await self._recover(copy):
                started += 1
        return started

    async def _recover(self, copy: PendingCopy) -> bool:
        location = copy.location
        if not await self._store.claim(location, self._scanner.owner, self._lease_end()):
            return False
        try:
            tags = await self._store.get_tags(location)
        except DocumentNotFound:
            log.info("Pending copy of a deleted document removed", extra=location.log_extra)
            await self._store.delete_pending(location)
            return False
        if tags.get(AV_STATUS_TAG, IN_PROGRESS) != IN_PROGRESS:
            # the verdict was written but the copy was not deleted
            await self._store.delete_pending(location)
            return False
        log.warning("Recovering an unfinished scan", extra=location.log_extra)
        self._schedule(
            ScanJob(
                location=location,
                filename=copy.filename,
                mimetype=copy.mimetype,
                source=await self._download(copy),
                request_id=copy.request_id,
            )
        )
        return True

    async def _download(self, copy: PendingCopy) -> Path:
        handle = await asyncio.to_thread(
            tempfile.NamedTemporaryFile, prefix=SCAN_FILE_PREFIX, delete=False
        )
        path = Path(handle.name)
        try:
            with handle:
                await self._store.read_pending(copy.location, handle)
        except BaseException:
            await asyncio.to_thread(path.unlink, missing_ok=True)
            raise
        return path

    async def _give_up(self, copy: PendingCopy) -> None:
        location = copy.location
        log.error(
            "Scan never finished within the retention bound: document tagged error",
            extra=location.log_extra,
        )
        try:
            tags = await self._store.get_tags(location)
        except DocumentNotFound:
            tags = None
        if tags is not None and tags.get(AV_STATUS_TAG, IN_PROGRESS) == IN_PROGRESS:
            await write_verdict(self._store, location, "error")
        await self._store.delete_pending(location)

    def _lease_end(self) -> datetime:
        return datetime.now(UTC) + self._lease
