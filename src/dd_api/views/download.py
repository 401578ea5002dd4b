"""Downloads: ``/services/<id>/documents/<id>`` and the short public ``/d/<b64>/<b64>`` link."""

from __future__ import annotations

import asyncio
import logging
import unicodedata
from urllib.parse import quote
from uuid import UUID

from quart import Blueprint, Response, request
from werkzeug.exceptions import NotFound

from ..errors import ApiError
from ..runtime import runtime
from ..scanning.verdict import Verdict, classify
from ..store import DocumentStore, Location, StoredDocument
from .params import document_key
from .store_errors import store_errors

log = logging.getLogger(__name__)

blueprint = Blueprint("documents", __name__)


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
    store = runtime().store
    with store_errors(location, "Download"):
        # Both requests at once: the verdict check must not add a round trip to every download.
        tags, document = await _tags_and_document(store, location, key)
    try:
        _check_verdict(location, classify(tags))
    except ApiError:
        await document.aclose()
        raise

    if request.method == "HEAD":
        # headers only: release the S3 connection (or file) without reading the body
        await document.aclose()
        response = Response(b"", mimetype=document.mimetype)
    else:
        response = Response(document, mimetype=document.mimetype)
        runtime().metrics.download_bytes.inc(document.size)
    # Large files on slow links must not be cut off by Quart's RESPONSE_TIMEOUT.
    response.timeout = None
    response.headers["Content-Length"] = str(document.size)
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Robots-Tag"] = "noindex, nofollow"
    filename = request.args.get("filename")
    if filename:
        response.headers.set("Content-Disposition", "attachment", **_download_names(filename))
    return response


async def _tags_and_document(
    store: DocumentStore, location: Location, key: bytes | None
) -> tuple[dict[str, str], StoredDocument]:
    tags, document = await asyncio.gather(
        store.get_tags(location), store.get(location, key), return_exceptions=True
    )
    if isinstance(document, BaseException):
        raise document
    if isinstance(tags, BaseException):
        await document.aclose()
        raise tags
    return tags, document


def _check_verdict(location: Location, verdict: Verdict) -> None:
    extra = {**location.log_extra, "scan_verdict": verdict.value}
    if verdict is Verdict.MALICIOUS:
        log.warning("Download blocked: malicious content", extra=extra)
        raise ApiError(423, "Document download blocked")
    # The rest is served: after a timeout or a failed scan the email may already be out.
    if verdict is Verdict.IN_PROGRESS:
        log.info("Document served before its scan finished", extra=extra)
    elif verdict is Verdict.FAILED:
        log.error("Document served although its scan failed", extra=extra)
    elif verdict is Verdict.UNSUPPORTED:
        log.warning("Document served although the scanner does not support it", extra=extra)


def _download_names(filename: str) -> dict[str, str]:
    """Werkzeug's ``send_file`` naming, minus anything that could break the header."""
    name = "".join(ch if unicodedata.category(ch)[0] != "C" else "_" for ch in filename)
    try:
        name.encode("ascii")
    except UnicodeEncodeError:
        simple = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii")
        return {"filename": simple, "filename*": f"UTF-8''{quote(name, safe='!#$&+^`|~')}"}
    return {"filename": name}
