"""Document storage: one interface, an S3 and an encrypted local implementation."""

from .base import (
    DocumentKeyMismatch,
    DocumentNotFound,
    DocumentStore,
    Location,
    PendingCopy,
    StoredDocument,
    StoreError,
)

__all__ = [
    "DocumentKeyMismatch",
    "DocumentNotFound",
    "DocumentStore",
    "Location",
    "PendingCopy",
    "StoreError",
    "StoredDocument",
]
