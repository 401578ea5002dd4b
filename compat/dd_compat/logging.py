"""Log lines like notifications_utils.logging's, without its leaks.

One handler on the app's logger (``logging.getLogger(app.name)``, so module loggers named
``<app name>.*`` propagate into it), writing to stdout:

- not debug: one JSON object per line with ``time`` (UTC, ``%Y-%m-%dT%H:%M:%S``),
  ``application``, ``name``, ``levelname``, ``requestId``, ``message``, ``logType``,
  ``pathname``, ``lineno``, plus any ``extra=`` fields (stringified with ``str`` when not JSON);
- debug: readable single lines (the message is never ``str.format``-ed).

``requestId`` is the trace id of the current request, also in background tasks started from
it, else ``"no-request-id"``. Unlike notifications_utils 50.1+, no request details (full path
with the query string, hence the decryption key) are appended; as defence in depth every line
is passed through :func:`redact` (``key=`` values, ``Bearer`` tokens, Notify API keys).
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Iterable
from typing import IO, TYPE_CHECKING, Any, ClassVar

from dd_compat.tracing import NO_REQUEST_ID, peek_trace_ids

if TYPE_CHECKING:
    from types import ModuleType

    import quart

__all__ = [
    "LOG_FORMAT",
    "TIME_FORMAT",
    "AppNameFilter",
    "CompatHandler",
    "JsonFormatter",
    "ReadableFormatter",
    "RequestIdFilter",
    "configure_logging",
    "log_level",
    "redact",
    "remove_compat_handlers",
]

TIME_FORMAT = "%Y-%m-%dT%H:%M:%S"
LOG_FORMAT = (
    '%(asctime)s %(application)s %(name)s %(levelname)s %(requestId)s "%(message)s"'
    " [in %(pathname)s:%(lineno)d]"
)
_MASK = "***"
_REDACTIONS: tuple[tuple[re.Pattern[str], str], ...] = (
    # key=<value> in query strings / URLs (also api_key=, secret_key=...)
    (re.compile(r"(?i)(key=)[^&\s\"'\\,;#)}\]]+"), rf"\1{_MASK}"),
    # 'key': 'value' / "key": "value" in dict reprs and JSON
    (re.compile(r"(?i)([\"']key[\"']\s*:\s*[\"'])[^\"'\\]+"), rf"\1{_MASK}"),
    (re.compile(r"(?i)(\bbearer\s+)[^\s\"'\\,;]+"), rf"\1{_MASK}"),
    # Notify API keys (the pattern notifications_utils masks)
    (re.compile(r"[a-zA-Z0-9]{51}\.[a-zA-Z0-9-_]{27}"), _MASK),
)
_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "taskName",
}
# Set by our filters or by notifications_utils' filters; never reported as extra fields.
_FILTER_ATTRS = frozenset({"application", "requestId", "app_name", "request_id", "logType"})
_NO_ID_VALUES = frozenset({None, "", "None", NO_REQUEST_ID})


def redact(text: str) -> str:
    for pattern, replacement in _REDACTIONS:
        text = pattern.sub(replacement, text)
    return text


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {
        key: value
        for key, value in vars(record).items()
        if key not in _STANDARD_ATTRS and key not in _FILTER_ATTRS and not key.startswith("_")
    }


def _dumps(fields: dict[str, Any]) -> str:
    try:
        return json.dumps(fields, default=str)
    except (TypeError, ValueError):  # e.g. non-str dict keys or a cycle in an extra field
        plain = (str, int, float, bool, type(None))
        return json.dumps({k: v if isinstance(v, plain) else str(v) for k, v in fields.items()})


def _request_id() -> str:
    ids = peek_trace_ids()
    return ids.trace_id if ids is not None else NO_REQUEST_ID


class AppNameFilter(logging.Filter):
    def __init__(self, app_name: str) -> None:
        super().__init__()
        self.app_name = app_name

    def filter(self, record: logging.LogRecord) -> bool:
        record.application = self.app_name
        return True


class RequestIdFilter(logging.Filter):
    """``requestId`` from dd_compat's trace ids (works on the loop, in run_sync threads and in
    background tasks)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.requestId = _request_id()
        return True


