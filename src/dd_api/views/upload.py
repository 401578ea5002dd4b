"""``POST /services/<id>/documents``: store the file, answer at once."""

from __future__ import annotations

import asyncio
import io
import logging
import secrets
from pathlib import Path
from typing import Any, BinaryIO, cast
from uuid import UUID, uuid4

from dd_compat import current_trace_id
from quart import Blueprint, current_app, request

from .. import mime
from ..auth import require_bearer
from ..errors import ApiError
from ..runtime import runtime
from ..scanning.scanner import ScanJob, copy_for_scan
from ..scanning.verdict import AV_STATUS_TAG, IN_PROGRESS
from ..spooling import SpoolingRequest
from ..store import Location, PendingCopy, StoreError
from ..urls import direct_file_url, short_url
from .store_errors import store_errors

log = logging.getLogger(__name__)

blueprint = Blueprint("upload", __name__)

# written with the document, so no reader ever sees it untagged
IN_PROGRESS_TAGS = {AV_STATUS_TAG: IN_PROGRESS}
MAX_FILENAME = 255


@blueprint.post("/services/<uuid:service_id>/documents")
@require_bearer
async def upload_document(service_id: UUID) -> tuple[dict[str, Any], int]:
    if request.content_length is None:
        # Quart enforces MAX_CONTENT_LENGTH only against a declared length.
        raise ApiError(411, "Content-Length header is required")
    files = await request.files
    form = await request.form
    document = files.get("document")
    if document is None:
        raise ApiError(400, "No document upload")

    settings = runtime().settings
    filename = form.get("filename")
    sending_method = form.get("sending_method")
    # longer names would make links that no server accepts (notification-api allows 255)
    if filename is not None and len(filename) > MAX_FILENAME:
        raise ApiError(400, f"Filename must be at most {MAX_FILENAME} characters")
    stream = document.stream
    mimetype = mime.detect(stream)
    if not mime.is_allowed(
        mimetype, service_id, settings.ALLOWED_MIME_TYPES, settings.EXTRA_MIME_TYPES
    ):
        allowed = list(settings.ALLOWED_MIME_TYPES)
        raise ApiError(
            400, f"Unsupported document type '{mimetype}'. Supported types are: {allowed}"
        )
    mimetype = mime.fix_csv(mimetype, filename)
    size = stream.seek(0, 2)
    stream.seek(0)

    document_id = uuid4()
    location = Location(service_id, document_id, sending_method)
    key = secrets.token_bytes(32) if location.needs_key else None
    # The scan's source is secured first: a document is stored only if its scan can run.
    # A large upload's spool file becomes the scan's own; anything else is copied.
    source: bytes | Path | None = cast(SpoolingRequest, request).take_spool(stream)
    if source is None:
        with store_errors(location, "Upload"):
            source = await copy_for_scan(stream, size, settings.SCAN_MEMORY_THRESHOLD_BYTES)
    job = ScanJob(
        location=location,
        filename=filename or document.filename or "document",
        mimetype=mimetype,
        source=source,
        request_id=current_trace_id(),
    )
    stream.seek(0)
    try:
        with store_errors(location, "Upload"):
            await _store_with_pending_copy(location, stream, size, mimetype, key, job)
    except BaseException:
        job.discard()
        raise
    current_app.add_background_task(runtime().scanner.run, job)
    runtime().metrics.upload_bytes.inc(size)

    log.info(
        "Document uploaded",
        extra={
            **location.log_extra,
            "mime_type": mimetype,
            "file_size": size,
            "sending_method": sending_method,
        },
    )
    body = {
        "id": str(document_id),
        "direct_file_url": direct_file_url(
            service_id, document_id, key, sending_method, settings.SERVER_NAME
        ),
        "url": short_url(
            service_id,
            document_id,
            key,
            filename,
            sending_method,
            scheme=settings.HTTP_SCHEME,
            hostname=settings.BACKEND_HOSTNAME,
        ),
        "filename": filename,
        "sending_method": sending_method,
        "mime_type": mimetype,
        "file_size": size,
        "file_extension": mime.file_extension(filename),
    }
    return {"status": "ok", "document": body}, 201


async def _store_with_pending_copy(
    location: Location, stream: BinaryIO, size: int, mimetype: str, key: bytes | None, job: ScanJob
) -> None:
    """Write the document and its pending-scan copy side by side: both, or neither.

    The copy is what lets another instance finish the scan if this one dies before
    the verdict is written; a document stored without it could never be rescanned.
    """
    store = runtime().store
    pending = PendingCopy(location, job.filename, mimetype, job.request_id)
    try:
        results = await asyncio.gather(
            store.put(
                location, stream, size=size, mimetype=mimetype, key=key, tags=IN_PROGRESS_TAGS
            ),
            _put_pending(pending, job.source, size),
            return_exceptions=True,
        )
    except asyncio.CancelledError:
        # the client went away mid-upload: leave nothing behind
        await asyncio.shield(_remove_both(location, key))
        raise
    failures = [result for result in results if isinstance(result, BaseException)]
    if failures:
        await _remove_both(location, key)
        raise failures[0]


async def _put_pending(pending: PendingCopy, source: bytes | Path, size: int) -> None:
    store = runtime().store
    if isinstance(source, bytes):
        await store.put_pending(pending, io.BytesIO(source), size=size)
        return
    handle = await asyncio.to_thread(source.open, "rb")
    try:
        await store.put_pending(pending, handle, size=size)
    finally:
        handle.close()


async def _remove_both(location: Location, key: bytes | None) -> None:
    store = runtime().store
    for remove in (lambda: store.delete(location, key), lambda: store.delete_pending(location)):
        try:
            await remove()
        except StoreError:
            pass  # not written, or the store is down: nothing was promised to anyone
