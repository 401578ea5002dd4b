"""The ``base64_uuid`` URL converter of the short ``/d/`` links."""

from __future__ import annotations

from uuid import UUID

from dd_compat.base64_ids import base64_to_uuid, uuid_to_base64
from werkzeug.routing import BaseConverter, ValidationError


class Base64UUIDConverter(BaseConverter):
    def to_python(self, value: str) -> UUID:
        try:
            return base64_to_uuid(value)
        except Exception:  # any undecodable segment is simply not a document: 404
            raise ValidationError() from None

    def to_url(self, value: UUID) -> str:
        return uuid_to_base64(value)
