"""The store interface shared by the S3 and local implementations."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import IO, Protocol
from uuid import UUID

log = logging.getLogger(__name__)

TEMPLATE_ATTACH = "template_attach"


class StoreError(Exception):
    """The store could not be reached or answered unexpectedly. Never shown to callers."""


class DocumentNotFound(StoreError):
    pass


class DocumentKeyMismatch(StoreError):
    """The key presented (or its absence) does not open the document."""


class DocumentDamaged(StoreError):
    """The stored bytes fail their integrity check: reading again will not help."""


@dataclass(frozen=True)
class Location:
    """Where a document lives: the object key now, and the key older uploads used."""

    service_id: UUID
    document_id: UUID
    sending_method: str | None

    @property
    def log_extra(self) -> dict[str, str]:
        return {"service_id": str(self.service_id), "document_id": str(self.document_id)}

    @property
    def needs_key(self) -> bool:
        # template attachments are encrypted by the store (SSE-S3), not by a customer key
        return self.sending_method != TEMPLATE_ATTACH

    @property
    def key(self) -> str:
        return f"{self._prefix}/{self.service_id}/{self.document_id}"

    @property
    def legacy_key(self) -> str | None:
        if self.sending_method == TEMPLATE_ATTACH:
            return None
        if self.sending_method == "attach":
            return f"tmp/{self.service_id}/{self.document_id}"
        return f"{self.service_id}/{self.document_id}"

    @property
    def keys(self) -> tuple[str, ...]:
        legacy = self.legacy_key
        return (self.key,) if legacy is None else (self.key, legacy)

    @property
    def _prefix(self) -> str:
        if self.sending_method == "attach":
            return "api_attachments"
        if self.sending_method == TEMPLATE_ATTACH:
            return "template_attachments"
        return "api_link"


class StoredDocument:
    """An open document, iterated in chunks; closing it releases the connection or file.

    Quart calls ``aclose`` when a response it started sending ends, however it ends
    (finished, client gone, cancelled). ``close`` releases at once without awaiting, for
    the callers that cannot await: a stalled download cut off from another task, or a
    failure being unwound.
    """

    def __init__(
        self, *, mimetype: str, size: int, chunks: AsyncIterator[bytes], release: Callable[[], None]
    ) -> None:
        self.mimetype = mimetype
        self.size = size
        self._chunks = chunks
        self._release = release
        self._released = False
        self._closed = False

    def __aiter__(self) -> StoredDocument:
        return self

    async def __anext__(self) -> bytes:
        try:
            return await anext(self._chunks)
        except BaseException:
            # The end, a failed read or a cancelled one (httpx's guard): nothing more will be
            # read, so the connection goes back now rather than whenever the caller closes.
            self.close()
            raise

    def close(self) -> None:
        if not self._released:
            self._released = True
            self._release()

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            aclose = getattr(self._chunks, "aclose", None)
            if aclose is not None:
                await aclose()
        finally:
            self.close()


async def with_fallback[T](location: Location, operation: Callable[[str], Awaitable[T]]) -> T:
    """Run ``operation`` on the document's key, then on its legacy key if it is not there."""
    try:
        return await operation(location.key)
    except DocumentNotFound:
        if location.legacy_key is None:
            raise
        log.info("Document not found at the new path, trying the old path")
        return await operation(location.legacy_key)


class DocumentStore(Protocol):
    async def open(self) -> None: ...

    async def close(self) -> None: ...

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
        """Store ``body`` (read from its current position) under ``location``."""

    async def get(self, location: Location, key: bytes | None) -> StoredDocument:
        """Open the document for streaming; the key is checked before this returns."""

    async def get_tags(self, location: Location) -> dict[str, str]:
        """The document's tags, readable without its key."""

    async def last_modified(self, location: Location) -> datetime:
        """When the document was written (timezone-aware), readable without its key."""

    async def put_tags(self, location: Location, tags: Mapping[str, str]) -> None:
        """Replace the whole tag set (as S3 PutObjectTagging does)."""

    async def delete(self, location: Location, key: bytes | None) -> None:
        """Delete the document after checking ``key`` opens it (when it needs one)."""

    async def ping(self) -> None:
        """Raise StoreError when the store cannot be used."""
