"""dd-api with optional patches, to measure a proposed fix before it is made in src/.

    hypercorn -c hypercorn.toml bench.experiments:app     (what ``bench.run --patches`` runs)

``DD_BENCH_PATCHES`` is a comma-separated list of:

* ``no-expect``: PutObject without ``Expect: 100-continue`` (botocore adds it to every
  file-like body, and aiohttp then waits for the interim 100 before sending the body).
* ``chunk-256k``, ``chunk-1m``: stream downloads from S3 in 256 KiB or 1 MiB chunks (src used
  64 KiB until commit 45270ea, 256 KiB since).
* ``timings``: time the steps of each upload; ``GET /_bench/timings`` answers the totals and
  resets them.

These patch dd-api's internals by name, so they follow the code as of the commit the results
name, and may need updating when src/ changes. Nothing here is used by ``make bench`` itself.
(``no-pending`` and ``copy-pending``, which changed how the pending-scan copy was written, went
with that copy when the scan queue replaced it; they are in the history before that change.)
"""

from __future__ import annotations

import functools
import inspect
import os
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from botocore.handlers import add_expect_header
from quart import Quart, request

from dd_api import mime
from dd_api.app import create_app
from dd_api.queue import sqs as sqs_queue
from dd_api.store import s3 as s3_store
from dd_api.views import upload

PATCHES = {name.strip() for name in os.environ.get("DD_BENCH_PATCHES", "").split(",") if name}
TIMINGS: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])


def no_expect() -> None:
    opened = s3_store.S3Store.open

    async def open_without_expect(self: s3_store.S3Store) -> None:
        await opened(self)
        self._client.meta.events.unregister("before-call.s3.PutObject", add_expect_header)

    # a deliberate monkeypatch of the app's method (mypy still checks the signature matches)
    s3_store.S3Store.open = open_without_expect  # type: ignore[method-assign]


def chunk_256k() -> None:
    s3_store.CHUNK_SIZE = 256 * 1024


def chunk_1m() -> None:
    s3_store.CHUNK_SIZE = 1024 * 1024


def timed[**P, R](
    name: str, function: Callable[P, Awaitable[R]]
) -> Callable[P, Coroutine[Any, Any, R]]:
    @functools.wraps(function)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        started = time.perf_counter()
        try:
            return await function(*args, **kwargs)
        finally:
            _record(name, started)

    return wrapper


def timed_sync[**P, R](name: str, function: Callable[P, R]) -> Callable[P, R]:
    @functools.wraps(function)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        started = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            _record(name, started)

    return wrapper


def _record(name: str, started: float) -> None:
    entry = TIMINGS[name]
    entry[0] += 1
    entry[1] += time.perf_counter() - started


def timings(app: Quart) -> None:
    from quart.wrappers.request import Request

    # Deliberate monkeypatches of methods of Quart and the app: each ignore[method-assign] only
    # allows replacing a method; mypy still checks the wrapper against the method's signature.
    Request._load_form_data = timed(  # type: ignore[method-assign]
        "1 multipart parse", Request._load_form_data
    )
    # upload.py calls mime.detect through the module, so patching it there times the upload's call
    mime.detect = timed_sync("2 libmagic", mime.detect)
    s3_store.S3Store.put = timed(  # type: ignore[method-assign]
        "3a PutObject document", s3_store.S3Store.put
    )
    sqs_queue.SqsQueue.send = timed(  # type: ignore[method-assign]
        "3b SendMessage scan message", sqs_queue.SqsQueue.send
    )
    upload._store_and_send = timed("3 both, in parallel", upload._store_and_send)
    view = "upload.upload_document"
    upload_view = app.view_functions[view]
    if not inspect.iscoroutinefunction(upload_view):  # async def (under @require_bearer)
        raise TypeError(f"{view} is not a coroutine function")
    app.view_functions[view] = timed("0 upload view", upload_view)

    @app.get("/_bench/timings")
    async def report_timings() -> dict[str, Any]:
        answer = {
            name: {"count": count, "mean_ms": round(total * 1000 / count, 2)}
            for name, (count, total) in sorted(TIMINGS.items())
            if count
        }
        if request.args.get("reset", "1") == "1":
            TIMINGS.clear()
        return answer


def build() -> Quart:
    for name, patch in {
        "no-expect": no_expect,
        "chunk-256k": chunk_256k,
        "chunk-1m": chunk_1m,
    }.items():
        if name in PATCHES:
            patch()
    built = create_app()
    if "timings" in PATCHES:
        timings(built)
    return built


app = build()
