"""Smoke test: the real app factory wires dd_compat in."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from dd_compat.logging import remove_compat_handlers
from quart import Quart

TRACE = "463ac35c9f6413ad48485a3953bb6124"


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Quart]:
    try:
        from dd_api.app import create_app
    except ImportError as error:
        pytest.skip(f"dd_api.app.create_app is not importable yet: {error}")
    app = create_app({"NOTIFY_ENVIRONMENT": "test", "LOCAL_STORE_PATH": str(tmp_path / "docs")})
    try:
        if "dd_compat" not in app.extensions:
            pytest.skip("create_app() does not call dd_compat.init_app(app) yet")
        yield app
    finally:
        remove_compat_handlers(logging.getLogger(app.name))


@pytest.mark.parametrize(("path", "status"), [("/_status", 200), ("/no-such-path", 404)])
async def test_create_app_responses_carry_trace_headers(app: Quart, path: str, status: int) -> None:
    client = app.test_client()
    response = await client.get(path, headers={"X-B3-TraceId": TRACE})
    assert response.status_code == status
    assert response.headers["X-B3-TraceId"] == TRACE
    assert re.fullmatch(r"[0-9a-f]{16}", response.headers["X-B3-SpanId"])
    generated = await client.get(path)
    assert re.fullmatch(r"[0-9a-f]{32}", generated.headers["X-B3-TraceId"])
