"""Local scan queue: SQS's semantics in one SQLite file, for a single machine.

Several processes (Hypercorn workers) may share the file. A receive claims its messages in
one BEGIN IMMEDIATE transaction, which SQLite runs one at a time across processes, so two
receivers never hold the same message at once; WAL mode lets the cheap "anything visible?"
check and depth() read while a claim writes. Every SQLite call runs in a thread, and calls on
one connection are serialized by a lock held in that thread: a cancelled caller cannot let
the next call start while its statement still runs.

A message received ``max_receives`` times and then not deleted is moved to a dead-letter
table instead of being delivered again (as SQS does with a redrive policy), so a message
that makes the consumer fail cannot loop forever.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

from ..keyfile import load_or_create_key
from .base import (
    MAX_BODY_BYTES,
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

# how often a long poll looks at the file for messages other processes sent, or whose
# delay or visibility ran out; messages sent by this process wake it at once
POLL_INTERVAL = 0.2
# how long a call waits for another process's transaction before giving up
BUSY_TIMEOUT = 5.0
_SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    body TEXT NOT NULL,
    sent_at REAL NOT NULL,
    visible_at REAL NOT NULL,
    receive_count INTEGER NOT NULL DEFAULT 0,
    receipt TEXT UNIQUE
);
CREATE INDEX IF NOT EXISTS messages_by_visible_at ON messages (visible_at);
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY,
    body TEXT NOT NULL,
    sent_at REAL NOT NULL,
    receive_count INTEGER NOT NULL,
    dead_at REAL NOT NULL
);
"""


