"""The ASGI entry point: ``hypercorn -c hypercorn.toml dd_api.asgi:app``."""

from .app import create_app
from .config import ConfigError

try:
    app = create_app()
except ConfigError as error:
    raise SystemExit(f"dd-api: configuration error: {error}") from None
