"""The application factory."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping
from contextlib import AsyncExitStack, suppress
from typing import cast

import dd_compat
import httpx
from hypercorn.middleware import ProxyFixMiddleware
from quart import Quart

from . import errors
from .config import RETIRED_SETTINGS, Settings
from .converters import Base64UUIDConverter
from .metrics import Metrics
from .queue import LocalQueue, MessageCodec, QueueError, ScanQueue, SqsQueue
from .queue.local import LOCAL_QUEUE_FILE, local_queue_key
from .runtime import Runtime, Started
from .scanning.clamd import ClamdClient, ClamdError
from .scanning.client import ScanClient
from .scanning.engine import ScanEngine
from .scanning.s3_route import S3Route
from .scanning.scanner import Scanner
from .spooling import SpoolingRequest
from .store import DocumentStore
from .store.local import LocalStore
from .store.s3 import S3Store
from .views import delete, download, openapi, status, upload, verdict

log = logging.getLogger(__name__)


def create_app(environ: Mapping[str, str] | None = None) -> Quart:
    """Build the app from ``environ`` (default: ``os.environ``); raises ConfigError when invalid."""
    settings = Settings.from_env(environ)
    app = Quart("dd_api", static_folder=None)
    app.request_class = SpoolingRequest
    _configure(app, settings)
    # trace ids, JSON logging and the proxy-header check, as notification-utils did for Flask
    dd_compat.init_app(app, proxy_check_exempt=status.is_shallow_status)
    if settings.TRUSTED_PROXY_HOPS:
        # scheme, host and client address from the X-Forwarded-* of that many proxies only
        app.asgi_app = ProxyFixMiddleware(  # type: ignore[method-assign]
            app.asgi_app, mode="legacy", trusted_hops=settings.TRUSTED_PROXY_HOPS
        )
    app.url_map.converters["base64_uuid"] = Base64UUIDConverter
    # a doubled slash is an unknown URL (JSON 404), not a redirect built from the Host header
    app.url_map.merge_slashes = False
    errors.register(app)
    for view in (status, upload, download, delete, verdict, openapi):
        app.register_blueprint(view.blueprint)

    metrics = Metrics()
    metrics.install(app)
    runtime = Runtime(
        settings=settings, store=_store(settings), queue=_queue(settings), metrics=metrics
    )
    app.extensions["dd_api"] = runtime

    stack = AsyncExitStack()

    @app.before_serving
    async def open_dependencies() -> None:
        log.info("Starting with config: %s", settings.masked())
        env = environ if environ is not None else os.environ
        _warn_retired(env)
        if settings.SCANNER == "clamd" and not env.get("SCANNER", "").strip():
            log.info("No scanner configured: using the local clamd (set SCANNER to choose)")
        await asyncio.to_thread(runtime.spool_dir.open)
        stack.callback(runtime.spool_dir.close)
        await runtime.store.open()
        stack.push_async_callback(runtime.store.close)
        await runtime.queue.open()
        stack.push_async_callback(runtime.queue.close)
        codec = MessageCodec(settings.SCAN_QUEUE_KEYS or await _local_queue_key(settings))
        http = await stack.enter_async_context(
            httpx.AsyncClient(limits=httpx.Limits(max_connections=settings.SCAN_CONCURRENCY * 2))
        )
        engine = await _engine(settings, http, metrics)
        scanner = Scanner(
            engine,
            runtime.store,
            runtime.queue,
            codec,
            concurrency=settings.SCAN_CONCURRENCY,
            memory_bytes=settings.SCAN_BACKLOG_MEMORY_BYTES,
            disk_bytes=settings.SCAN_BACKLOG_DISK_BYTES,
            fast_window=settings.fast_scan_window,
            attempt_timeout=settings.SCAN_ATTEMPT_TIMEOUT_SECONDS,
            visibility=settings.SCAN_QUEUE_VISIBILITY_SECONDS,
            retry_max=settings.SCAN_RETRY_MAX_SECONDS,
            max_age=settings.PENDING_SCAN_MAX_AGE_SECONDS,
            on_finished=metrics.scan_finished,
            s3_route=_s3_route(settings, engine, runtime.store),
        )
        metrics.watch(scanner)
        runtime.started = Started(codec=codec, engine=engine, scanner=scanner)
        # Stops receiving as soon as shutdown starts; scans it started are background
        # tasks, which Quart lets finish (or cancels) before after_serving.
        # Quart's typing names only is_set/set, but its event_class is asyncio.Event.
        shutting_down = cast(asyncio.Event, app.shutdown_event)
        consuming = asyncio.create_task(scanner.consume(shutting_down, app.add_background_task))
        stack.push_async_callback(_stop, consuming)
        polling = asyncio.create_task(_poll_depth(runtime))
        stack.push_async_callback(_stop, polling)

    @app.after_serving
    async def close_dependencies() -> None:
        # Quart runs this after background scans finished or were cancelled.
        await stack.aclose()

    return app


async def _poll_depth(runtime: Runtime) -> None:
    """The queue's depth for /metrics, polled: a scrape must not cost a queue call."""
    while True:
        try:
            runtime.metrics.queue_depth(await runtime.queue.depth())
        except QueueError as error:
            log.warning("Scan queue depth unavailable (%s)", error)
        await asyncio.sleep(runtime.settings.SCAN_QUEUE_DEPTH_POLL_SECONDS)