class LocalQueue:
    def __init__(
        self, path: Path, *, max_receives: int = 10, poll_interval: float = POLL_INTERVAL
    ) -> None:
        if max_receives < 1:
            raise ValueError("max_receives must be at least 1")
        self.path = Path(path)
        self.max_receives = max_receives
        self._poll_interval = poll_interval
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        # replaced on every send: long polls waiting on the old one wake and look again
        self._sent = asyncio.Event()

    async def open(self) -> None:
        await self._run(self._connect)

    async def close(self) -> None:
        await self._run(self._disconnect)

    async def send(self, body: str, *, delay: float = 0.0) -> None:
        if len(body.encode()) > MAX_BODY_BYTES:  # as SQS refuses it: fail here, not in production
            raise QueueError(f"local queue send failed: body over {MAX_BODY_BYTES} bytes")
        await self._run(self._insert, body, clamp_delay(delay))
        self._wake()

    async def receive(self, *, max_messages: int, wait: float, visibility: float) -> list[Received]:
        max_messages = clamp_max_messages(max_messages)
        visibility = clamp_visibility(visibility)
        deadline = time.monotonic() + clamp_wait(wait)
        while True:
            sent = self._sent  # taken before looking, so a send during the look is not missed
            messages = await self._run(self._claim, max_messages, visibility)
            remaining = deadline - time.monotonic()
            if messages or remaining <= 0:
                return messages
            try:
                async with asyncio.timeout(min(self._poll_interval, remaining)):
                    await sent.wait()
            except TimeoutError:
                pass

    async def delete(self, receipt: str) -> None:
        await self._run(self._execute, "DELETE FROM messages WHERE receipt = ?", (receipt,))

    async def set_visibility(self, receipt: str, seconds: float) -> None:
        changed = await self._run(
            self._execute,
            "UPDATE messages SET visible_at = ? WHERE receipt = ?",
            (time.time() + clamp_visibility(seconds), receipt),
        )
        if not changed:
            raise ReceiptInvalid("local queue set_visibility failed: receipt not current")
        if seconds <= 0:
            self._wake()

    async def depth(self) -> QueueDepth:
        visible, in_flight, delayed = await self._run(self._count)
        return QueueDepth(visible=visible, in_flight=in_flight, delayed=delayed)

    async def ping(self) -> None:
        await self._run(self._execute, "SELECT 1", ())

    def _wake(self) -> None:
        self._sent.set()
        self._sent = asyncio.Event()

    async def _run[**P, T](self, func: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await asyncio.to_thread(func, *args, **kwargs)
        except sqlite3.Error as error:
            code = getattr(error, "sqlite_errorname", None) or type(error).__name__
            raise QueueError(f"local queue failed: {code}") from None
        except OSError as error:
            raise QueueError(f"local queue I/O failed: {type(error).__name__}") from None

    # The methods below run in a worker thread.

    def _connect(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Bodies name documents and carry wrapped keys: the file is this user's only
        # (SQLite gives the -wal and -shm files the database file's permissions).
        os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
        # isolation_level=None: transactions are opened explicitly, with BEGIN IMMEDIATE
        db = sqlite3.connect(
            self.path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False
        )
        try:
            db.execute("PRAGMA journal_mode=WAL")
            # a commit reaches the disk before send() returns: an upload's scan is not lost
            # to a power cut (WAL's default NORMAL only survives a process crash)
            db.execute("PRAGMA synchronous=FULL")
            db.executescript(_SCHEMA)
            db.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")
        except BaseException:
            db.close()
            raise
        with self._lock:
            previous, self._db = self._db, db
            if previous is not None:  # opened twice: keep one connection
                previous.close()

    def _disconnect(self) -> None:
        with self._lock:
            db, self._db = self._db, None
            if db is not None:
                db.close()

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            raise QueueError("local queue failed: not open")
        return self._db

    def _execute(self, sql: str, params: tuple[object, ...]) -> int:
        with self._lock:
            return self._connection().execute(sql, params).rowcount

    def _insert(self, body: str, delay: float) -> None:
        now = time.time()
        with self._lock:
            self._connection().execute(
                "INSERT INTO messages (body, sent_at, visible_at) VALUES (?, ?, ?)",
                (body, now, now + delay),
            )

    def _claim(self, max_messages: int, visibility: float) -> list[Received]:
        with self._lock:
            db = self._connection()
            # Most polls find nothing: find that out without taking the write lock.
            found = db.execute(
                "SELECT 1 FROM messages WHERE visible_at <= ? LIMIT 1", (time.time(),)
            ).fetchone()
            if found is None:
                return []
            db.execute("BEGIN IMMEDIATE")
            try:
                now = time.time()  # after waiting for the lock
                dead = db.execute(
                    "DELETE FROM messages WHERE visible_at <= ? AND receive_count >= ?"
                    " RETURNING id, body, sent_at, receive_count",
                    (now, self.max_receives),
                ).fetchall()
                db.executemany(
                    "INSERT INTO dead_letters (id, body, sent_at, receive_count, dead_at)"
                    " VALUES (?, ?, ?, ?, ?)",
                    [(*row, now) for row in dead],
                )
                # randomblob() runs per row: every message gets its own new receipt, which
                # also makes any receipt handed out before unusable
                rows = db.execute(
                    "UPDATE messages SET receive_count = receive_count + 1, visible_at = ?,"
                    " receipt = lower(hex(randomblob(16)))"
                    " WHERE id IN (SELECT id FROM messages WHERE visible_at <= ?"
                    " ORDER BY visible_at, id LIMIT ?)"
                    " RETURNING id, body, receipt, receive_count, sent_at",
                    (now + visibility, now, max_messages),
                ).fetchall()
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        for message_id, _body, sent_at, receive_count in dead:
            # never the body: it names the document and carries its wrapped key
            log.error(
                "Scan message moved to the dead-letter table after %d receives",
                receive_count,
                extra={"queue_message_id": message_id, "queue_message_sent_at": sent_at},
            )
        rows.sort()  # RETURNING follows no ORDER BY: in the order they were sent
        return [
            Received(body=body, receipt=receipt, receive_count=count, sent_at=sent_at)
            for _id, body, receipt, count, sent_at in rows
        ]

    def _count(self) -> tuple[int, int, int]:
        with self._lock:
            row = (
                self._connection()
                .execute(
                    "SELECT COALESCE(SUM(visible_at <= :now), 0),"
                    " COALESCE(SUM(visible_at > :now AND receive_count > 0), 0),"
                    " COALESCE(SUM(visible_at > :now AND receive_count = 0), 0)"
                    " FROM messages",
                    {"now": time.time()},
                )
                .fetchone()
            )
        return row[0], row[1], row[2]


LOCAL_QUEUE_FILE = "scan-queue.sqlite3"


def local_queue_key(root: Path) -> bytes:
    """The embedded queue's message key, kept beside it: one machine needs no SCAN_QUEUE_KEY."""
    return load_or_create_key(root / ".scan-queue-key")
