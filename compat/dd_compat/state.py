"""Per-app state of dd_compat, kept in ``app.extensions["dd_compat"]``."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Literal

import flask

__all__ = ["BUILTIN", "EXTENSION_KEY", "NOTIFICATIONS_UTILS", "CompatState", "Mode", "get_state"]

EXTENSION_KEY = "dd_compat"
BUILTIN = "builtin"
NOTIFICATIONS_UTILS = "notifications_utils"
Mode = Literal["builtin", "notifications_utils"]


@dataclass(slots=True)
class CompatState:
    mode: Mode
    #: Flask app sharing the Quart app's config, used only to push Flask contexts in the bridge.
    shadow: flask.Flask
    #: Module providing the four base64 helpers (``dd_compat.base64_ids`` or
    #: ``notifications_utils.base64_uuid``).
    base64: ModuleType
    #: ``notifications_utils.request_helper`` in notifications_utils mode, else ``None``.
    request_helper: ModuleType | None = None
    #: ``notifications_utils.logging`` when it could be imported, else ``None``.
    nu_logging: ModuleType | None = None
    #: Why ``notifications_utils.logging`` is not used, if it is not.
    nu_logging_error: str | None = None
    log_handler: logging.Handler | None = None
    #: Requests the proxy-header check lets through (load balancer health checks).
    proxy_check_exempt: Callable[[], bool] | None = None


def get_state(app: Any) -> CompatState:
    try:
        return app.extensions[EXTENSION_KEY]
    except KeyError:
        raise RuntimeError("dd_compat.init_app(app) has not been called for this app") from None
