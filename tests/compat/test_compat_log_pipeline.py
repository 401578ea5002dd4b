"""The log pipeline: captured in the emitting task, formatted and written in a listener thread.

- lines are formatted, redacted and written in the listener thread, never the emitting one;
- each line keeps its request's trace id (background tasks included), with requests running
  concurrently;
- nothing is lost when the app stops serving, when the handler is removed, or when the
  process exits right after logging;
- redaction still applies; other handlers (caplog) still see the records as logged.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

import dd_compat
import pytest
from dd_compat.logging import (
    LISTENER_THREAD_NAME,
    CompatHandler,
    CompatStreamHandler,
    ReadableFormatter,
    remove_compat_handlers,
)
from quart import Quart, current_app, request

TRACE_A = "463ac35c9f6413ad48485a3953bb6124"
TRACE_B = "0af7651916cd43dd8448eb211c80319c"
KEY = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8"
TOKEN = "secret-token-123"


def compat_handler(app: Quart) -> CompatHandler:
    handler = dd_compat.get_state(app).log_handler
    assert isinstance(handler, CompatHandler)
    return handler


def record_formatting_threads(app: Quart) -> dict[str, threading.Thread]:
    """Message -> the thread that formatted its line, from now on."""
    formatter = compat_handler(app).output.formatter
    assert formatter is not None
    threads: dict[str, threading.Thread] = {}
    original = formatter.format

    def format(record: logging.LogRecord) -> str:
        threads[record.getMessage()] = threading.current_thread()
        return original(record)

    formatter.format = format  # type: ignore[method-assign]
    return threads


async def test_lines_are_formatted_in_the_listener_thread(
    mode: str, make_app: Callable[..., Quart], logs: Any
) -> None:
    app = make_app()
    handler = compat_handler(app)
    recording = record_formatting_threads(app)
    filtered_in: dict[str, threading.Thread] = {}

    class Capture(logging.Filter):  # runs with the handler's own filters: emitting side
        def filter(self, record: logging.LogRecord) -> bool:
            filtered_in[record.getMessage()] = threading.current_thread()
            return True

    handler.addFilter(Capture())

    async def task() -> None:
        logging.getLogger("dd_api.scanning").info("from background task")

    @app.get("/")
    async def index() -> object:
        current_app.logger.info("from view")
        current_app.add_background_task(task)
        return "ok"

    await app.test_client().get("/")
    await asyncio.gather(*app.background_tasks)
    app.logger.warning("outside any request")
    messages = ["from view", "from background task", "outside any request"]
    assert [r["message"] for r in logs.records() if r["message"] in messages] == messages

    listener = handler.listener_thread
    assert listener is not None and listener.name == LISTENER_THREAD_NAME
    assert listener is not threading.current_thread()
    for message in messages:
        assert recording[message] is listener, message
        assert filtered_in[message] is threading.current_thread(), message


async def test_trace_ids_of_concurrent_requests_and_their_tasks(
    mode: str, make_app: Callable[..., Quart], logs: Any
) -> None:
    app = make_app()
    both_in = asyncio.Barrier(2)

    async def task(tag: str) -> None:
        await asyncio.sleep(0.01)
        logging.getLogger("dd_api.scanning").info("task of %s", tag)

    @app.get("/")
    async def index() -> object:
        tag = request.args["tag"]
        current_app.logger.info("view of %s, first", tag)
        await both_in.wait()  # the two requests' lines interleave in the queue
        current_app.add_background_task(task, tag)
        current_app.logger.info("view of %s, second", tag)
        return "ok"

    client = app.test_client()
    await asyncio.gather(
        client.get("/?tag=a", headers={"X-B3-TraceId": TRACE_A}),
        client.get("/?tag=b", headers={"X-B3-TraceId": TRACE_B}),
    )
    await asyncio.gather(*app.background_tasks)
    ids = {r["message"]: r["requestId"] for r in logs.records() if " of " in r["message"]}
    assert ids == {
        "view of a, first": TRACE_A,
        "view of a, second": TRACE_A,
        "task of a": TRACE_A,
        "view of b, first": TRACE_B,
        "view of b, second": TRACE_B,
        "task of b": TRACE_B,
    }


async def test_nothing_lost_when_the_app_stops_serving(
    mode: str, make_app: Callable[..., Quart], logs: Any
) -> None:
    app = make_app()
    handler = compat_handler(app)
    recording = record_formatting_threads(app)
    count = 2000

    @app.get("/")
    async def index() -> object:
        for number in range(count):
            current_app.logger.info("line %d", number)
        return "ok"

    @app.after_serving  # registered after init_app: still runs before the listener stops
    async def goodbye() -> None:
        logging.getLogger("dd_api.app").info("after serving")

    async with app.test_app() as test_app:
        assert handler.running
        await test_app.test_client().get("/")

    # no flush: stopping the listener wrote everything it held
    assert not handler.running
    lines = [json.loads(line) for line in logs.stream.getvalue().splitlines()]
    messages = [line["message"] for line in lines]
    assert messages[-count - 1 : -1] == [f"line {n}" for n in range(count)]
    assert messages[-1] == "after serving"
    assert {thread.name for thread in recording.values()} == {LISTENER_THREAD_NAME}

    # logged once stopped: written at once, where it is logged
    app.logger.info("after the listener stopped")
    assert "after the listener stopped" in logs.stream.getvalue()
    assert recording["after the listener stopped"] is threading.current_thread()

    # served again: the listener runs again
    async with app.test_app():
        assert handler.running
    assert not handler.running


async def test_nothing_lost_when_the_handler_is_removed(
    mode: str, make_app: Callable[..., Quart], logs: Any
) -> None:
    app = make_app()
    handler = compat_handler(app)
    for number in range(1000):
        app.logger.info("line %d", number)
    remove_compat_handlers(logging.getLogger(app.name))
    assert not handler.running
    messages = [json.loads(line)["message"] for line in logs.stream.getvalue().splitlines()]
    assert messages[-1000:] == [f"line {n}" for n in range(1000)]


@pytest.mark.parametrize("how", ["return", "sys.exit", "logging.shutdown"])
def test_nothing_lost_when_the_process_exits_right_after_logging(how: str) -> None:
    ending = {
        "return": "",
        "sys.exit": "sys.exit(0)",
        "logging.shutdown": "logging.shutdown()",
    }[how]
    script = textwrap.dedent(
        f"""
        import logging, sys, threading
        import dd_compat
        from quart import Quart

        app = Quart("dd_api")
        dd_compat.init_app(app, use_notifications_utils=False)

        def work():
            log = logging.getLogger("dd_api.worker")
            for number in range(3000):
                log.info("line %d key=%s", number, "{KEY}")

        thread = threading.Thread(target=work)
        thread.start()
        thread.join()
        {ending}
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    messages = [line["message"] for line in lines if line["name"] == "dd_api.worker"]
    assert messages == [f"line {n} key=***" for n in range(3000)]
    assert KEY not in result.stdout
    assert result.stderr == ""


