"""Bearer-token check for the routes only notification-api may call."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import wraps

from dd_compat import matching_secret
from quart import request

from .errors import ApiError
from .runtime import runtime


def require_bearer[**P, R](view: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """Reject the request before its body is read unless it carries a known token."""

    @wraps(view)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        # the scheme is case-insensitive (RFC 9110 11.1); the token is not
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise ApiError(401, "Unauthorized; bearer token must be provided")
        # compared with every token, so the time taken does not reveal which one matched
        if matching_secret(token, runtime().settings.AUTH_TOKENS) is None:
            # The presented token is never echoed (the original put it in the 403 page).
            raise ApiError(403, "Forbidden; invalid bearer token provided")
        return await view(*args, **kwargs)

    return wrapper
