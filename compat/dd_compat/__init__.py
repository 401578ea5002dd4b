"""Compatibility layer: the notifications_utils helpers the document download API used, for
Quart.

``init_app(app)`` sets the config defaults, picks the mode (``notifications_utils`` when it
can be imported, else built-in implementations with the same observable behaviour), configures
logging (formatted and written in a listener thread, started here and before serving, stopped
after serving: see ``dd_compat.logging``) and registers the request hooks: trace ids and the
proxy-header check before each request, ``X-B3-TraceId``/``X-B3-SpanId`` on every response.

It is also the one home of helpers dd_api shares with it: :func:`parse_bool`/:func:`as_bool`,
:func:`json_error`, :func:`matching_secret` and the trace header names
(:data:`TRACE_ID_HEADER`, :data:`SPAN_ID_HEADER`, :data:`PARENT_SPAN_ID_HEADER`).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging as std_logging  # dd_compat.logging would shadow the name
from collections.abc import Callable
from typing import TYPE_CHECKING

import flask
from quart import current_app, request

from dd_compat import base64_ids, tracing
from dd_compat.bridge import call_flask_bound, create_shadow_app
from dd_compat.helpers import as_bool, json_error, matching_secret, parse_bool
from dd_compat.ids import base64_to_bytes, base64_to_uuid, bytes_to_base64, uuid_to_base64
from dd_compat.logging import configure_logging, flush_logs, log_level
from dd_compat.modes import load_notifications_utils, notifications_utils_available
from dd_compat.proxy import check_proxy_header
from dd_compat.state import (
    BUILTIN,
    EXTENSION_KEY,
    NOTIFICATIONS_UTILS,
    CompatState,
    get_state,
)
from dd_compat.tracing import (
    DEFAULT_HEADERS,
    NO_REQUEST_ID,
    PARENT_SPAN_ID_HEADER,
    SPAN_ID_HEADER,
    TRACE_ID_HEADER,
    TraceIds,
    current_trace_id,
    current_trace_ids,
    outgoing_trace_headers,
)

if TYPE_CHECKING:
    from types import ModuleType

    import quart
    from quart.typing import ResponseReturnValue, ResponseTypes

__all__ = [
    "NO_REQUEST_ID",
    "PARENT_SPAN_ID_HEADER",
    "SPAN_ID_HEADER",
    "TRACE_ID_HEADER",
    "CompatState",
    "TraceIds",
    "as_bool",
    "base64_to_bytes",
    "base64_to_uuid",
    "bytes_to_base64",
    "call_flask_bound",
    "current_trace_id",
    "current_trace_ids",
    "flush_logs",
    "get_state",
    "init_app",
    "json_error",
    "matching_secret",
    "notifications_utils_available",
    "outgoing_trace_headers",
    "parse_bool",
    "uuid_to_base64",
]

CONFIG_DEFAULTS: dict[str, object] = {
    **DEFAULT_HEADERS,  # NOTIFY_TRACE_ID_HEADER etc.: TRACE_ID_HEADER, ...
    "NOTIFY_LOG_LEVEL": "INFO",
    "NOTIFY_APP_NAME": "Name",
    # The anchor's value; notifications_utils.logging would otherwise create ./log/.
    "NOTIFY_LOG_PATH": "application.log",
    "CHECK_PROXY_HEADER": False,
    "ROUTE_SECRET_KEY_1": "",
    "ROUTE_SECRET_KEY_2": "",
}


def init_app(
    app: quart.Quart,
    use_notifications_utils: bool | None = None,
    *,
    proxy_check_exempt: Callable[[], bool] | None = None,
) -> None:
    """Set up dd_compat for ``app``.

    ``use_notifications_utils``: ``None`` picks notifications_utils mode when the package can be
    imported; ``True`` requires it (ImportError otherwise); ``False`` forces the built-ins.
    ``proxy_check_exempt``: called in each request; true lets it through without the proxy
    header (health checks from a load balancer, which cannot send one).
    """
    for key, value in CONFIG_DEFAULTS.items():
        app.config.setdefault(key, value)
    # notifications_utils reads the flag with a plain truth test: "false" would be true.
    app.config["CHECK_PROXY_HEADER"] = _config_flag(app, "CHECK_PROXY_HEADER")
    # ... and passes the level name to logging as is: "info" would be rejected.
    level = log_level(app.config["NOTIFY_LOG_LEVEL"])
    level_name = std_logging.getLevelName(level)
    if std_logging.getLevelNamesMapping().get(level_name) == level:
        app.config["NOTIFY_LOG_LEVEL"] = level_name

    if use_notifications_utils is None:
        use_notifications_utils = notifications_utils_available()
    shadow = create_shadow_app(app)
    if use_notifications_utils:
        nu = load_notifications_utils()
        nu.request_helper.init_app(shadow)  # NotifyRequest; its WSGI middleware never runs
        state = CompatState(
            mode=NOTIFICATIONS_UTILS,
            shadow=shadow,
            base64=nu.base64_uuid,
            request_helper=nu.request_helper,
            nu_logging=nu.logging,
            nu_logging_error=nu.logging_error,
        )
    else:
        state = CompatState(mode=BUILTIN, shadow=shadow, base64=base64_ids)
    state.proxy_check_exempt = proxy_check_exempt
    app.extensions[EXTENSION_KEY] = state

    debug = _config_flag(app, "DEBUG")
    state.log_handler = configure_logging(app, state.nu_logging, debug=debug)
    if state.nu_logging is not None:
        _init_notifications_utils_logging(state.nu_logging, shadow)

    before, after = app.before_request_funcs[None], app.after_request_funcs[None]
    if _before_request not in before:  # init_app may be called again for the same app
        before.insert(0, _before_request)
    if _after_request not in after:
        # after_request functions run in reverse order: index 0 runs last, after the app's own
        after.insert(0, _after_request)
    if _start_logging not in app.before_serving_funcs:
        app.before_serving_funcs.insert(0, _start_logging)
    if _stop_logging not in app.after_serving_funcs:
        app.after_serving_funcs.append(_stop_logging)  # moved to the end again by _start_logging

    logger = std_logging.getLogger(app.name)
    logger.info("Logging configured", extra={"compat_mode": state.mode})
    if state.mode == NOTIFICATIONS_UTILS and state.nu_logging is None:
        logger.warning(
            "notifications_utils.logging is not importable (%s): using dd_compat's log filters",
            state.nu_logging_error,
        )


def _config_flag(app: quart.Quart, key: str) -> bool:
    try:
        return as_bool(app.config.get(key))
    except ValueError as error:
        raise ValueError(f"{key}: {error}") from None


async def _start_logging() -> None:
    """before_serving: (re)start the log listener, and keep :func:`_stop_logging` the last
    after_serving step, behind those the app registered after ``init_app``."""
    handler = get_state(current_app).log_handler
    if handler is not None:
        handler.start()
    funcs = current_app.after_serving_funcs
    if _stop_logging in funcs:
        funcs.remove(_stop_logging)
    funcs.append(_stop_logging)


async def _stop_logging() -> None:
    """after_serving, last: write every queued line and stop the listener (in a worker
    thread: it waits for the listener). A line logged later is written where it is logged."""
    handler = get_state(current_app).log_handler
    if handler is not None:
        await asyncio.to_thread(handler.stop)


def _init_notifications_utils_logging(nu_logging: ModuleType, shadow: flask.Flask) -> None:
    """Run ``notifications_utils.logging.init_app`` on the shadow app for its config defaults and
    its after_request hook (run through the bridge), but keep dd_compat's handler.

    It clears ``shadow.logger``'s handlers (the app's own logger: same name) and installs its
    own formatter, which needs python-json-logger, uses local time and, since 50.1, appends
    the request's full path (with ``?key=``) to every line. So the handlers of the loggers it
    touches are restored afterwards; its filters are used by dd_compat's handler instead.
    Its one-off startup output (a print and a "Logging configured" line) is discarded.
    """
    loggers = [
        std_logging.getLogger(),
        std_logging.getLogger(shadow.name),
        std_logging.getLogger("utils"),
    ]
    saved = [(logger, list(logger.handlers), logger.level) for logger in loggers]
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            nu_logging.init_app(shadow, None)
    finally:
        for logger, handlers, level in saved:
            logger.handlers[:] = handlers
            logger.setLevel(level)


async def _before_request() -> ResponseReturnValue | None:
    state = get_state(current_app)
    # Ids may already be assigned if something asked for them earlier in this request.
    if tracing.peek_trace_ids() is None:
        if state.request_helper is not None:
            raw = await call_flask_bound(_notify_request_ids)  # NotifyRequest's properties
            ids = tracing.resolve_trace_ids(*raw)
        else:
            ids = tracing.ids_from_headers(request.headers, current_app.config)
        tracing.set_current_trace_ids(ids)
    return await check_proxy_header(state)


def _notify_request_ids() -> tuple[object, object, object]:
    req = flask.request
    return req.trace_id, req.span_id, req.parent_span_id  # type: ignore[attr-defined]


def _run_flask_after_request(status: int) -> None:
    flask.current_app.process_response(flask.Response(status=status))


async def _after_request(response: ResponseTypes) -> ResponseTypes:
    ids = current_trace_ids()
    if ids is not None:
        trace, span, _ = tracing.header_names(current_app.config)
        response.headers[trace] = ids.trace_id
        response.headers[span] = ids.span_id
    state = get_state(current_app)
    if state.nu_logging is not None:
        try:
            await call_flask_bound(_run_flask_after_request, response.status_code)
        except Exception:
            current_app.logger.exception("notifications_utils after_request hook failed")
    return response