@pytest.mark.parametrize("debug", [False, True])
async def test_redaction_in_the_listener(
    mode: str, make_app: Callable[..., Quart], logs: Any, debug: bool
) -> None:
    app = make_app(DEBUG=debug)
    recording = record_formatting_threads(app)

    @app.get("/d")
    async def download() -> object:
        current_app.logger.info("GET /d?key=%s&filename=a.pdf", request.args["key"])
        # a dict argument is rendered in the emitting task; still redacted in the listener
        current_app.logger.info("params %s", dict(request.args))
        current_app.logger.info("auth header was Bearer %s", TOKEN, extra={"query": {"key": KEY}})
        return "ok"

    await app.test_client().get(f"/d?key={KEY}")
    output = logs.text()
    assert KEY not in output
    assert TOKEN not in output
    assert "key=***&filename=a.pdf" in output
    assert "Bearer ***" in output
    assert ("{'key': '***'}" if debug else '"key": "***"') in output
    listener = compat_handler(app).listener_thread
    assert all(recording[m] is listener for m in recording if "key" in m or "Bearer" in m)


async def test_debug_format_unchanged_by_other_handlers(
    mode: str, make_app: Callable[..., Quart], logs: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """caplog formats the same records with its own asctime: ours is set on our copy only."""
    app = make_app(DEBUG=True)
    caplog.set_level(logging.INFO, logger="dd_api")
    caplog.handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    for number in range(200):
        app.logger.info("line %d", number)
    lines = [line for line in logs.lines() if '"line ' in line]
    assert len(lines) == 200
    assert all(line[:19].count("-") == 2 and line[10] == "T" for line in lines), lines[:3]


_who: ContextVar[str] = ContextVar("who", default="nobody")


class ContextBound:
    """Renders from a context variable, as a LocalProxy would."""

    def __str__(self) -> str:
        return _who.get()


async def test_arguments_are_captured_when_logged(
    mode: str, make_app: Callable[..., Quart], logs: Any, caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app()
    caplog.set_level(logging.INFO, logger="dd_api")
    items = ["before"]
    token = _who.set("the request")
    try:
        app.logger.info("items %s, by %s", items, ContextBound())
        items.append("after")  # mutated before the listener could render the line
        app.logger.info("plain %s %d", "text", 42)
    finally:
        _who.reset(token)
    assert logs.find("items")["message"] == "items ['before'], by the request"
    assert logs.find("plain")["message"] == "plain text 42"
    # other handlers see the record as logged, with the fields captured by our filters
    [record] = [r for r in caplog.records if r.msg == "items %s, by %s"]
    assert isinstance(record.args, tuple) and record.args[0] is items
    assert record.requestId == "no-request-id"  # type: ignore[attr-defined]


async def test_set_stream_keeps_earlier_lines_on_the_old_stream(
    mode: str, make_app: Callable[..., Quart], logs: Any
) -> None:
    app = make_app()
    handler = compat_handler(app)
    app.logger.info("to the first stream")
    other = io.StringIO()
    assert handler.setStream(other) is logs.stream
    app.logger.info("to the second stream")
    handler.flush()
    assert "to the first stream" in logs.stream.getvalue()
    assert "to the second stream" not in logs.stream.getvalue()
    assert "to the second stream" in other.getvalue()


def test_handler_lifecycle() -> None:
    stream = io.StringIO()
    handler = CompatHandler(CompatStreamHandler(stream))
    handler.output.setFormatter(ReadableFormatter())

    def log(message: str) -> None:
        handler.handle(logging.makeLogRecord({"name": "dd_api", "msg": message}))

    try:
        assert not handler.running  # started by configure_logging and before serving
        log("not started: written at once")
        assert "not started: written at once" in stream.getvalue()
        handler.start()
        assert handler.running
        log("queued")
        handler.stop()  # writes what is queued
        assert not handler.running
        assert "queued" in stream.getvalue()
        handler.start()
        assert handler.running
        log("queued again")
    finally:
        handler.close()
    assert "queued again" in stream.getvalue()
    assert not handler.running
    handler.start()  # a closed handler stays stopped
    assert not handler.running
