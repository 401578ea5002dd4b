"""``POST /services/<id>/documents``: store the file, answer at once."""

from __future__ import annotations

import logging
import secrets
from typing import Any
from uuid import UUID, uuid4

from quart import Blueprint, request

from .. import mime
from ..auth import require_bearer
from ..errors import ApiError
from ..runtime import runtime
from ..store import Location, StoreError
from ..urls import direct_file_url, short_url

log = logging.getLogger(__name__)

blueprint = Blueprint("upload", __name__)

IN_PROGRESS_TAGS = {"av-status": "in_progress"}


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
    try:
        await runtime().store.put(
            location, stream, size=size, mimetype=mimetype, key=key, tags=IN_PROGRESS_TAGS
        )
    except StoreError as error:
        log.error(
            "Document could not be stored: %s",
            error,
            extra={"service_id": str(service_id), "document_id": str(document_id)},
        )
        raise ApiError(503, "Document storage is unavailable, try again later") from None

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
