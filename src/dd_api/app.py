"""The application factory."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from contextlib import AsyncExitStack
from dataclasses import fields

import httpx
from quart import Quart

from . import errors
from .config import Settings
from .converters import Base64UUIDConverter
from .runtime import Runtime
from .scanning.client import ScanClient
from .scanning.scanner import Scanner
from .store import DocumentStore
from .store.local import LocalStore
from .store.s3 import S3Store
from .views import delete, download, status, upload, verdict

log = logging.getLogger(__name__)


def create_app(environ: Mapping[str, str] | None = None) -> Quart:
    """Build the app from ``environ`` (default: ``os.environ``); raises ConfigError when invalid."""
    settings = Settings.from_env(environ)
    app = Quart("dd_api", static_folder=None)
    _configure(app, settings)
    app.url_map.converters["base64_uuid"] = Base64UUIDConverter
    errors.register(app)
    for view in (status, upload, download, delete, verdict):
        app.register_blueprint(view.blueprint)

    runtime = Runtime(settings=settings, store=_store(settings))
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
        )
        runtime.scanner = Scanner(client, runtime.store, concurrency=settings.SCAN_CONCURRENCY)

    @app.after_serving
    async def close_dependencies() -> None:
        # Quart runs this after background scans finished or were cancelled.
        await stack.aclose()

    return app


def _configure(app: Quart, settings: Settings) -> None:
    for field in fields(settings):
        # SERVER_NAME only names the host of direct_file_url: in Quart's config it
        # would turn requests to any other host (health checks) into 404s.
        if field.name != "SERVER_NAME":
            app.config[field.name] = getattr(settings, field.name)


def _store(settings: Settings) -> DocumentStore:
    if settings.DOCUMENT_STORE == "s3":
        return S3Store(
            settings.DOCUMENTS_BUCKET, max_pool_connections=settings.S3_MAX_POOL_CONNECTIONS
        )
    return LocalStore(settings.LOCAL_STORE_PATH)
