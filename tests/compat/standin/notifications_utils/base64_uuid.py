"""Stand-in for ``notifications_utils.base64_uuid`` (pure functions)."""

from base64 import urlsafe_b64decode, urlsafe_b64encode
from uuid import UUID


def base64_to_bytes(key):
    # lenient: padding is appended, characters outside the alphabet are discarded
    return urlsafe_b64decode(key + "==")


def bytes_to_base64(bytes):
    return urlsafe_b64encode(bytes).decode("ascii").rstrip("=")


def base64_to_uuid(value):
    return UUID(bytes=urlsafe_b64decode(value.encode("ascii") + b"=="))


def uuid_to_base64(value):
    if not isinstance(value, UUID):
        value = UUID(value)
    return bytes_to_base64(value.bytes)
