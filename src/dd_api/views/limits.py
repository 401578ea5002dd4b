"""Body limits for the routes that need only a few hundred bytes."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import wraps

from quart import request

from ..errors import ApiError

# scan-verdict sends one form field, delete a key and a sending method
SMALL_BODY = 8 * 1024


def small_body[**P, R](view: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """Refuse, before reading it, a body larger than ``SMALL_BODY`` or of unknown length.

    MAX_CONTENT_LENGTH (sized for documents) would let 10 MiB of form fields or JSON be
    parsed on the event loop; a chunked body is not checked against it at all.
    """

    @wraps(view)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        length = request.content_length
        if length is None and "Transfer-Encoding" in request.headers:
            raise ApiError(411, "Content-Length header is required")
        if length is not None and length > SMALL_BODY:
            raise ApiError(413, f"Request body must be at most {SMALL_BODY} bytes")
        return await view(*args, **kwargs)

    return wrapper
