"""Log lines: the original's JSON fields, request ids everywhere, no keys, one handler."""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Callable
from typing import Any
from uuid import UUID

import dd_compat
import flask
import pytest
from dd_compat.logging import CompatHandler, redact
from quart import Quart, current_app, jsonify

TRACE = "463ac35c9f6413ad48485a3953bb6124"
SERVICE_ID = UUID("00000000-0000-0000-0000-0000000000aa")
KEY = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8"
CORE_KEYS = {
    "time",
    "application",
    "name",
    "levelname",
    "requestId",
    "message",
    "logType",
    "pathname",
    "lineno",
}


def compat_handlers(name: str = "dd_api") -> list[logging.Handler]:
    return [h for h in logging.getLogger(name).handlers if isinstance(h, CompatHandler)]


async def test_json_line_fields(mode: str, make_app: Callable[..., Quart], logs: Any) -> None:
    app = make_app(NOTIFY_APP_NAME="document-download-api")

    @app.get("/")
    async def index() -> object:
        current_app.logger.info(
            "Document %s fetched", "d1", extra={"service_id": SERVICE_ID, "has_key": True}
        )
        return "ok"

    await app.test_client().get("/", headers={"X-B3-TraceId": TRACE})
    line = logs.find("Document d1 fetched")
    assert set(line) == CORE_KEYS | {"service_id", "has_key"}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", line["time"])
    assert line["application"] == "document-download-api"
    assert line["name"] == "dd_api"
    assert line["levelname"] == "INFO"
    assert line["requestId"] == TRACE
    assert line["logType"] == "application"
    assert line["pathname"] == __file__
    assert isinstance(line["lineno"], int)
    assert line["service_id"] == str(SERVICE_ID)
    assert line["has_key"] is True


async def test_request_id_in_every_context(
    mode: str, make_app: Callable[..., Quart], logs: Any
) -> None:
    app = make_app()

    def flask_bound() -> None:
        flask.current_app.logger.info("from bridged helper")

    async def task() -> None:
        logging.getLogger("dd_api.scanning").info("from background task")
        await dd_compat.call_flask_bound(flask_bound)

    @app.get("/")
    async def index() -> object:
        logging.getLogger("dd_api.views.download").warning("from module logger")
        await dd_compat.call_flask_bound(flask_bound)
        current_app.add_background_task(task)
        return "ok"

    response = await app.test_client().get("/")
    import asyncio

    await asyncio.gather(*app.background_tasks)
    trace_id = response.headers["X-B3-TraceId"]
    messages = [(r["message"], r["name"], r["requestId"]) for r in logs.records()]
    assert messages == [
        ("from module logger", "dd_api.views.download", trace_id),
        ("from bridged helper", "dd_api", trace_id),
        ("from background task", "dd_api.scanning", trace_id),
        ("from bridged helper", "dd_api", trace_id),
    ]
    app.logger.info("outside")
    assert logs.find("outside")["requestId"] == "no-request-id"


async def test_keys_never_logged(mode: str, make_app: Callable[..., Quart], logs: Any) -> None:
    app = make_app()

    def flask_bound() -> None:
        # notifications_utils 50.1+ appended request.full_path (with ?key=) to every line
        flask.current_app.logger.warning("bridged: %s", flask.request.args.get("sending_method"))

    @app.get("/d/<a>/<b>")
    async def download(a: str, b: str) -> object:
        await dd_compat.call_flask_bound(flask_bound)
        current_app.logger.info(
            "GET %s", f"/d/{a}/{b}?key={KEY}&filename=x.pdf", extra={"query_params": {"key": KEY}}
        )
        current_app.logger.info("auth header was Bearer secret-token-123")
        return "ok"

    response = await app.test_client().get(f"/d/a/b?key={KEY}&sending_method=link")
    assert response.status_code == 200
    output = logs.text()
    assert KEY not in output
    assert "secret-token-123" not in output
    assert "bridged: link" in output
    assert "key=***" in output


