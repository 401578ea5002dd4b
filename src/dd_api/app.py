"""The application factory."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Mapping
from contextlib import AsyncExitStack, suppress
from dataclasses import fields
from uuid import uuid4

import dd_compat
import httpx
from quart import Quart

from . import errors
from .config import Settings
from .converters import Base64UUIDConverter
from .metrics import Metrics
from .runtime import Runtime
from .scanning.client import ScanClient
from .scanning.recovery import Sweeper
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
    dd_compat.init_app(app)
    app.url_map.converters["base64_uuid"] = Base64UUIDConverter
    # a doubled slash is an unknown URL (JSON 404), not a redirect built from the Host header
    app.url_map.merge_slashes = False
    errors.register(app)
    for view in (status, upload, download, delete, verdict, openapi):
        app.register_blueprint(view.blueprint)

    metrics = Metrics()
    metrics.install(app)
    runtime = Runtime(settings=settings, store=_store(settings), metrics=metrics)
    app.extensions["dd_api"] = runtime

    stack = AsyncExitStack()

    @app.before_serving
    async def open_dependencies() -> None:
        log.info("Starting with config: %s", settings.masked())
        await runtime.store.open()
        stack.push_async_callback(runtime.store.close)
        http = await stack.enter_async_context(
            httpx.AsyncClient(limits=httpx.Limits(max_connections=settings.SCAN_CONCURRENCY * 2))
        )
        client = ScanClient(
            http,
            host=settings.ANTIVIRUS_API_HOST,
            api_key=settings.ANTIVIRUS_API_KEY,
            deadline=settings.SCAN_DEADLINE_SECONDS,
            attempt_timeout=settings.SCAN_ATTEMPT_TIMEOUT_SECONDS,
            on_failure=lambda kind: metrics.scan_errors.labels(kind).inc(),
        )
        runtime.scan_client = client
        scanner = Scanner(
            client,
            runtime.store,
            concurrency=settings.SCAN_CONCURRENCY,
            owner=f"{socket.gethostname()}:{os.getpid()}:{uuid4().hex[:8]}",
            lease_seconds=settings.SCAN_LEASE_SECONDS,
            on_finished=metrics.scan_finished,
        )
        metrics.watch(scanner)
        runtime.scanner = scanner
        sweeper = Sweeper(
            runtime.store,
            scanner,
            lambda job: app.add_background_task(scanner.run, job),
            grace_seconds=settings.PENDING_SCAN_GRACE_SECONDS,
            max_age_seconds=settings.PENDING_SCAN_MAX_AGE_SECONDS,
            lease_seconds=settings.SCAN_LEASE_SECONDS,
        )
        runtime.sweeper = sweeper
        sweeping = asyncio.create_task(
            sweeper.run(settings.PENDING_SCAN_SWEEP_INTERVAL_SECONDS, app.shutdown_event)
        )
        stack.push_async_callback(_stop, sweeping)

    @app.after_serving
    async def close_dependencies() -> None:
        # Quart runs this after background scans finished or were cancelled.
        await stack.aclose()

    return app


async def _stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with suppress(asyncio.CancelledError):
        await task


def _configure(app: Quart, settings: Settings) -> None:
    for field in fields(settings):
        # SERVER_NAME only names the host of direct_file_url: in Quart's config it
        # would turn requests to any other host (health checks) into 404s.
        if field.name != "SERVER_NAME":
            app.config[field.name] = getattr(settings, field.name)
    # Quart's own name for it; a slow-loris body is cut off after this many seconds
    app.config["BODY_TIMEOUT"] = settings.BODY_TIMEOUT_SECONDS


def _store(settings: Settings) -> DocumentStore:
    if settings.DOCUMENT_STORE == "s3":
        return S3Store(
            settings.DOCUMENTS_BUCKET, max_pool_connections=settings.S3_MAX_POOL_CONNECTIONS
        )
    return LocalStore(settings.LOCAL_STORE_PATH)
