"""The proxy-header check: ``X-Custom-Forwarder`` must match ``ROUTE_SECRET_KEY_1`` or ``_2``.

Enforced only when ``CHECK_PROXY_HEADER`` is true. A failure is logged (the reason, never the
header value) and answered with 403 JSON. In notifications_utils mode the library's
``request_helper.check_proxy_header_before_request`` decides, through the bridge; its
``abort(403)`` is turned into the same JSON response.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final

from quart import Response, current_app, request
from werkzeug.datastructures import Headers
from werkzeug.exceptions import HTTPException

from dd_compat.bridge import call_flask_bound
from dd_compat.helpers import as_bool, json_error, matching_secret
from dd_compat.state import CompatState

__all__ = [
    "FORBIDDEN_MESSAGE",
    "PROXY_HEADER",
    "check_proxy_header",
    "check_proxy_header_secret",
]

PROXY_HEADER: Final = "X-Custom-Forwarder"
FORBIDDEN_MESSAGE: Final = "Forbidden; missing or invalid proxy header"


def check_proxy_header_secret(
    headers: Headers | Mapping[str, str],
    secrets: Sequence[str | None],
    header: str = PROXY_HEADER,
) -> tuple[bool, str]:
    """Same outcomes and messages as ``notifications_utils.request_helper``; constant-time."""
    if header not in headers:
        return False, "Header missing"
    presented = headers.get(header)
    if not presented:
        return False, "Header exists but is empty"
    if not any(secrets):
        return False, "Secrets are not configured"
    index = matching_secret(presented, secrets)
    if index is not None:
        return True, f"Key used: {index + 1}"
    return False, "Header didn't match any keys"


async def check_proxy_header(state: CompatState) -> Response | None:
    """before_request step: ``None`` to go on, or the 403 response."""
    config = current_app.config
    if not as_bool(config.get("CHECK_PROXY_HEADER", False)):
        return None
    if state.proxy_check_exempt is not None and state.proxy_check_exempt():
        return None
    if state.request_helper is not None:
        try:
            await call_flask_bound(state.request_helper.check_proxy_header_before_request)
        except HTTPException as error:
            if error.code == 403:
                return json_error(403, FORBIDDEN_MESSAGE)
            raise
        return None
    secrets = [config.get("ROUTE_SECRET_KEY_1"), config.get("ROUTE_SECRET_KEY_2")]
    ok, reason = check_proxy_header_secret(request.headers, secrets)
    if ok:
        return None
    current_app.logger.warning(reason)
    return json_error(403, FORBIDDEN_MESSAGE)
