"""Mode selection: use ``notifications_utils`` when it can be imported, else built-ins.

``notifications_utils`` (cds-snc/notification-utils) pins Flask 2.3.3, so it is not a dependency
of dd-api; it can be installed next to it with ``pip install --no-deps``. Only the modules the
document download API used are imported: ``base64_uuid``, ``request_helper`` and ``logging``
(never ``template``/``field``/``formatters``, which fail on Flask 3).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType

__all__ = ["NotificationsUtils", "load_notifications_utils", "notifications_utils_available"]

_REQUIRED = ("notifications_utils.base64_uuid", "notifications_utils.request_helper")


@dataclass(frozen=True, slots=True)
class NotificationsUtils:
    base64_uuid: ModuleType
    request_helper: ModuleType
    #: ``None`` when ``notifications_utils.logging`` cannot be imported (it needs
    #: python-json-logger, which the ``--no-deps`` install does not bring).
    logging: ModuleType | None
    logging_error: str | None


def notifications_utils_available() -> bool:
    """Whether the modules compat needs from ``notifications_utils`` can be imported."""
    try:
        for name in _REQUIRED:
            importlib.import_module(name)
    except ImportError:
        return False
    return True


def load_notifications_utils() -> NotificationsUtils:
    """Import the helpers; raises ImportError if ``base64_uuid``/``request_helper`` are missing."""
    try:
        base64_uuid, request_helper = (importlib.import_module(name) for name in _REQUIRED)
    except ImportError as error:
        raise ImportError(
            "notifications_utils mode was requested but notifications_utils cannot be imported"
            f" ({error}); install it with pip install --no-deps (see the README)"
        ) from error
    try:
        nu_logging: ModuleType | None = importlib.import_module("notifications_utils.logging")
        logging_error = None
    except ImportError as error:
        nu_logging, logging_error = None, f"{type(error).__name__}: {error}"
    return NotificationsUtils(base64_uuid, request_helper, nu_logging, logging_error)