def test_redact() -> None:
    assert redact(f"/x?key={KEY}&a=1") == "/x?key=***&a=1"
    assert redact(f"{{'key': '{KEY}'}}") == "{'key': '***'}"
    assert redact('{"api_key=abc"}') == '{"api_key=***"}'
    assert redact("Authorization: Bearer abc.def") == "Authorization: Bearer ***"
    notify_key = "a" * 51 + "." + "b" * 27
    assert redact(f"key {notify_key}") == "key ***"
    assert redact("monkey business") == "monkey business"


async def test_debug_lines_are_readable(
    mode: str, make_app: Callable[..., Quart], logs: Any
) -> None:
    app = make_app(DEBUG=True)
    app.logger.info("age {'seconds': 30} %s", "done", extra={"document_id": "d1"})
    app.logger.info("/d/a/b?key=%s&filename=a.pdf", KEY)
    [line, keyed] = [ln for ln in logs.lines() if "Logging configured" not in ln]
    assert not line.startswith("{")
    assert "dd_api INFO no-request-id \"age {'seconds': 30} done\"" in line
    assert line.endswith('{"document_id": "d1"}')
    assert KEY not in keyed


async def test_log_level(mode: str, make_app: Callable[..., Quart], logs: Any) -> None:
    app = make_app(NOTIFY_LOG_LEVEL="warning")
    app.logger.info("hidden")
    app.logger.warning("shown")
    assert [r["message"] for r in logs.records()] == ["shown"]


async def test_writes_to_stdout_by_default(
    mode: str, make_app: Callable[..., Quart], capsys: pytest.CaptureFixture[str]
) -> None:
    app = make_app()
    handler = dd_compat.get_state(app).log_handler
    assert handler is not None
    handler.setStream(None)
    app.logger.info("to stdout")
    dd_compat.flush_logs()
    captured = capsys.readouterr()
    assert json.loads(captured.out.splitlines()[-1])["message"] == "to stdout"
    assert "to stdout" not in captured.err


async def test_one_handler_per_logger(mode: str, make_app: Callable[..., Quart], logs: Any) -> None:
    logger = logging.getLogger("dd_api")
    root_before = list(logging.getLogger().handlers)
    utils_before = list(logging.getLogger("utils").handlers)
    first = make_app()
    _ = first.logger  # Quart adds its default handler only if none is there
    second = make_app(NOTIFY_APP_NAME="second")
    assert logger.handlers == [dd_compat.get_state(second).log_handler]
    assert logging.getLogger().handlers == root_before
    assert logging.getLogger("utils").handlers == utils_before
    second.logger.info("once")
    assert [r["application"] for r in logs.records() if r["message"] == "once"] == ["second"]


async def test_notifications_utils_startup_output_discarded(
    nu_only: str, make_app: Callable[..., Quart], capsys: pytest.CaptureFixture[str]
) -> None:
    make_app()
    out = capsys.readouterr().out
    assert "This is the log level" not in out
    # only dd_compat's own "Logging configured" line, in dd_compat's format
    [line] = [json.loads(ln) for ln in out.splitlines() if "Logging configured" in ln]
    assert line["compat_mode"] == "notifications_utils"
    assert line["requestId"] == "no-request-id"


async def test_notifications_utils_logging_missing(
    nu_only: str,
    make_app: Callable[..., Quart],
    logs: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The real notifications_utils.logging needs python-json-logger: cope without it."""
    monkeypatch.setitem(sys.modules, "notifications_utils.logging", None)  # import -> ImportError
    app = make_app()
    state = dd_compat.get_state(app)
    assert state.mode == "notifications_utils"
    assert state.nu_logging is None and state.nu_logging_error

    @app.get("/")
    async def index() -> object:
        current_app.logger.info("still logged")
        return jsonify(ok=True)

    response = await app.test_client().get("/", headers={"X-B3-TraceId": TRACE})
    assert response.headers["X-B3-TraceId"] == TRACE
    assert logs.find("still logged")["requestId"] == TRACE


async def test_awkward_extra_fields(mode: str, make_app: Callable[..., Quart], logs: Any) -> None:
    app = make_app()
    cyclic: list[object] = []
    cyclic.append(cyclic)
    app.logger.info("odd", extra={"by_uuid": {SERVICE_ID: 1}, "cyclic": cyclic, "n": 2})
    line = logs.find("odd")
    assert line["by_uuid"] == str({SERVICE_ID: 1})
    assert line["n"] == 2
