"""Every error leaves the service as ``{"error": "..."}``, never an HTML page or a stack trace."""

from __future__ import annotations

import logging

from dd_compat import json_error
from quart import Quart, Response, request
from werkzeug.exceptions import HTTPException, MethodNotAllowed, RequestEntityTooLarge

from .runtime import runtime

log = logging.getLogger(__name__)

TOO_LARGE = "Uploaded document exceeds file size limit"
FORM_TOO_LARGE = "Upload form has too many parts, or a form field that is too large"


class ApiError(Exception):
    """An expected failure with a message that is safe to show the caller."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def register(app: Quart) -> None:
    app.after_request(_close_unread_bodies)
    app.register_error_handler(ApiError, _api_error)
    app.register_error_handler(RequestEntityTooLarge, _too_large)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected)


async def _close_unread_bodies(response: Response) -> Response:
    # An error may be answered before the request body arrived (auth, 411, 413): the server
    # then has to drop the connection, so say so rather than let a keep-alive client send
    # its next request into a closed socket. A body that did arrive keeps the connection.
    headers = request.headers
    has_body = request.content_length or "Transfer-Encoding" in headers
    unread = has_body and not getattr(request, "body_received", False)
    # Both framings at once is how requests are smuggled (RFC 9112 6.1): never reuse it.
    ambiguous = "Transfer-Encoding" in headers and "Content-Length" in headers
    if (response.status_code >= 400 and unread) or ambiguous:
        response.headers["Connection"] = "close"
    return response


async def _api_error(error: ApiError) -> Response:
    return json_error(error.status, error.message)


async def _too_large(error: RequestEntityTooLarge) -> Response:
    # The form parser raises the same 413 for too many parts and for an oversized field; a
    # body within MAX_CONTENT_LENGTH cannot be what was too large.
    length, limit = request.content_length, runtime().settings.MAX_CONTENT_LENGTH
    if length is not None and length <= limit:
        return json_error(413, FORM_TOO_LARGE)
    return json_error(413, TOO_LARGE)


async def _http_error(error: HTTPException) -> Response:
    response = json_error(error.code or 500, error.name)
    if isinstance(error, MethodNotAllowed) and error.valid_methods:
        response.headers["Allow"] = ", ".join(error.valid_methods)
    return response


async def _unexpected(error: Exception) -> Response:
    # The exception text is logged, never sent: it may name buckets, paths or hosts.
    log.error("Unhandled error: %s", type(error).__name__, exc_info=error)
    return json_error(500, "Internal server error")
