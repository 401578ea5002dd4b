"""Where a scan reads the document from: bytes or a spool file the fast path owns, or the store.

Each source gives a fresh pass over its bytes per call of ``chunks`` (a retry re-reads), and
turns its own failures into ``SourceError`` so the client can tell them from scan-files'.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Protocol

from ..store import (
    DocumentDamaged,
    DocumentKeyMismatch,
    DocumentNotFound,
    DocumentStore,
    Location,
    StoreError,
)

CHUNK = 256 * 1024


class SourceError(Exception):
    """The document could not be read; ``retryable`` when the cause may pass (store down)."""

    def __init__(self, reason: str, *, retryable: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable


class ScanSource(Protocol):
    size: int

    def chunks(self) -> AsyncGenerator[bytes]:
        """The document's bytes, from the start."""
        ...


class BytesSource:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.size = len(data)

    async def chunks(self) -> AsyncGenerator[bytes]:
        view = memoryview(self.data)
        for start in range(0, self.size, CHUNK):
            yield bytes(view[start : start + CHUNK])


class FileSource:
    def __init__(self, path: Path, size: int) -> None:
        self.path = path
        self.size = size

    async def chunks(self) -> AsyncGenerator[bytes]:
        try:
            handle = await asyncio.to_thread(self.path.open, "rb")
        except OSError as error:
            raise SourceError(f"spool file unreadable: {error.strerror}", retryable=False) from None
        try:
            while chunk := await asyncio.to_thread(handle.read, CHUNK):
                yield chunk
        except OSError as error:
            raise SourceError(f"spool file unreadable: {error.strerror}", retryable=False) from None
        finally:
            handle.close()


class StoreSource:
    """The stored document, streamed from the store with its key: no copy is kept."""

    def __init__(
        self, store: DocumentStore, location: Location, key: bytes | None, size: int
    ) -> None:
        self._store = store
        self._location = location
        self._key = key
        self.size = size

    async def chunks(self) -> AsyncGenerator[bytes]:
        try:
            document = await self._store.get(self._location, self._key)
        except DocumentNotFound:
            raise SourceError("document deleted", retryable=False) from None
        except DocumentKeyMismatch:
            raise SourceError("key does not open the document", retryable=False) from None
        except DocumentDamaged:
            raise SourceError("stored document is damaged", retryable=False) from None
        except StoreError as error:
            raise SourceError(f"store unavailable: {error}", retryable=True) from None
        try:
            async for chunk in document:
                yield chunk
        except DocumentDamaged:
            raise SourceError("stored document is damaged", retryable=False) from None
        except StoreError as error:
            raise SourceError(f"store read failed: {error}", retryable=True) from None
        finally:
            await document.aclose()
