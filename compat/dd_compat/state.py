"""Per-app state of dd_compat, kept in ``app.extensions["dd_compat"]``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Final, Literal, Protocol
from uuid import UUID

import flask

if TYPE_CHECKING:
    from dd_compat.logging import CompatHandler

__all__ = [
    "BUILTIN",
    "EXTENSION_KEY",
    "NOTIFICATIONS_UTILS",
    "Base64Helpers",
    "CompatState",
    "Mode",
    "get_state",
]

EXTENSION_KEY: Final = "dd_compat"
BUILTIN: Final = "builtin"
NOTIFICATIONS_UTILS: Final = "notifications_utils"
Mode = Literal["builtin", "notifications_utils"]


class Base64Helpers(Protocol):
    """What ``dd_compat.base64_ids`` and ``notifications_utils.base64_uuid`` both provide."""

    def base64_to_bytes(self, key: str, /) -> bytes: ...
    def bytes_to_base64(self, value: bytes, /) -> str: ...
    def base64_to_uuid(self, value: str, /) -> UUID: ...
    def uuid_to_base64(self, value: UUID | str, /) -> str: ...


@dataclass(slots=True)
class CompatState:
    mode: Mode
    #: Flask app sharing the Quart app's config, used only to push Flask contexts in the bridge.
    shadow: flask.Flask
    #: The four base64 helpers (``dd_compat.base64_ids`` or ``notifications_utils.base64_uuid``).
    base64: Base64Helpers
    #: ``notifications_utils.request_helper`` in notifications_utils mode, else ``None``.
    request_helper: ModuleType | None = None
    #: ``notifications_utils.logging`` when it could be imported, else ``None``.
    nu_logging: ModuleType | None = None
    #: Why ``notifications_utils.logging`` is not used, if it is not.
    nu_logging_error: str | None = None
    #: dd_compat's handler on the app's logger.
    log_handler: CompatHandler | None = None
    #: Requests the proxy-header check lets through (load balancer health checks).
    proxy_check_exempt: Callable[[], bool] | None = None


def get_state(app: object) -> CompatState:
    extensions = getattr(app, "extensions", None)
    state = extensions.get(EXTENSION_KEY) if isinstance(extensions, dict) else None
    if not isinstance(state, CompatState):
        raise RuntimeError("dd_compat.init_app(app) has not been called for this app")
    return state
