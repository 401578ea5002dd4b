"""``POST /services/<id>/documents``: store the file, answer at once."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from typing import IO, Any, cast
from uuid import UUID, uuid4

from dd_compat import current_trace_id
from quart import Blueprint, current_app, request
from quart.datastructures import FileStorage
from werkzeug.datastructures import MultiDict

from .. import mime
from ..auth import require_bearer
from ..errors import ApiError
from ..queue import ScanMessage
from ..runtime import runtime
from ..scanning.scanner import Held
from ..scanning.verdict import AV_STATUS_TAG, IN_PROGRESS
from ..spooling import SpoolingRequest
from ..store import DocumentNotFound, Location, StoreError
from ..urls import direct_file_url, short_url
from .store_errors import UNAVAILABLE, store_errors

log = logging.getLogger(__name__)

blueprint = Blueprint("upload", __name__)

# written with the document, so no reader ever sees it untagged
IN_PROGRESS_TAGS = {AV_STATUS_TAG: IN_PROGRESS}
MAX_FILENAME = 255
# notification-api sends "link", "attach" or "template_attach"; free text, but short
MAX_SENDING_METHOD = 64
NO_DOCUMENT = "No document upload"


@blueprint.post("/services/<uuid:service_id>/documents")
@require_bearer
async def upload_document(service_id: UUID) -> tuple[dict[str, Any], int]:
    if request.content_length is None:
        # Quart enforces MAX_CONTENT_LENGTH only against a declared length.
        raise ApiError(411, "Content-Length header is required")
    if request.mimetype != "multipart/form-data":
        # refused before parsing: a urlencoded body of millions of fields parses for seconds
        raise ApiError(400, NO_DOCUMENT)
    files, form = await _parse_form()
    document = files.get("document")
    if document is None:
        raise ApiError(400, NO_DOCUMENT)

    settings = runtime().settings
    filename = form.get("filename")
    sending_method = form.get("sending_method")
    # longer names would make links that no server accepts (notification-api allows 255)
    for name in (filename, document.filename):
        if name is not None and len(name) > MAX_FILENAME:
            raise ApiError(400, f"Filename must be at most {MAX_FILENAME} characters")
    if sending_method is not None and len(sending_method) > MAX_SENDING_METHOD:
        raise ApiError(400, f"sending_method must be at most {MAX_SENDING_METHOD} characters")
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
    message = ScanMessage(
        service_id=service_id,
        document_id=document_id,
        sending_method=sending_method,
        filename=filename or document.filename or "document",
        mimetype=mimetype,
        size=size,
        trace_id=current_trace_id(),
        created=time.time(),
        key=key,
    )
    held = _hold_for_scan(stream, size)
    try:
        with store_errors(location, "Upload"):
            await _store_and_send(location, stream, key, message, fast=held is not None)
    except BaseException:
        if held is not None:
            runtime().scanner.release(held)
        raise
    if held is not None:
        cast(SpoolingRequest, request).disown_spool()
        current_app.add_background_task(runtime().scanner.scan_held, message, held)
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


async def _parse_form() -> tuple[MultiDict[str, FileStorage], MultiDict[str, str]]:
    try:
        files: MultiDict[str, FileStorage] = await request.files
        form: MultiDict[str, str] = await request.form
        return files, form
    except OSError as error:  # TMPDIR full or failing while the body was spooled
        log.error("Upload could not be spooled: %s", error.strerror)
        raise ApiError(503, UNAVAILABLE) from None


def _hold_for_scan(stream: IO[bytes], size: int) -> Held | None:
    """The bytes kept for a scan now, when a slot is free and the budget allows; else the
    scan is left to the queue and nothing is kept."""
    deps = runtime()
    spool = cast(SpoolingRequest, request).spooled(stream)
    if spool is None and size > deps.settings.SCAN_MEMORY_THRESHOLD_BYTES:
        return None
    if spool is not None:
        return deps.scanner.hold(size, spool)

    def read() -> bytes:
        stream.seek(0)
        return stream.read()

    return deps.scanner.hold(size, read)


async def _store_and_send(
    location: Location, stream: IO[bytes], key: bytes | None, message: ScanMessage, *, fast: bool
) -> None:
    """Store the document and send its scan message side by side: both, or neither.

    A fast-path scan's message is delayed past the scan's window, so the queue sees it only
    if that scan ended without a verdict (or its process died).
    """
    deps = runtime()
    delay = deps.settings.SCAN_QUEUE_DELAY_SECONDS if fast else 0.0
    stream.seek(0)
    store = deps.store
    try:
        stored, sent = await asyncio.gather(
            store.put(
                location,
                stream,
                size=message.size,
                mimetype=message.mimetype,
                key=key,
                tags=IN_PROGRESS_TAGS,
            ),
            deps.queue.send(deps.codec.encode(message), delay=delay),
            return_exceptions=True,
        )
    except asyncio.CancelledError:
        # the client went away mid-upload: leave no document behind
        await asyncio.shield(_remove(location, key))
        raise
    if isinstance(sent, BaseException):
        # A stored document whose message is lost would never be scanned.
        log.error("Scan message not sent (%s)", sent, extra=location.log_extra)
        if not isinstance(stored, BaseException):
            await _remove(location, key)
        raise StoreError("scan queue unavailable")
    if isinstance(stored, BaseException):
        # The message was sent and cannot be taken back: the consumer drops it once it
        # finds no document (after a grace period, as the put may still be under way).
        raise stored


async def _remove(location: Location, key: bytes | None) -> None:
    try:
        await runtime().store.delete(location, key)
    except DocumentNotFound:
        pass  # never written
    except StoreError as error:
        # nothing was promised to anyone, but an operator may have to remove it by hand
        log.error("Half-written upload not rolled back (%s)", error, extra=location.log_extra)
