"""Run sync, Flask-bound callables from Quart code.

Quart and Flask keep their contexts in separate ContextVars, so ``flask.request``, ``flask.g``
and ``flask.current_app`` raise "Working outside of ... context" in a Quart app, even inside
``quart.utils.run_sync``. The bridge keeps a *shadow* ``flask.Flask`` app that shares the Quart
app's config object, and for each call pushes a Flask request context built from the current
Quart request, inside the worker thread of ``run_sync``. The event loop is never blocked.

What the Flask request mirrors: method, scheme, host, root path, path, query string, headers
and remote address. The trace headers carry the ids dd_compat assigned (generated ones
included). The body is **not** mirrored (it is empty): read it in async code and pass the data
as arguments. ``flask.g`` starts as a copy of ``quart.g`` and changes are copied back, so
``g`` behaves as one object for the whole request. In a background task (app context but no
request) only a Flask app context is pushed, as under Flask outside a request.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import flask
from quart import current_app, g, has_request_context, request
from quart.utils import run_sync
from werkzeug.datastructures import Headers
from werkzeug.test import EnvironBuilder

from dd_compat.state import get_state
from dd_compat.tracing import TraceIds, header_names, peek_trace_ids

if TYPE_CHECKING:
    import quart

__all__ = ["TracedFlaskRequest", "call_flask_bound", "create_shadow_app", "flask_environ"]

# Characters left unescaped when re-quoting the (decoded) Quart path for the WSGI builder.
_PATH_SAFE = "/:@!$&'()*+,;=-._~"
_BODY_HEADERS = ("Content-Length", "Transfer-Encoding")


class TracedFlaskRequest(flask.Request):
    """Built-in stand-in for ``notifications_utils.request_helper.NotifyRequest``."""

    def _header(self, config_key: str) -> str | None:
        return self.headers.get(flask.current_app.config[config_key]) or None

    @property
    def trace_id(self) -> str | None:
        return self._header("NOTIFY_TRACE_ID_HEADER")

    @property
    def request_id(self) -> str | None:
        return self.trace_id

    @property
    def span_id(self) -> str | None:
        return self._header("NOTIFY_SPAN_ID_HEADER")

    @property
    def parent_span_id(self) -> str | None:
        return self._header("NOTIFY_PARENT_SPAN_ID_HEADER")


def create_shadow_app(app: quart.Quart) -> flask.Flask:
    """A Flask app with the Quart app's import name and the *same* config object."""
    shadow = flask.Flask(app.import_name)
    shadow.config = app.config  # quart.config.Config subclasses flask.config.Config
    shadow.request_class = TracedFlaskRequest
    return shadow


def flask_environ(req: quart.Request, ids: TraceIds | None, config: Any) -> dict[str, Any]:
    """A WSGI environ mirroring ``req`` (no body); built on the loop thread."""
    headers = Headers(list(req.headers.items()))
    for name in _BODY_HEADERS:
        headers.remove(name)
    if ids is not None:
        trace, span, parent = header_names(config)
        headers.set(trace, ids.trace_id)
        headers.set(span, ids.span_id)
        if ids.parent_span_id:
            headers.set(parent, ids.parent_span_id)
    builder = EnvironBuilder(
        path=quote(req.path, safe=_PATH_SAFE),
        base_url=f"{req.scheme}://{req.host}{req.root_path}",
        query_string=req.query_string.decode("latin-1"),  # bytes would raise TypeError
        method=req.method,
        headers=headers,
        environ_overrides={
            "REMOTE_ADDR": req.remote_addr or "",
            "SERVER_PROTOCOL": f"HTTP/{req.http_version}",
        },
    )
    try:
        return builder.get_environ()
    finally:
        builder.close()


def _sync_g(target: Any, before: dict[str, Any], after: dict[str, Any]) -> None:
    for name, value in after.items():
        if name not in before or before[name] is not value:
            setattr(target, name, value)
    for name in before.keys() - after.keys():
        target.__dict__.pop(name, None)


async def call_flask_bound[T](func: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """Run sync ``func(*args, **kwargs)`` in a worker thread, inside a Flask app context and,
    when there is a Quart request, a Flask request context mirroring it.

    Needs a Quart app context (a request, or a background task) of an app set up with
    ``dd_compat.init_app``. Exceptions raised by ``func`` propagate (``abort(403)`` raises a
    werkzeug ``Forbidden``, which Quart turns into a 403 like any HTTPException).
    """
    state = get_state(current_app)
    if has_request_context():
        environ = flask_environ(request, peek_trace_ids(), current_app.config)
        make_context: Callable[[], Any] = partial(state.shadow.request_context, environ)
    else:
        make_context = state.shadow.app_context
    quart_g = g._get_current_object()
    before = dict(vars(quart_g))
    after: list[dict[str, Any]] = []

    def _inner() -> T:
        with make_context():
            flask_g = vars(flask.g._get_current_object())
            flask_g.update(before)
            try:
                return func(*args, **kwargs)
            finally:
                after.append(dict(flask_g))

    try:
        # run_sync is typed as returning Any; the value is _inner's, a T
        result: T = await run_sync(_inner)()
        return result
    finally:
        if after:  # empty if cancelled before the worker finished
            _sync_g(quart_g, before, after[0])
