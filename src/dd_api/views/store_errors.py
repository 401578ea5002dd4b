"""Store failures as the API reports them."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from ..errors import ApiError
from ..store import DocumentKeyMismatch, DocumentNotFound, Location, StoreError
from .params import INVALID_KEY

log = logging.getLogger(__name__)

NOT_FOUND = "Document not found"
UNAVAILABLE = "Document storage is unavailable, try again later"


@contextmanager
def store_errors(location: Location, action: str) -> Iterator[None]:
    """404 for a missing document, 400 for a key that does not open it, 503 for the rest
    (logged without the store's details ever reaching the caller)."""
    try:
        yield
    except DocumentNotFound:
        raise ApiError(404, NOT_FOUND) from None
    except DocumentKeyMismatch:
        log.info("%s refused: the key does not open the document", action, extra=location.log_extra)
        raise ApiError(400, INVALID_KEY) from None
    except StoreError as error:
        log.error("%s failed: %s", action, error, extra=location.log_extra)
        raise ApiError(503, UNAVAILABLE) from None
