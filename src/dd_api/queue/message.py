"""The scan message: what an upload tells the scanner, and its codec.

A message carries the document's own key (its SSE-C key) because the scanner must read the
document. The queue is not trusted with it: the key travels encrypted with AES-256-GCM under
SCAN_QUEUE_KEY, bound to the document id so that a key moved into another document's message
does not open. Previous queue keys may be listed for decryption while a rotation drains the
messages sent under them.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any
from uuid import UUID

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

VERSION = 1
KEY_SIZE = 32
_NONCE_SIZE = 12
_TAG_SIZE = 16
_WRAPPED_SIZE = _NONCE_SIZE + KEY_SIZE + _TAG_SIZE


@dataclass(frozen=True)
class ScanMessage:
    service_id: UUID
    document_id: UUID
    sending_method: str | None
    filename: str
    mimetype: str
    size: int
    trace_id: str
    created: float  # epoch seconds of the upload
    # the document's 32-byte SSE-C key, or None for documents without one; never in repr()
    key: bytes | None = field(repr=False)

    @property
    def log_extra(self) -> dict[str, str]:
        return {"service_id": str(self.service_id), "document_id": str(self.document_id)}


class MessageError(Exception):
    """A scan message that cannot be used. The text never holds the body or key material."""


class MalformedMessage(MessageError):
    """Not a scan message this version understands: leave it for the dead-letter queue."""


class UndecryptableKey(MessageError):
    """The message is readable but no configured queue key opens the document key.

    ``message`` holds everything else the body said (with ``key=None``), so the consumer can
    record an error verdict for that document."""

    def __init__(self, message: ScanMessage) -> None:
        super().__init__("no configured queue key opens the document key")
        self.message = message


class MessageCodec:
    def __init__(self, keys: Sequence[bytes]) -> None:
        if not keys:
            raise ValueError("at least one queue key is needed")
        for key in keys:
            if len(key) != KEY_SIZE:
                raise ValueError(f"a queue key must be {KEY_SIZE} bytes")
        self._current = AESGCM(keys[0])
        self._all = [AESGCM(key) for key in keys]

    def encode(self, message: ScanMessage) -> str:
        if message.key is not None and len(message.key) != KEY_SIZE:
            raise ValueError(f"a document key must be {KEY_SIZE} bytes")
        body = {
            "v": VERSION,
            "service_id": str(message.service_id),
            "document_id": str(message.document_id),
            "sending_method": message.sending_method,
            "filename": message.filename,
            "mimetype": message.mimetype,
            "size": message.size,
            "trace_id": message.trace_id,
            "created": message.created,
            "key": None if message.key is None else self._wrap(message.key, message.document_id),
        }
        return json.dumps(body, separators=(",", ":"), allow_nan=False)

    def decode(self, body: str) -> ScanMessage:
        try:
            data = json.loads(body, parse_constant=_refuse_constant)
        except (ValueError, RecursionError, TypeError):  # JSONDecodeError is a ValueError
            raise MalformedMessage("scan message is not JSON") from None
        if not isinstance(data, dict):
            raise MalformedMessage("scan message is not a JSON object")
        if type(data.get("v")) is not int or data["v"] != VERSION:
            raise MalformedMessage("scan message has an unsupported version")
        wrapped = _field(data, "key", str, optional=True)
        message = ScanMessage(
            service_id=_uuid(data, "service_id"),
            document_id=_uuid(data, "document_id"),
            sending_method=_field(data, "sending_method", str, optional=True),
            filename=_field(data, "filename", str),
            mimetype=_field(data, "mimetype", str),
            size=_size(data),
            trace_id=_field(data, "trace_id", str),
            created=_created(data),
            key=None,
        )
        if wrapped is None:
            return message
        return replace(message, key=self._unwrap(wrapped, message))

    def _wrap(self, key: bytes, document_id: UUID) -> str:
        nonce = secrets.token_bytes(_NONCE_SIZE)
        sealed = self._current.encrypt(nonce, key, document_id.bytes)
        return base64.b64encode(nonce + sealed).decode("ascii")

    def _unwrap(self, wrapped: str, message: ScanMessage) -> bytes:
        try:
            raw = base64.b64decode(wrapped, validate=True)
        except (binascii.Error, ValueError):
            raise UndecryptableKey(message) from None
        if len(raw) != _WRAPPED_SIZE:
            raise UndecryptableKey(message)
        nonce, sealed = raw[:_NONCE_SIZE], raw[_NONCE_SIZE:]
        for cipher in self._all:
            try:
                return cipher.decrypt(nonce, sealed, message.document_id.bytes)
            except InvalidTag:
                continue
        raise UndecryptableKey(message)


def parse_queue_key(raw: str) -> bytes:
    """The 32-byte key in ``raw``: base64, standard or URL-safe, padding optional."""
    # The messages never repeat the value: it is a secret.
    text = raw.strip().rstrip("=")
    if not text:
        raise ValueError("queue key is empty")
    text = text.replace("-", "+").replace("_", "/")
    if len(text) % 4 == 1:
        raise ValueError("queue key is not valid base64")
    try:
        key = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("queue key is not valid base64") from None
    if len(key) != KEY_SIZE:
        raise ValueError(
            f"queue key must be {KEY_SIZE} bytes ({KEY_SIZE * 8} bits), it is {len(key)} bytes"
        )
    return key


def new_queue_key() -> str:
    """A fresh random queue key, base64-encoded (what parse_queue_key reads)."""
    return base64.b64encode(secrets.token_bytes(KEY_SIZE)).decode("ascii")


def _refuse_constant(name: str) -> Any:
    raise ValueError("NaN and Infinity are not JSON")


def _field(data: dict[str, Any], name: str, kind: type, *, optional: bool = False) -> Any:
    """The field, of type ``kind``; ``optional`` allows null, but the field must be there."""
    if name not in data:
        raise MalformedMessage(f"scan message field {name!r} is missing or invalid")
    value = data[name]
    if value is None and optional:
        return None
    if not isinstance(value, kind):
        raise MalformedMessage(f"scan message field {name!r} is missing or invalid")
    return value


def _uuid(data: dict[str, Any], name: str) -> UUID:
    try:
        return UUID(_field(data, name, str))
    except ValueError:
        raise MalformedMessage(f"scan message field {name!r} is missing or invalid") from None


def _size(data: dict[str, Any]) -> int:
    size = data.get("size")
    if type(size) is not int or size < 0:
        raise MalformedMessage("scan message field 'size' is missing or invalid")
    return size


def _created(data: dict[str, Any]) -> float:
    created = data.get("created")
    if not isinstance(created, int | float) or isinstance(created, bool):
        raise MalformedMessage("scan message field 'created' is missing or invalid")
    if not math.isfinite(created):
        raise MalformedMessage("scan message field 'created' is missing or invalid")
    return float(created)
