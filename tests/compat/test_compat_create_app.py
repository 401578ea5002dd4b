"""Smoke test: the real app factory wires dd_compat in.

dd-api always calls ``dd_compat.init_app`` from ``create_app``: a factory that fails, or that
leaves dd_compat out, fails here (never a skip).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from dd_compat.logging import remove_compat_handlers
from dd_compat.state import EXTENSION_KEY, CompatState
from quart import Quart

from dd_api.app import create_app
from dd_api.views.status import is_shallow_status

TRACE = "463ac35c9f6413ad48485a3953bb6124"
PROXY_SECRET = "proxy-secret"


def build(tmp_path: Path, **env: str) -> Quart:
    return create_app(
        {"NOTIFY_ENVIRONMENT": "test", "LOCAL_STORE_PATH": str(tmp_path / "docs"), **env}
    )


@pytest.fixture
def apps() -> Iterator[list[Quart]]:
    """The apps a test builds, their dd_compat log handlers removed after it."""
    built: list[Quart] = []
    yield built
    for app in built:
        remove_compat_handlers(logging.getLogger(app.name))


@pytest.fixture
def app(tmp_path: Path, apps: list[Quart]) -> Quart:
    apps.append(build(tmp_path))
    return apps[-1]


def test_create_app_calls_init_app(app: Quart) -> None:
    state = app.extensions[EXTENSION_KEY]
    assert isinstance(state, CompatState)
    # the load balancer's health check is spared the proxy-header check
    assert state.proxy_check_exempt is is_shallow_status


@pytest.mark.parametrize(("path", "status"), [("/_status", 200), ("/no-such-path", 404)])
async def test_create_app_responses_carry_trace_headers(app: Quart, path: str, status: int) -> None:
    client = app.test_client()
    response = await client.get(path, headers={"X-B3-TraceId": TRACE})
    assert response.status_code == status
    assert response.headers["X-B3-TraceId"] == TRACE
    assert re.fullmatch(r"[0-9a-f]{16}", response.headers["X-B3-SpanId"])
    generated = await client.get(path)
    assert re.fullmatch(r"[0-9a-f]{32}", generated.headers["X-B3-TraceId"])


async def test_create_app_checks_the_proxy_header(tmp_path: Path, apps: list[Quart]) -> None:
    app = build(tmp_path, CHECK_PROXY_HEADER="true", ROUTE_SECRET_KEY_1=PROXY_SECRET)
    apps.append(app)
    client = app.test_client()
    assert (await client.get("/openapi.json")).status_code == 403
    proxied = {"X-Custom-Forwarder": PROXY_SECRET}
    assert (await client.get("/openapi.json", headers=proxied)).status_code == 200
    assert (await client.get("/_status")).status_code == 200  # the shallow check is spared
