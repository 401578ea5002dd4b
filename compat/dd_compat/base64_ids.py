"""URL-safe, unpadded base64 for UUIDs and document keys.

Same behaviour as ``notifications_utils.base64_uuid``: encoding strips the ``=``
padding, decoding appends ``==`` and is lenient about characters outside the
alphabet, as the links already sent to the public depend on it.
"""

from base64 import urlsafe_b64decode, urlsafe_b64encode
from uuid import UUID

__all__ = ["base64_to_bytes", "base64_to_uuid", "bytes_to_base64", "uuid_to_base64"]


def base64_to_bytes(key: str) -> bytes:
    return urlsafe_b64decode(key + "==")


def bytes_to_base64(value: bytes) -> str:
    return urlsafe_b64encode(value).decode("ascii").rstrip("=")


def base64_to_uuid(value: str) -> UUID:
    return UUID(bytes=urlsafe_b64decode(value.encode("ascii") + b"=="))


def uuid_to_base64(value: UUID | str) -> str:
    if not isinstance(value, UUID):
        value = UUID(value)
    return bytes_to_base64(value.bytes)
