"""``DELETE /services/<id>/documents/<id>``."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any
from uuid import UUID

from quart import Blueprint, request

from ..auth import require_bearer
from ..errors import ApiError
from ..runtime import runtime
from ..store import Location
from .limits import small_body
from .params import document_key
from .store_errors import store_errors

log = logging.getLogger(__name__)

blueprint = Blueprint("delete", __name__)

MISSING_KEY = (
    "Missing decryption key. Key is required for all sending methods except 'template_attach'."
)


@blueprint.delete("/services/<uuid:service_id>/documents/<uuid:document_id>")
@require_bearer
@small_body
async def delete_document(service_id: UUID, document_id: UUID) -> tuple[dict[str, Any], int]:
    params = await _params()
    location = Location(service_id, document_id, _text(params, "sending_method") or "link")
    key = document_key(location, _text(params, "key"), missing=MISSING_KEY)
    store = runtime().store
    with store_errors(location, "Delete"):
        await store.delete(location, key)
    log.info(
        "Document deleted",
        extra={**location.log_extra, "sending_method": location.sending_method},
    )
    return {"message": "Document deleted", "status": "ok"}, 200


async def _params() -> Mapping[str, Any]:
    # As the original: a JSON body when the request is JSON, the query string otherwise.
    if not request.is_json:
        return request.args
    try:
        body = json.loads(await request.get_data())
    except (ValueError, RecursionError):  # not UTF-8, not JSON, or nested past any reason
        body = None
    if not isinstance(body, dict):
        raise ApiError(400, "Request body must be a JSON object")
    return body


def _text(params: Mapping[str, Any], name: str) -> str | None:
    value = params.get(name)
    if value is not None and not isinstance(value, str):
        raise ApiError(400, f"{name} must be a string")
    return value
