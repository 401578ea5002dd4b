"""``POST /services/<id>/documents``: store the file, answer at once."""

from __future__ import annotations

import logging
import secrets
from typing import Any
from uuid import UUID, uuid4

from dd_compat import current_trace_id
from quart import Blueprint, current_app, request

from .. import mime
from ..auth import require_bearer
from ..errors import ApiError
from ..runtime import runtime
from ..scanning.scanner import ScanJob, copy_for_scan
from ..scanning.verdict import AV_STATUS_TAG, IN_PROGRESS
from ..store import Location
from ..urls import direct_file_url, short_url
from .store_errors import store_errors

log = logging.getLogger(__name__)

blueprint = Blueprint("upload", __name__)

# written with the document, so no reader ever sees it untagged
IN_PROGRESS_TAGS = {AV_STATUS_TAG: IN_PROGRESS}


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
    # The scan's copy is taken first: a document is stored only if its scan can run.
    job = ScanJob(
        location=location,
        filename=filename or document.filename or "document",
        mimetype=mimetype,
        source=await copy_for_scan(stream, size, settings.SCAN_MEMORY_THRESHOLD_BYTES),
        request_id=current_trace_id(),
    )
    stream.seek(0)
    try:
        with store_errors(location, "Upload"):
            await runtime().store.put(
                location, stream, size=size, mimetype=mimetype, key=key, tags=IN_PROGRESS_TAGS
            )
    except BaseException:
        job.discard()
        raise
    current_app.add_background_task(runtime().scanner.run, job)

    log.info(
        "Document uploaded",
        extra={
            "service_id": str(service_id),
            "document_id": str(document_id),
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
