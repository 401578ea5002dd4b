"""The base64 id helpers, from the implementation chosen for the current app.

Inside an app context of an app set up with ``dd_compat.init_app`` these call
``notifications_utils.base64_uuid`` in notifications_utils mode; otherwise (built-in mode, or
no app context) ``dd_compat.base64_ids``. Both behave the same (contract §2.3).
"""

from __future__ import annotations

from uuid import UUID

from quart import current_app, has_app_context

from dd_compat import base64_ids
from dd_compat.state import EXTENSION_KEY, Base64Helpers, CompatState

__all__ = ["base64_to_bytes", "base64_to_uuid", "bytes_to_base64", "uuid_to_base64"]


def _impl() -> Base64Helpers:
    if has_app_context():
        state = current_app.extensions.get(EXTENSION_KEY)
        if isinstance(state, CompatState):
            return state.base64
    return base64_ids


def base64_to_bytes(key: str) -> bytes:
    """Lenient URL-safe decode (``key + "=="``); ValueError on non-ASCII or bad length."""
    return _impl().base64_to_bytes(key)


def bytes_to_base64(value: bytes) -> str:
    """URL-safe encode with the trailing ``=`` stripped."""
    return _impl().bytes_to_base64(value)


def base64_to_uuid(value: str) -> UUID:
    """Decode a 22-char id to a UUID; ValueError on bad input."""
    return _impl().base64_to_uuid(value)


def uuid_to_base64(value: UUID | str) -> str:
    """Encode a UUID (or UUID string) as 22 URL-safe chars."""
    return _impl().uuid_to_base64(value)
