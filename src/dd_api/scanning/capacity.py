"""What one process lends to scans: scan slots, and bytes held for fast-path scans."""

from __future__ import annotations

import asyncio


class ScanSlots:
    """``size`` scans at once, shared by the fast path and the queue consumer.

    Nothing queues for a slot: a caller takes one now or does without (the fast path sends
    its message at once; the consumer does not receive), so no backlog builds in the process.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self.busy = 0
        self._freed = asyncio.Event()

    @property
    def free(self) -> int:
        return self.size - self.busy

    def try_take(self) -> bool:
        if self.busy >= self.size:
            return False
        self.busy += 1
        return True

    def give_back(self) -> None:
        self.busy -= 1
        self._freed.set()

    async def wait_free(self) -> None:
        while self.busy >= self.size:
            self._freed.clear()
            await self._freed.wait()


class ByteBudget:
    """A cap on bytes kept for scans that have not run yet (in memory, or in spool files)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0

    def try_take(self, size: int) -> bool:
        if self.held + size > self.limit:
            return False
        self.held += size
        return True

    def give_back(self, size: int) -> None:
        self.held -= size
