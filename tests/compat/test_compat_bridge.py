"""The bridge: Flask-bound sync helpers work from Quart code, in a worker thread."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

import dd_compat
import flask
import httpx
import pytest
from hypercorn.asyncio import serve
from hypercorn.config import Config as HypercornConfig
from quart import Quart, current_app, g, jsonify, request

TRACE = "463ac35c9f6413ad48485a3953bb6124"


def flask_bound_view_info() -> dict[str, Any]:
    """A sync helper written for Flask: reads the Flask globals."""
    req = flask.request
    flask.g.seen_by_flask = True
    return {
        "method": req.method,
        "path": req.path,
        "full_path": req.full_path,
        "args": req.args.to_dict(),
        "host": req.host,
        "scheme": req.scheme,
        "header": req.headers.get("X-Thing"),
        "content_type": req.content_type,
        "remote_addr": req.remote_addr,
        "app_name": flask.current_app.config["NOTIFY_APP_NAME"],
        "g_from_quart": flask.g.get("from_quart"),
        "thread": threading.current_thread().name,
    }


@pytest.fixture
def app(make_app: Callable[..., Quart]) -> Quart:
    app = make_app(NOTIFY_APP_NAME="dd")

    @app.route("/info/<path:rest>", methods=["GET", "POST"])
    async def info(rest: str) -> object:
        g.from_quart = "set in view"
        data = await dd_compat.call_flask_bound(flask_bound_view_info)
        data["seen_by_flask_in_quart_g"] = g.get("seen_by_flask")
        data["quart_path"] = request.path
        data["quart_remote_addr"] = request.remote_addr
        data["loop_thread"] = threading.current_thread().name
        return jsonify(data)

    @app.get("/direct")
    async def direct() -> object:
        try:
            flask_bound_view_info()
        except RuntimeError as error:
            return jsonify(error=str(error))
        return jsonify(error=None)

    return app


async def test_flask_bound_helper_fails_without_bridge(mode: str, app: Quart) -> None:
    response = await app.test_client().get("/direct")
    assert "Working outside of application context" in (await response.get_json())["error"]


async def test_flask_request_mirrors_quart_request(mode: str, app: Quart) -> None:
    response = await app.test_client().post(
        "/info/a%20b%3Fc%25d/é?q=%C3%A9&x=1&x=2",
        headers={"X-Thing": "thing", "Content-Type": "application/json"},
        data=b'{"ignored": true}',
    )
    body = await response.get_json()
    assert body["path"] == body["quart_path"] == "/info/a b?c%d/é"
    assert body["method"] == "POST"
    assert body["args"] == {"q": "é", "x": "1"}
    assert body["full_path"] == "/info/a b?c%d/é?q=%C3%A9&x=1&x=2"  # raw query string
    assert body["host"] == "localhost"
    assert body["scheme"] == "http"
    assert body["header"] == "thing"
    assert body["content_type"] == "application/json"
    assert body["remote_addr"] == body["quart_remote_addr"]
    assert body["app_name"] == "dd"  # the shadow app shares the Quart config
    assert body["g_from_quart"] == "set in view"  # flask.g starts as a copy of quart.g ...
    assert body["seen_by_flask_in_quart_g"] is True  # ... and is copied back
    assert body["thread"] != body["loop_thread"]


async def test_g_deletions_copied_back(mode: str, app: Quart) -> None:
    def drop() -> None:
        del flask.g.doomed

    @app.get("/drop")
    async def view() -> object:
        g.doomed = 1
        await dd_compat.call_flask_bound(drop)
        return jsonify(has=hasattr(g, "doomed"))

    assert await (await app.test_client().get("/drop")).get_json() == {"has": False}


async def test_args_results_and_exceptions(mode: str, app: Quart) -> None:
    def add(a: int, b: int = 0) -> int:
        return a + b

    def conflict() -> None:
        flask.abort(409)

    @app.get("/calc")
    async def calc() -> object:
        return jsonify(sum=await dd_compat.call_flask_bound(add, 2, b=3))

    @app.get("/conflict")
    async def conflict_view() -> object:
        await dd_compat.call_flask_bound(conflict)
        return "unreachable"

    client = app.test_client()
    assert await (await client.get("/calc")).get_json() == {"sum": 5}
    assert (await client.get("/conflict")).status_code == 409


async def test_background_task_gets_app_context_only(mode: str, app: Quart) -> None:
    results: dict[str, Any] = {}

    def in_task() -> None:
        results["app_name"] = flask.current_app.config["NOTIFY_APP_NAME"]
        results["has_request"] = flask.has_request_context()
        results["trace_id"] = dd_compat.current_trace_id()

    async def task() -> None:
        await dd_compat.call_flask_bound(in_task)

    @app.get("/start")
    async def start() -> str:
        current_app.add_background_task(task)
        return "started"

    await app.test_client().get("/start", headers={"X-B3-TraceId": TRACE})
    await asyncio.gather(*app.background_tasks)
    assert results == {"app_name": "dd", "has_request": False, "trace_id": TRACE}


async def test_needs_an_app_context(mode: str, app: Quart) -> None:
    with pytest.raises(RuntimeError):
        await dd_compat.call_flask_bound(flask_bound_view_info)


async def test_library_helpers_need_the_bridge(
    nu_only: str, make_app: Callable[..., Quart]
) -> None:
    """notifications_utils' own helpers raise under Quart and work through the bridge."""
    app = make_app(CHECK_PROXY_HEADER=False)
    request_helper = dd_compat.get_state(app).request_helper
    assert request_helper is not None

    @app.get("/check")
    async def check() -> object:
        try:
            request_helper.check_proxy_header_before_request()
            direct = None
        except RuntimeError as error:
            direct = str(error)
        bridged = await dd_compat.call_flask_bound(request_helper.check_proxy_header_before_request)
        request_class = await dd_compat.call_flask_bound(
            lambda: type(flask.request._get_current_object()).__name__
        )
        return jsonify(direct=direct, bridged=bridged, request_class=request_class)

    body = await (await app.test_client().get("/check")).get_json()
    assert "Working outside of" in body["direct"]
    assert body["bridged"] is None
    assert body["request_class"] == "NotifyRequest"


