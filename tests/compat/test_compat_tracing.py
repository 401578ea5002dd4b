"""Trace ids: header in -> current_trace_id / log line -> response headers -> outgoing call."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import dd_compat
import flask
import httpx
import pytest
from quart import Quart, abort, current_app, jsonify, request

HEX32 = re.compile(r"^[0-9a-f]{32}$")
HEX16 = re.compile(r"^[0-9a-f]{16}$")
TRACE = "463ac35c9f6413ad48485a3953bb6124"
SPAN = "a2fb4a1d1a96d312"
PARENT = "0020000000000001"


def add_routes(app: Quart) -> None:
    @app.get("/ids")
    async def ids() -> object:
        return jsonify(
            trace_id=dd_compat.current_trace_id(), ids=str(dd_compat.current_trace_ids())
        )

    @app.get("/boom")
    async def boom() -> object:
        raise RuntimeError("boom")

    @app.get("/teapot")
    async def teapot() -> object:
        abort(418)

    @app.get("/handled")
    async def handled() -> object:
        abort(409)

    @app.errorhandler(409)
    async def conflict(_error: Exception) -> object:
        return jsonify(error="conflict"), 409

    @app.get("/flask-ids")
    async def flask_ids() -> object:
        def read() -> dict[str, object]:
            req = flask.request
            return {
                "trace_id": req.trace_id,  # type: ignore[attr-defined]
                "request_id": req.request_id,  # type: ignore[attr-defined]
                "span_id": req.span_id,  # type: ignore[attr-defined]
                "parent_span_id": req.parent_span_id,  # type: ignore[attr-defined]
            }

        return jsonify(await dd_compat.call_flask_bound(read))


@pytest.fixture
def app(make_app: Callable[..., Quart]) -> Quart:
    app = make_app()
    add_routes(app)
    return app


async def test_ids_echoed(mode: str, app: Quart) -> None:
    headers = {"X-B3-TraceId": TRACE, "X-B3-SpanId": SPAN, "X-B3-ParentSpanId": PARENT}
    response = await app.test_client().get("/ids", headers=headers)
    assert response.status_code == 200
    assert (await response.get_json())["trace_id"] == TRACE
    assert response.headers["X-B3-TraceId"] == TRACE
    assert response.headers["X-B3-SpanId"] == SPAN
    assert "X-B3-ParentSpanId" not in response.headers


@pytest.mark.parametrize("headers", [{}, {"X-B3-TraceId": "", "X-B3-SpanId": ""}])
async def test_ids_generated_when_absent(mode: str, app: Quart, headers: dict[str, str]) -> None:
    response = await app.test_client().get("/ids", headers=headers)
    trace_id = response.headers["X-B3-TraceId"]
    assert HEX32.match(trace_id)
    assert HEX16.match(response.headers["X-B3-SpanId"])
    assert (await response.get_json())["trace_id"] == trace_id
    other = await app.test_client().get("/ids")
    assert other.headers["X-B3-TraceId"] != trace_id


@pytest.mark.parametrize("bad", ["x" * 129, "tab\there"])
async def test_unusable_trace_id_replaced(mode: str, app: Quart, bad: str) -> None:
    response = await app.test_client().get("/ids", headers={"X-B3-TraceId": bad})
    assert HEX32.match(response.headers["X-B3-TraceId"])


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/boom", 500),
        ("GET", "/teapot", 418),
        ("GET", "/handled", 409),  # response made by an error handler
        ("GET", "/no-such-path", 404),
        ("POST", "/ids", 405),
        ("OPTIONS", "/ids", 200),
    ],
)
async def test_headers_on_every_response(
    mode: str, app: Quart, method: str, path: str, status: int
) -> None:
    response = await app.test_client().open(path, method=method, headers={"X-B3-TraceId": TRACE})
    assert response.status_code == status
    assert response.headers["X-B3-TraceId"] == TRACE
    assert HEX16.match(response.headers["X-B3-SpanId"])


async def test_configurable_header_names(mode: str, make_app: Callable[..., Quart]) -> None:
    app = make_app(NOTIFY_TRACE_ID_HEADER="X-Request-Id", NOTIFY_SPAN_ID_HEADER="X-Span")
    add_routes(app)
    response = await app.test_client().get(
        "/flask-ids", headers={"X-Request-Id": TRACE, "X-B3-TraceId": "ignored", "X-Span": SPAN}
    )
    assert response.headers["X-Request-Id"] == TRACE
    assert response.headers["X-Span"] == SPAN
    assert "X-B3-TraceId" not in response.headers
    assert (await response.get_json())["trace_id"] == TRACE


async def test_flask_request_sees_effective_ids(mode: str, app: Quart) -> None:
    """NotifyRequest (or the built-in equivalent) reports the ids dd_compat assigned."""
    sent = await app.test_client().get(
        "/flask-ids",
        headers={"X-B3-TraceId": TRACE, "X-B3-SpanId": SPAN, "X-B3-ParentSpanId": PARENT},
    )
    assert await sent.get_json() == {
        "trace_id": TRACE,
        "request_id": TRACE,
        "span_id": SPAN,
        "parent_span_id": PARENT,
    }
    generated = await app.test_client().get("/flask-ids")
    body = await generated.get_json()
    assert body["trace_id"] == body["request_id"] == generated.headers["X-B3-TraceId"]
    assert body["span_id"] == generated.headers["X-B3-SpanId"]
    assert body["parent_span_id"] is None


async def test_outside_request(mode: str, app: Quart) -> None:
    assert dd_compat.current_trace_id() == "no-request-id"
    assert dd_compat.current_trace_ids() is None
    assert dd_compat.outgoing_trace_headers() == {}
    async with app.app_context():
        assert dd_compat.current_trace_id() == "no-request-id"


@dataclass
class ScanFilesStub:
    """A loopback HTTP server standing in for scan-files: records request headers."""

    url: str = ""
    requests: list[dict[str, str]] = field(default_factory=list)
    received: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        headers = dict(line.split(": ", 1) for line in head[1:] if line)
        await reader.readexactly(int(headers.get("content-length", "0")))
        self.requests.append({k.lower(): v for k, v in headers.items()})
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        await writer.drain()
        writer.close()
        self.received.set()


@pytest.fixture
async def scan_files() -> AsyncIterator[ScanFilesStub]:
    stub = ScanFilesStub()
    server = await asyncio.start_server(stub.handle, "127.0.0.1", 0)
    host, port = server.sockets[0].getsockname()[:2]
    stub.url = f"http://{host}:{port}"
    async with server:
        yield stub


@pytest.mark.parametrize("sent_trace", [TRACE, None])
async def test_trace_id_round_trip(
    mode: str, app: Quart, logs: Any, scan_files: ScanFilesStub, sent_trace: str | None
) -> None:
    """header in -> log line (view and background task) -> response header -> scan-files."""
    seen: dict[str, object] = {}

    async def scan(document_id: str) -> None:
        seen["task_trace_id"] = dd_compat.current_trace_id()
        current_app.logger.info("scanning", extra={"document_id": document_id})
        seen["flask_request_in_task"] = await dd_compat.call_flask_bound(flask.has_request_context)
        headers = {
            **dd_compat.outgoing_trace_headers(),
            "X-Scanning-Request-Id": dd_compat.current_trace_id(),
        }
        async with httpx.AsyncClient() as client:
            await client.post(f"{scan_files.url}/clamav", headers=headers, content=b"%PDF-1.4")

    @app.post("/upload")
    async def upload() -> object:
        current_app.logger.info("upload received")
        current_app.add_background_task(scan, "doc-1")
        return jsonify(status="ok"), 201

    headers = {"X-B3-TraceId": sent_trace, "X-B3-SpanId": SPAN} if sent_trace else {}
    response = await app.test_client().post("/upload", headers=headers)
    await asyncio.wait_for(asyncio.gather(*app.background_tasks), 5)
    assert response.status_code == 201

    trace_id = response.headers["X-B3-TraceId"]
    span_id = response.headers["X-B3-SpanId"]
    assert trace_id == (sent_trace or trace_id) and HEX32.match(trace_id)
    assert seen["task_trace_id"] == trace_id
    assert seen["flask_request_in_task"] is False  # tasks have no request, as under Flask
    assert logs.find("upload received")["requestId"] == trace_id
    task_line = logs.find("scanning")
    assert task_line["requestId"] == trace_id and task_line["document_id"] == "doc-1"
    [outgoing] = scan_files.requests
    assert outgoing["x-b3-traceid"] == trace_id
    assert outgoing["x-b3-parentspanid"] == span_id
    assert HEX16.match(outgoing["x-b3-spanid"]) and outgoing["x-b3-spanid"] != span_id
    assert outgoing["x-scanning-request-id"] == trace_id


async def test_concurrent_requests_keep_their_ids(mode: str, app: Quart) -> None:
    @app.get("/slow/<name>")
    async def slow(name: str) -> object:
        before = dd_compat.current_trace_id()
        await asyncio.sleep(0.05)
        await dd_compat.call_flask_bound(lambda: None)
        return jsonify(
            before=before,
            after=dd_compat.current_trace_id(),
            header=request.headers["X-B3-TraceId"],
        )

    client = app.test_client()
    responses = await asyncio.gather(
        *(client.get(f"/slow/{n}", headers={"X-B3-TraceId": f"{n:032x}"}) for n in range(8))
    )
    for response in responses:
        body = await response.get_json()
        assert body["before"] == body["after"] == body["header"] == response.headers["X-B3-TraceId"]


async def test_ids_used_before_the_hook_are_kept(mode: str, app: Quart, logs: Any) -> None:
    @app.url_value_preprocessor
    def early(_endpoint: str | None, _values: dict[str, Any] | None) -> None:
        current_app.logger.info("before before_request: %s", dd_compat.current_trace_id())

    response = await app.test_client().get("/ids")
    trace_id = response.headers["X-B3-TraceId"]
    assert logs.find("before before_request")["message"].endswith(trace_id)
    assert (await response.get_json())["trace_id"] == trace_id


async def test_init_app_twice_registers_hooks_once(mode: str, app: Quart, logs: Any) -> None:
    first = dd_compat.get_state(app).log_handler
    dd_compat.init_app(app, use_notifications_utils=mode == "notifications_utils")
    handler = dd_compat.get_state(app).log_handler
    assert handler is not None and handler is not first
    handler.setStream(logs.stream)
    assert first is not None and not first.running  # replaced: closed, its listener ended
    assert len(app.before_request_funcs[None]) == 1
    assert len(app.after_request_funcs[None]) == 1
    assert len(app.before_serving_funcs) == 1
    assert len(app.after_serving_funcs) == 1
    response = await app.test_client().get("/ids", headers={"X-B3-TraceId": TRACE})
    assert response.headers.getlist("X-B3-TraceId") == [TRACE]
