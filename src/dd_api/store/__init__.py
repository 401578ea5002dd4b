"""Document storage: one interface, an S3 and an encrypted local implementation."""

from .base import (
    DocumentDamaged,
    DocumentKeyMismatch,
    DocumentNotFound,
    DocumentStore,
    Location,
    StoredDocument,
    StoreError,
)

__all__ = [
    "DocumentDamaged",
    "DocumentKeyMismatch",
    "DocumentNotFound",
    "DocumentStore",
    "Location",
    "StoreError",
    "StoredDocument",
]