async def test_library_after_request_hook_runs(
    nu_only: str, make_app: Callable[..., Quart]
) -> None:
    """notifications_utils.logging registers an after_request on the (shadow) Flask app; it
    runs for every Quart response, with flask.request and flask.g mirrored."""
    app = make_app()
    state = dd_compat.get_state(app)
    if state.nu_logging is None:
        pytest.skip(f"notifications_utils.logging is not importable: {state.nu_logging_error}")
    shadow = state.shadow
    assert shadow.after_request_funcs.get(None), "notifications_utils.logging hook missing"
    seen: list[tuple[str, str, int, object]] = []

    @shadow.after_request
    def record(response: flask.Response) -> flask.Response:
        seen.append(
            (
                flask.request.method,
                flask.request.path,
                response.status_code,
                flask.g.get("service_id"),
            )
        )
        return response

    @app.get("/svc")
    async def svc() -> object:
        g.service_id = "service-1"
        return "ok"

    client = app.test_client()
    await client.get("/svc")
    await client.get("/missing")
    assert seen == [("GET", "/svc", 200, "service-1"), ("GET", "/missing", 404, None)]


# --- a real server: the bridge never blocks the event loop --------------------------------


@pytest.fixture
async def serve_app() -> AsyncIterator[Callable[[Quart], Any]]:
    """``base_url = await serve_app(app)``: Hypercorn on 127.0.0.1 in the test's loop."""
    stops: list[tuple[asyncio.Event, asyncio.Task[None]]] = []

    async def _serve(app: Quart) -> str:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        config = HypercornConfig()
        config.bind = [f"fd://{sock.detach()}"]  # Hypercorn owns the socket from here
        config.graceful_timeout = 1
        config.errorlog = None
        stop = asyncio.Event()
        task = asyncio.create_task(serve(app, config, shutdown_trigger=stop.wait))  # type: ignore[arg-type]
        stops.append((stop, task))
        base_url = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=base_url) as client:
            for _ in range(100):
                try:
                    await client.get("/__ready__")
                    return base_url
                except httpx.TransportError:
                    await asyncio.sleep(0.02)
        raise RuntimeError("Hypercorn did not start")

    yield _serve
    for stop, task in stops:
        stop.set()
        await asyncio.wait_for(task, 5)


async def test_bridge_never_blocks_the_loop(
    mode: str, make_app: Callable[..., Quart], serve_app: Callable[[Quart], Any]
) -> None:
    app = make_app()
    entered, release = threading.Event(), threading.Event()

    def blocked_helper() -> str:
        entered.set()
        if not release.wait(5):
            raise TimeoutError("never released")
        return flask.request.path

    def quick_helper() -> str:
        return flask.request.path

    @app.get("/slow")
    async def slow() -> object:
        return jsonify(path=await dd_compat.call_flask_bound(blocked_helper))

    @app.get("/fast")
    async def fast() -> object:
        return jsonify(path=await dd_compat.call_flask_bound(quick_helper))

    base_url = await serve_app(app)
    async with httpx.AsyncClient(base_url=base_url, timeout=5) as client:
        slow_request = asyncio.create_task(client.get("/slow", headers={"X-B3-TraceId": TRACE}))
        try:
            assert await asyncio.to_thread(entered.wait, 5), "slow helper never started"
            fast_response = await asyncio.wait_for(client.get("/fast"), 3)
            assert fast_response.status_code == 200
            assert fast_response.json() == {"path": "/fast"}
            assert not slow_request.done()  # still blocked in its helper
        finally:
            release.set()
        slow_response = await asyncio.wait_for(slow_request, 5)
    assert slow_response.status_code == 200
    assert slow_response.json() == {"path": "/slow"}
    assert slow_response.headers["X-B3-TraceId"] == TRACE