async def _local_queue_key(settings: Settings) -> list[bytes]:
    return [await asyncio.to_thread(local_queue_key, settings.LOCAL_STORE_PATH)]


def _warn_retired(environ: Mapping[str, str]) -> None:
    for name in RETIRED_SETTINGS:
        if name in environ:
            log.warning("%s is no longer used (the scan queue replaced it) and is ignored", name)


async def _stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with suppress(asyncio.CancelledError):
        await task


# app.config holds Quart's own keys and the notification-utils names dd_compat reads, as the
# Flask original's config did; dd-api itself reads the typed Settings. Never SERVER_NAME: it
# only names the host of direct_file_url, and in Quart's config it would turn requests to any
# other host (health checks) into 404s.
QUART_KEYS = ("DEBUG", "MAX_CONTENT_LENGTH", "BACKGROUND_TASK_SHUTDOWN_TIMEOUT")
COMPAT_KEYS = (
    "NOTIFY_APP_NAME",
    "NOTIFY_LOG_LEVEL",
    "NOTIFY_TRACE_ID_HEADER",
    "NOTIFY_SPAN_ID_HEADER",
    "NOTIFY_PARENT_SPAN_ID_HEADER",
    "CHECK_PROXY_HEADER",
    "ROUTE_SECRET_KEY_1",
    "ROUTE_SECRET_KEY_2",
)


def _configure(app: Quart, settings: Settings) -> None:
    for name in QUART_KEYS + COMPAT_KEYS:
        app.config[name] = getattr(settings, name)
    # Quart's own name for it; a slow-loris body is cut off after this many seconds
    app.config["BODY_TIMEOUT"] = settings.BODY_TIMEOUT_SECONDS


async def _engine(settings: Settings, http: httpx.AsyncClient, metrics: Metrics) -> ScanEngine:
    def count(kind: str) -> None:
        metrics.scan_errors.labels(kind).inc()

    if settings.SCANNER == "clamd":
        clamd = ClamdClient(
            settings.CLAMD_ADDRESS,
            attempt_timeout=settings.SCAN_ATTEMPT_TIMEOUT_SECONDS,
            on_failure=count,
        )
        try:
            async with asyncio.timeout(5):
                await clamd.version()  # read once, for the av-scanner tag
        except (OSError, TimeoutError, ClamdError) as error:
            # scans retry until clamd answers; the tag names it "clamd" meanwhile
            log.warning("clamd at %s not answering yet (%s)", settings.CLAMD_ADDRESS, error)
        log.info("Scanning with %s at %s", clamd.scanner_name, settings.CLAMD_ADDRESS)
        return clamd
    log.info("Scanning with scan-files at %s", settings.ANTIVIRUS_API_HOST)
    return ScanClient(
        http,
        host=settings.ANTIVIRUS_API_HOST,
        api_key=settings.ANTIVIRUS_API_KEY,
        attempt_timeout=settings.SCAN_ATTEMPT_TIMEOUT_SECONDS,
        on_failure=count,
    )


def _s3_route(settings: Settings, engine: ScanEngine, store: DocumentStore) -> S3Route | None:
    # scan-files' own route for what its Lambda cannot receive; clamd has no such cap
    client = engine if isinstance(engine, ScanClient) else None
    if client is None or not settings.scan_files_s3_route or not isinstance(store, S3Store):
        return None
    return S3Route(
        client,
        store,
        bucket=settings.scan_copies_bucket,
        aws_account=settings.SCAN_FILES_AWS_ACCOUNT,
        sns_arn=settings.SCAN_FILES_SNS_ARN,
        max_bytes=settings.SCAN_FILES_MAX_BYTES,
        poll_seconds=settings.SCAN_ATTEMPT_TIMEOUT_SECONDS,
    )


def _queue(settings: Settings) -> ScanQueue:
    if settings.SCAN_QUEUE_URL:
        return SqsQueue(settings.SCAN_QUEUE_URL)
    return LocalQueue(
        settings.LOCAL_STORE_PATH / LOCAL_QUEUE_FILE, max_receives=settings.SCAN_QUEUE_MAX_RECEIVES
    )


def _store(settings: Settings) -> DocumentStore:
    if settings.DOCUMENT_STORE == "s3":
        return S3Store(
            settings.DOCUMENTS_BUCKET,
            max_pool_connections=settings.S3_MAX_POOL_CONNECTIONS,
            # the view lets no more downloads than this run at once
            download_pool_connections=settings.DOWNLOAD_CONCURRENCY,
            connect_timeout=settings.S3_CONNECT_TIMEOUT_SECONDS,
            read_timeout=settings.S3_READ_TIMEOUT_SECONDS,
        )
    return LocalStore(settings.LOCAL_STORE_PATH)
