"""Health check for load balancers."""

from __future__ import annotations

from quart import Blueprint

blueprint = Blueprint("status", __name__)


@blueprint.get("/_status")
async def status() -> tuple[str, int]:
    return "ok", 200
