"""Health checks for load balancers and operators, and Prometheus metrics."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any

from quart import Blueprint, Response, request

from ..metrics import CONTENT_TYPE
from ..runtime import runtime

log = logging.getLogger(__name__)

blueprint = Blueprint("status", __name__)

CHECK_TIMEOUT = 3.0


def is_shallow_status() -> bool:
    """The load balancer's health check, which must answer even without the proxy header."""
    return request.path == "/_status" and request.args.get("deep", "") in ("", "0", "false")


@blueprint.get("/_status")
async def status() -> tuple[str | dict[str, Any], int]:
    # The shallow check (what load balancers call) never depends on anything else.
    if is_shallow_status():
        return "ok", 200
    deps = runtime()
    checks = {
        "store": await _check("store", deps.store.ping()),
        "scan_queue": await _check("scan_queue", deps.queue.ping()),
        _engine_check(deps.settings.SCANNER): await _check("scanner", deps.engine.ping()),
    }
    healthy = all(state == "ok" for state in checks.values())
    return {"status": "ok" if healthy else "unavailable", "checks": checks}, (
        200 if healthy else 503
    )


@blueprint.get("/metrics")
async def metrics() -> Response:
    return Response(runtime().metrics.exposition(), content_type=CONTENT_TYPE)


def _engine_check(scanner: str) -> str:
    return "clamd" if scanner == "clamd" else "scan_files"


async def _check(name: str, probe: Awaitable[None]) -> str:
    try:
        await asyncio.wait_for(probe, CHECK_TIMEOUT)
    except Exception as error:
        log.warning("Deep health check: %s unavailable (%s)", name, type(error).__name__)
        return "unavailable"
    return "ok"
