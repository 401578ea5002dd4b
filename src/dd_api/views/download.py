"""Downloads: ``/services/<id>/documents/<id>`` and the short public ``/d/<b64>/<b64>`` link."""

from __future__ import annotations

import logging
import unicodedata
from urllib.parse import quote
from uuid import UUID

from quart import Blueprint, Response, request
from werkzeug.exceptions import NotFound

from ..errors import ApiError
from ..runtime import runtime
from ..store import DocumentKeyMismatch, DocumentNotFound, Location, StoreError
from .params import INVALID_KEY, document_key

log = logging.getLogger(__name__)

blueprint = Blueprint("documents", __name__)

NOT_FOUND = "Document not found"


@blueprint.get("/services/<uuid:service_id>/documents/<uuid:document_id>")
async def download_document(service_id: UUID, document_id: UUID) -> Response:
    location = Location(service_id, document_id, request.args.get("sending_method", "link"))
    key = document_key(location, request.args.get("key"))
    return await _serve(location, key)


@blueprint.get("/d/<base64_uuid:service_id>/<base64_uuid:document_id>")
async def download_short_link(service_id: UUID, document_id: UUID) -> Response:
    # The public link: every failure is the same 404 as an unknown URL, so it tells a
    # stranger nothing (not even whether the ids exist).
    location = Location(service_id, document_id, request.args.get("sending_method", "link"))
    try:
        key = document_key(location, request.args.get("key"))
        return await _serve(location, key)
    except ApiError as error:
        if error.status >= 500:
            raise
        raise NotFound() from None


async def _serve(location: Location, key: bytes | None) -> Response:
    extra = {"service_id": str(location.service_id), "document_id": str(location.document_id)}
    try:
        document = await runtime().store.get(location, key)
    except DocumentNotFound:
        raise ApiError(404, NOT_FOUND) from None
    except DocumentKeyMismatch:
        log.info("Download refused: the key does not open the document", extra=extra)
        raise ApiError(400, INVALID_KEY) from None
    except StoreError as error:
        log.error("Download failed: %s", error, extra=extra)
        raise ApiError(503, "Document storage is unavailable, try again later") from None

    if request.method == "HEAD":
        # headers only: release the S3 connection (or file) without reading the body
        await document.aclose()
        response = Response(b"", mimetype=document.mimetype)
    else:
        response = Response(document, mimetype=document.mimetype)
    # Large files on slow links must not be cut off by Quart's RESPONSE_TIMEOUT.
    response.timeout = None
    response.headers["Content-Length"] = str(document.size)
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Robots-Tag"] = "noindex, nofollow"
    filename = request.args.get("filename")
    if filename:
        response.headers.set("Content-Disposition", "attachment", **_download_names(filename))
    return response


def _download_names(filename: str) -> dict[str, str]:
    """Werkzeug's ``send_file`` naming, minus anything that could break the header."""
    name = "".join(ch if unicodedata.category(ch)[0] != "C" else "_" for ch in filename)
    try:
        name.encode("ascii")
    except UnicodeEncodeError:
        simple = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii")
        return {"filename": simple, "filename*": f"UTF-8''{quote(name, safe='!#$&+^`|~')}"}
    return {"filename": name}
