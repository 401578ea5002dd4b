"""dd-api with optional patches, to measure a proposed fix before it is made in src/.

    hypercorn -c hypercorn.toml bench.experiments:app     (what ``bench.run --patches`` runs)

``DD_BENCH_PATCHES`` is a comma-separated list of:

* ``no-expect``: PutObject without ``Expect: 100-continue`` (botocore adds it to every
  file-like body, and aiohttp then waits for the interim 100 before sending the body).
* ``chunk-256k``, ``chunk-1m``: stream downloads from S3 in 256 KiB or 1 MiB chunks (src used
  64 KiB until commit 45270ea, 256 KiB since).
* ``no-pending``: store the document alone, without its pending-scan copy. Not crash-safe
  (issue 6): it measures what any design that writes the document once can reach at best.
* ``copy-pending``: send the bytes once: PutObject the document, then have S3 copy it into
  its pending-scan copy (CopyObject with the document's key as the copy source key) instead
  of uploading the bytes a second time beside it.
* ``timings``: time the steps of each upload; ``GET /_bench/timings`` answers the totals and
  resets them.

These patch dd-api's internals by name, so they follow the code as of the commit the results
name, and may need updating when src/ changes. Nothing here is used by ``make bench`` itself.
"""

from __future__ import annotations

import asyncio
import functools
import os
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, BinaryIO

from botocore.handlers import add_expect_header
from quart import Quart, request

from dd_api.app import create_app
from dd_api.store import s3 as s3_store
from dd_api.views import upload

if TYPE_CHECKING:
    from dd_api.scanning.scanner import ScanJob

PATCHES = {name.strip() for name in os.environ.get("DD_BENCH_PATCHES", "").split(",") if name}
TIMINGS: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])


def no_expect() -> None:
    opened = s3_store.S3Store.open

    async def open_without_expect(self: s3_store.S3Store) -> None:
        await opened(self)
        self._client.meta.events.unregister("before-call.s3.PutObject", add_expect_header)

    patched: Any = s3_store.S3Store
    patched.open = open_without_expect


def chunk_256k() -> None:
    s3_store.CHUNK_SIZE = 256 * 1024


def chunk_1m() -> None:
    s3_store.CHUNK_SIZE = 1024 * 1024


def no_pending() -> None:
    upload._store_with_pending_copy = _store_alone


async def _store_alone(
    location: Any, stream: BinaryIO, size: int, mimetype: str, key: bytes | None, job: ScanJob
) -> None:
    store = upload.runtime().store
    await store.put(
        location, stream, size=size, mimetype=mimetype, key=key, tags=upload.IN_PROGRESS_TAGS
    )


def copy_pending() -> None:
    upload._store_with_pending_copy = _store_then_copy


async def _store_then_copy(
    location: Any, stream: BinaryIO, size: int, mimetype: str, key: bytes | None, job: ScanJob
) -> None:
    """The document first, then S3 copies it to the pending-scan copy: both, or neither."""
    await _store_alone(location, stream, size, mimetype, key, job)
    store: Any = upload.runtime().store
    pending = upload.PendingCopy(location, job.filename, mimetype, job.request_id)
    source_key = {}
    if key is not None:
        source_key = {"CopySourceSSECustomerKey": key, "CopySourceSSECustomerAlgorithm": "AES256"}
    try:
        await store._call(
            store._client.copy_object,
            Bucket=store.bucket,
            Key=location.pending_key,
            CopySource={"Bucket": store.bucket, "Key": location.key},
            ContentType=mimetype,
            Metadata=pending.metadata(),
            MetadataDirective="REPLACE",
            TaggingDirective="REPLACE",
            Tagging="",
            ServerSideEncryption="AES256",
            **source_key,
        )
    except BaseException:
        await asyncio.shield(upload._remove_both(location, key))
        raise


def timed[**P, R](name: str, function: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
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

    patched: Any = Request
    patched._load_form_data = timed("1 multipart parse", Request._load_form_data)
    upload.mime.detect = timed_sync("2 libmagic", upload.mime.detect)
    upload.copy_for_scan = timed("3 scan copy", upload.copy_for_scan)
    patched = s3_store.S3Store
    patched.put = timed("4a PutObject document", patched.put)
    patched.put_pending = timed("4b PutObject pending copy", patched.put_pending)
    upload._store_with_pending_copy = timed("4 both writes", upload._store_with_pending_copy)
    view = "upload.upload_document"
    app.view_functions[view] = timed("0 upload view", app.view_functions[view])

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
        "no-pending": no_pending,
        "copy-pending": copy_pending,
    }.items():
        if name in PATCHES:
            patch()
    built = create_app()
    if "timings" in PATCHES:
        timings(built)
    return built


app = build()
