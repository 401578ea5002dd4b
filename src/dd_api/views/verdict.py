"""``POST .../documents/<id>/scan-verdict``: what notification-api asks before sending."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from quart import Blueprint, request

from ..auth import require_bearer
from ..runtime import runtime
from ..scanning.verdict import Verdict, classify, scan_status
from ..store import Location
from .limits import small_body
from .store_errors import store_errors

blueprint = Blueprint("verdict", __name__)


@blueprint.post("/services/<uuid:service_id>/documents/<uuid:document_id>/scan-verdict")
@require_bearer
@small_body
async def scan_verdict(service_id: UUID, document_id: UUID) -> tuple[dict[str, Any], int]:
    # As the original: the sending method comes from the form body only.
    form = await request.form
    location = Location(service_id, document_id, form.get("sending_method", "link"))
    with store_errors(location, "Reading scan tags"):
        tags = await runtime().store.get_tags(location)
    verdict = classify(tags)
    if verdict is Verdict.CLEAN:
        return {"scan_verdict": scan_status(tags)}, 200
    if verdict is Verdict.MALICIOUS:
        return {"error": "Malicious content detected"}, 423
    if verdict is Verdict.UNSUPPORTED:
        return {"scan_verdict": "scan_unsupported"}, 422
    if verdict is Verdict.FAILED:
        return {"scan_verdict": "scan_failed"}, 422
    if await _age(location) > timedelta(seconds=runtime().settings.SCAN_TIMEOUT_SECONDS):
        # notification-api sends anyway after this: the scan had its chance
        return {"scan_verdict": "scan_timed_out"}, 408
    return {"error": "Content scanning is in progress"}, 428


async def _age(location: Location) -> timedelta:
    with store_errors(location, "Reading the document age"):
        modified = await runtime().store.last_modified(location)
    # a clock ahead of ours must not make a new document look old
    return max(datetime.now(UTC) - modified, timedelta(0))
