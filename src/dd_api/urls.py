"""The two links an upload answers with, in the formats notification-api stores."""

from __future__ import annotations

from urllib.parse import quote, urlencode
from uuid import UUID

from dd_compat.base64_ids import bytes_to_base64, uuid_to_base64
from quart import request, url_for


def direct_file_url(
    service_id: UUID,
    document_id: UUID,
    key: bytes | None,
    sending_method: str | None,
    server_name: str | None,
) -> str:
    """The ``/services/...`` link, on the host notification-api called us on."""
    path = url_for(
        "documents.download_document",
        service_id=service_id,
        document_id=document_id,
        key="" if key is None else bytes_to_base64(key),
        sending_method=sending_method,
    )
    return f"{request.scheme}://{server_name or request.host}{path}"


def short_url(
    service_id: UUID,
    document_id: UUID,
    key: bytes | None,
    filename: str | None,
    sending_method: str | None,
    *,
    scheme: str,
    hostname: str,
) -> str:
    """The public ``/d/...`` link. It names the sending method when it is not ``link``,
    so the link opens attachments too (the original's always assumed ``link``)."""
    params = {}
    if key is not None:
        params["key"] = bytes_to_base64(key)
    if filename:
        params["filename"] = filename
    if sending_method not in (None, "link"):
        params["sending_method"] = sending_method
    url = f"{scheme}://{hostname}/d/{uuid_to_base64(service_id)}/{uuid_to_base64(document_id)}"
    return f"{url}?{urlencode(params, quote_via=quote)}" if params else url
