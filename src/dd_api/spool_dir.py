"""This process's directory for spooled uploads, and the removal of those a dead process left.

Each process spools into its own directory under ``TMPDIR/dd-api-spool``, holding an
exclusive ``flock`` on a lock file inside it for as long as it lives. The kernel drops the
lock when the process dies, however it dies (kill -9 included), so at start-up a directory
whose lock can be taken belongs to no live process and is removed, while directories of
other live instances sharing the same TMPDIR are left alone.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)

LOCK = ".lock"
# A directory is created a moment before its lock: one without a lock is only left alone
# while it is this young.
UNLOCKED_GRACE_SECONDS = 60.0


class SpoolDirectory:
    def __init__(self, parent: Path | None = None) -> None:
        self.parent = parent or Path(tempfile.gettempdir()) / "dd-api-spool"
        self.path: Path | None = None
        self._lock: IO[bytes] | None = None

    def open(self) -> None:
        self.parent.mkdir(parents=True, exist_ok=True)
        self._remove_abandoned()
        self.path = Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=self.parent))
        self._lock = (self.path / LOCK).open("wb")
        fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)

    def close(self) -> None:
        if self.path is not None:
            shutil.rmtree(self.path, ignore_errors=True)
            self.path = None
        if self._lock is not None:
            self._lock.close()  # releases the flock
            self._lock = None

    def _remove_abandoned(self) -> None:
        removed = 0
        for directory in self.parent.iterdir():
            if directory.is_dir() and _abandoned(directory):
                removed += sum(1 for path in directory.iterdir() if path.name != LOCK)
                shutil.rmtree(directory, ignore_errors=True)
        if removed:
            log.warning("Removed %d spool files left by a process that died", removed)


def _abandoned(directory: Path) -> bool:
    try:
        lock = (directory / LOCK).open("rb")
    except FileNotFoundError:
        try:
            return time.time() - directory.stat().st_mtime > UNLOCKED_GRACE_SECONDS
        except FileNotFoundError:
            return False
    with lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # a live process holds it
        return True
