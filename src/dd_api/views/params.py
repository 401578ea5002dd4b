"""Reading a document key from a request, with the original's error messages."""

from __future__ import annotations

from dd_compat.base64_ids import base64_to_bytes

from ..errors import ApiError
from ..store import Location

MISSING_KEY = "Missing decryption key"
INVALID_KEY = "Invalid decryption key"
KEY_BYTES = 32


def document_key(
    location: Location, raw: str | None, *, missing: str = MISSING_KEY
) -> bytes | None:
    """The 32-byte key from its base64 form; ``None`` for documents that have none."""
    if not location.needs_key:
        return None
    if not raw:
        raise ApiError(400, missing)
    try:
        key = base64_to_bytes(raw)
    except ValueError:
        raise ApiError(400, INVALID_KEY) from None
    if len(key) != KEY_BYTES:
        raise ApiError(400, INVALID_KEY)
    return key
