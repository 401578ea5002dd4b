"""The application factory."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import fields

from quart import Quart

from . import errors
from .config import Settings
from .converters import Base64UUIDConverter
from .runtime import Runtime
from .store import DocumentStore
from .store.local import LocalStore
from .store.s3 import S3Store
from .views import delete, download, status, upload

log = logging.getLogger(__name__)


def create_app(environ: Mapping[str, str] | None = None) -> Quart:
    """Build the app from ``environ`` (default: ``os.environ``); raises ConfigError when invalid."""
    settings = Settings.from_env(environ)
    app = Quart("dd_api", static_folder=None)
    _configure(app, settings)
    app.url_map.converters["base64_uuid"] = Base64UUIDConverter
    errors.register(app)
    for blueprint in (status.blueprint, upload.blueprint, download.blueprint, delete.blueprint):
        app.register_blueprint(blueprint)

    runtime = Runtime(settings=settings, store=_store(settings))
    app.extensions["dd_api"] = runtime

    @app.before_serving
    async def open_dependencies() -> None:
        log.info("Starting with config: %s", settings.masked())
        await runtime.store.open()

    @app.after_serving
    async def close_dependencies() -> None:
        await runtime.store.close()

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