class _NotifyUtilsFilter(logging.Filter):
    """Runs notifications_utils' own filters, then maps their fields to ours.

    Its ``RequestIdFilter`` reads ``flask.request.request_id``, which only exists inside a
    bridged call (where it is the trace id dd_compat assigned); elsewhere it yields
    ``no-request-id`` and dd_compat's trace id is used instead.
    """

    def __init__(self, app_name: str, filters: Iterable[logging.Filter]) -> None:
        super().__init__()
        self.app_name = app_name
        self.filters_ = list(filters)

    def filter(self, record: logging.LogRecord) -> bool:
        for item in self.filters_:
            try:
                item.filter(record)
            except Exception:  # noqa: S112 - a library filter must never cost a log line
                continue
        record.application = (
            getattr(record, "app_name", None)
            or getattr(record, "application", None)
            or self.app_name
        )
        for name in ("request_id", "requestId"):
            value = getattr(record, name, None)
            if value not in _NO_ID_VALUES:
                record.requestId = str(value)
                break
        else:
            record.requestId = _request_id()
        return True


class JsonFormatter(logging.Formatter):
    converter = time.gmtime

    def __init__(self) -> None:
        super().__init__(datefmt=TIME_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "time": self.formatTime(record, TIME_FORMAT),
            "application": getattr(record, "application", None),
            "name": record.name,
            "levelname": record.levelname,
            "requestId": getattr(record, "requestId", NO_REQUEST_ID),
            "message": record.getMessage(),
            "logType": "application",
            "pathname": record.pathname,
            "lineno": record.lineno,
        }
        for key, value in _extras(record).items():
            payload.setdefault(key, value)
        if record.exc_info:
            record.exc_text = record.exc_text or self.formatException(record.exc_info)
        if record.exc_text:
            payload["exc_info"] = record.exc_text
        if record.stack_info:
            payload["stack_info"] = self.formatStack(record.stack_info)
        return redact(_dumps(payload))


class ReadableFormatter(logging.Formatter):
    converter = time.gmtime

    def __init__(self) -> None:
        super().__init__(
            LOG_FORMAT,
            TIME_FORMAT,
            defaults={"application": "none", "requestId": NO_REQUEST_ID},
        )

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = _extras(record)
        if extras:
            line = f"{line} {_dumps(extras)}"
        return redact(line)


class CompatHandler(logging.StreamHandler):
    """StreamHandler writing to the *current* ``sys.stdout`` unless a stream is set."""

    is_dd_compat: ClassVar[bool] = True

    def __init__(self, stream: IO[str] | None = None) -> None:
        logging.Handler.__init__(self)
        self._stream = stream

    @property  # type: ignore[override]
    def stream(self) -> IO[str]:
        return self._stream if self._stream is not None else sys.stdout

    @stream.setter
    def stream(self, value: IO[str] | None) -> None:
        self._stream = value


def log_level(value: object) -> int:
    """``NOTIFY_LOG_LEVEL`` as a number ("INFO", "info", 20 or "20")."""
    if isinstance(value, int):
        return value
    text = str(value).strip()
    if text.isdigit():
        return int(text)
    level = logging.getLevelName(text.upper())
    if not isinstance(level, int):
        raise ValueError(f"NOTIFY_LOG_LEVEL: unknown log level {value!r}")
    return level


def remove_compat_handlers(logger: logging.Logger) -> None:
    """Remove dd_compat's handlers (and Quart's/Flask's default ones) from ``logger``."""
    import flask.logging
    import quart.logging

    for handler in list(logger.handlers):
        if (
            getattr(handler, "is_dd_compat", False)
            or handler is flask.logging.default_handler
            or isinstance(handler, quart.logging.LocalQueueHandler)
        ):
            logger.removeHandler(handler)


def configure_logging(
    app: quart.Quart, nu_logging: ModuleType | None = None, *, debug: bool = False
) -> CompatHandler:
    """Install (or replace) the one dd_compat handler on the app's logger."""
    config = app.config
    level = log_level(config.get("NOTIFY_LOG_LEVEL", "INFO"))
    app_name = str(config.get("NOTIFY_APP_NAME", "none"))
    handler = CompatHandler()
    handler.setLevel(level)
    if nu_logging is not None and hasattr(nu_logging, "RequestIdFilter"):
        filters: list[logging.Filter] = []
        if hasattr(nu_logging, "AppNameFilter"):
            filters.append(nu_logging.AppNameFilter(app_name))
        filters.append(nu_logging.RequestIdFilter())
        handler.addFilter(_NotifyUtilsFilter(app_name, filters))
    else:
        handler.addFilter(AppNameFilter(app_name))
        handler.addFilter(RequestIdFilter())
    handler.setFormatter(ReadableFormatter() if debug else JsonFormatter())

    logger = logging.getLogger(app.name)
    remove_compat_handlers(logger)
    logger.addHandler(handler)
    logger.setLevel(level)
    logging.getLogger("boto3").setLevel(logging.WARNING)
    logging.getLogger("s3transfer").setLevel(logging.WARNING)
    return handler
