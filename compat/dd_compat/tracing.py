"""B3 trace ids for the current request, also visible in background tasks.

The ids of a request are kept in a ContextVar set by the before_request hook. asyncio copies
the context when a task is created, so a background task started with
``app.add_background_task`` from a request still sees that request's ids, and so do
functions run through ``quart.utils.run_sync`` (which also copies the context).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final

from quart import current_app, has_app_context, has_request_context, request
from werkzeug.datastructures import Headers

__all__ = [
    "DEFAULT_HEADERS",
    "NO_REQUEST_ID",
    "PARENT_SPAN_ID_HEADER",
    "SPAN_ID_HEADER",
    "TRACE_ID_HEADER",
    "TraceIds",
    "current_trace_id",
    "current_trace_ids",
    "generate_span_id",
    "generate_trace_id",
    "header_names",
    "ids_from_headers",
    "outgoing_trace_headers",
    "peek_trace_ids",
    "resolve_trace_ids",
    "set_current_trace_ids",
]

NO_REQUEST_ID = "no-request-id"

#: The default trace header names (as in ``notifications_utils.request_helper.init_app``); the
#: one place they are written. ``NOTIFY_*_HEADER`` in the config overrides them.
TRACE_ID_HEADER: Final = "X-B3-TraceId"
SPAN_ID_HEADER: Final = "X-B3-SpanId"
PARENT_SPAN_ID_HEADER: Final = "X-B3-ParentSpanId"

#: Config key -> default header name.
DEFAULT_HEADERS: Final[Mapping[str, str]] = MappingProxyType(
    {
        "NOTIFY_TRACE_ID_HEADER": TRACE_ID_HEADER,
        "NOTIFY_SPAN_ID_HEADER": SPAN_ID_HEADER,
        "NOTIFY_PARENT_SPAN_ID_HEADER": PARENT_SPAN_ID_HEADER,
    }
)

# Caller-supplied ids are echoed into response headers and logs: accept printable ASCII up to
# this length (B3 ids are 16 or 32 hex chars) and treat anything else as absent.
_MAX_ID_LENGTH = 128


@dataclass(frozen=True, slots=True)
class TraceIds:
    trace_id: str
    span_id: str
    parent_span_id: str | None = None


@dataclass(frozen=True, slots=True)
class _Bound:
    request_key: int  # id() of the Quart request these ids were assigned to
    ids: TraceIds


_current: ContextVar[_Bound | None] = ContextVar("dd_compat.trace_ids", default=None)


def generate_trace_id() -> str:
    """A B3 128-bit trace id: 32 lower-case hex chars."""
    return os.urandom(16).hex()


def generate_span_id() -> str:
    """A B3 64-bit span id: 16 lower-case hex chars."""
    return os.urandom(8).hex()


def header_names(config: Mapping[str, Any] | None = None) -> tuple[str, str, str]:
    """(trace, span, parent span) header names from the config, with the defaults."""
    values: Mapping[str, Any] = config if config is not None else {}
    trace, span, parent = (values.get(key) or default for key, default in DEFAULT_HEADERS.items())
    return str(trace), str(span), str(parent)


def _clean(value: object) -> str | None:
    if not isinstance(value, str) or not value:
        return None
    if len(value) > _MAX_ID_LENGTH or not value.isascii() or not value.isprintable():
        return None
    return value


def resolve_trace_ids(trace_id: object, span_id: object, parent_span_id: object = None) -> TraceIds:
    """Ids as received (``None`` when absent), with fresh ids where the caller sent none."""
    return TraceIds(
        trace_id=_clean(trace_id) or generate_trace_id(),
        span_id=_clean(span_id) or generate_span_id(),
        parent_span_id=_clean(parent_span_id),
    )


def ids_from_headers(headers: Headers | Mapping[str, str], config: Mapping[str, Any]) -> TraceIds:
    """The built-in reading of the trace headers (case-insensitive, empty = absent)."""
    trace, span, parent = header_names(config)
    return resolve_trace_ids(headers.get(trace), headers.get(span), headers.get(parent))


def _request_key() -> int:
    return id(request._get_current_object())


def set_current_trace_ids(ids: TraceIds) -> None:
    """Bind ``ids`` to the current request (call from the request's own task)."""
    _current.set(_Bound(_request_key() if has_request_context() else 0, ids))


def peek_trace_ids() -> TraceIds | None:
    """The ids already assigned to the current request or inherited by this task, if any."""
    bound = _current.get()
    if bound is None:
        return None
    if has_request_context() and bound.request_key != _request_key():
        return None  # inherited from another request: not ours
    return bound.ids


def current_trace_ids() -> TraceIds | None:
    """Ids of the current request (assigned on first use if the hook has not run yet), or
    of the request that started the current background task; ``None`` outside both."""
    ids = peek_trace_ids()
    if ids is None and has_request_context():
        ids = ids_from_headers(request.headers, current_app.config)
        set_current_trace_ids(ids)
    return ids


def current_trace_id() -> str:
    """The trace id of the current request (or of the request that started the current
    background task); ``"no-request-id"`` outside any request."""
    ids = current_trace_ids()
    return ids.trace_id if ids is not None else NO_REQUEST_ID


def outgoing_trace_headers() -> dict[str, str]:
    """B3 headers for an outgoing call made on behalf of the current request: same trace id,
    a new span id, the current span as parent. Empty outside any request."""
    ids = current_trace_ids()
    if ids is None:
        return {}
    trace, span, parent = header_names(current_app.config if has_app_context() else None)
    return {trace: ids.trace_id, span: generate_span_id(), parent: ids.span_id}
