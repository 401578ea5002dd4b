"""Stand-in for ``notifications_utils.request_helper`` (Flask-bound)."""

from flask import abort, current_app, request
from flask.wrappers import Request


class NotifyRequest(Request):
    """Zipkin/B3 ids from the headers named in ``current_app.config``; ``None`` when absent."""

    @property
    def request_id(self):
        return self.trace_id

    @property
    def trace_id(self):
        if not hasattr(self, "_trace_id"):
            self._trace_id = self._get_header_value(current_app.config["NOTIFY_TRACE_ID_HEADER"])
        return self._trace_id

    @property
    def span_id(self):
        if not hasattr(self, "_span_id"):
            self._span_id = self._get_header_value(current_app.config["NOTIFY_SPAN_ID_HEADER"])
        return self._span_id

    @property
    def parent_span_id(self):
        if not hasattr(self, "_parent_span_id"):
            name = current_app.config["NOTIFY_PARENT_SPAN_ID_HEADER"]
            self._parent_span_id = self._get_header_value(name)
        return self._parent_span_id

    def _get_header_value(self, header_name):
        value = self.headers.get(header_name)
        return value if value else None


class ResponseHeaderMiddleware:
    """WSGI middleware appending the trace headers (never runs under ASGI)."""

    def __init__(self, app, trace_id_header, span_id_header):
        self.app = app
        self.trace_id_header = trace_id_header
        self.span_id_header = span_id_header

    def __call__(self, environ, start_response):
        def rewrite_response_headers(status, headers, exc_info=None):
            present = {name.lower() for name, _ in headers}
            # the library compares the mixed-case name with lower-cased names: always appends
            if self.trace_id_header not in present:
                headers.append((self.trace_id_header, str(request.trace_id)))
            if self.span_id_header not in present:
                headers.append((self.span_id_header, str(request.span_id)))
            return start_response(status, headers, exc_info)

        return self.app(environ, rewrite_response_headers)


def init_app(app):
    app.config.setdefault("NOTIFY_TRACE_ID_HEADER", "X-B3-TraceId")
    app.config.setdefault("NOTIFY_SPAN_ID_HEADER", "X-B3-SpanId")
    app.config.setdefault("NOTIFY_PARENT_SPAN_ID_HEADER", "X-B3-ParentSpanId")
    app.request_class = NotifyRequest
    app.wsgi_app = ResponseHeaderMiddleware(
        app.wsgi_app, app.config["NOTIFY_TRACE_ID_HEADER"], app.config["NOTIFY_SPAN_ID_HEADER"]
    )


def check_proxy_header_before_request():
    keys = [
        current_app.config.get("ROUTE_SECRET_KEY_1"),
        current_app.config.get("ROUTE_SECRET_KEY_2"),
    ]
    result, msg = _check_proxy_header_secret(request, keys)
    if not result and current_app.config.get("CHECK_PROXY_HEADER", False):
        current_app.logger.warning(msg)
        abort(403)
    return None


def _check_proxy_header_secret(request, secrets, header="X-Custom-Forwarder"):
    if header not in request.headers:
        return False, "Header missing"
    header_secret = request.headers.get(header)
    if not header_secret:
        return False, "Header exists but is empty"
    if not any(secrets):
        return False, "Secrets are not configured"
    for number, secret in enumerate(secrets, start=1):
        if header_secret == secret:
            return True, f"Key used: {number}"
    return False, "Header didn't match any keys"
