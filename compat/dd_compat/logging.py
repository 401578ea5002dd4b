"""Log lines like notifications_utils.logging's, without its leaks, written off the event loop.

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

The pipeline, as Quart's own ``create_logger`` (a ``QueueHandler`` and a listener thread):

- in the emitting thread or task, :class:`CompatHandler` (a ``QueueHandler``) rejects records
  below the level, runs its filters, which capture what lives in context variables or the
  request (``application``, ``requestId``; notifications_utils' filters in that mode), and
  queues a shallow copy of the record. The message is left for the listener to render unless
  its arguments are anything but plain immutable values (str, numbers, bytes, UUIDs...): those
  are rendered at once, so a later mutation, or a context-bound proxy, cannot change the line;
- in the listener thread, :class:`CompatStreamHandler` renders the message, builds the JSON
  (or readable) line, redacts it and writes it.

The listener starts when the handler is configured (``dd_compat.init_app``) and again before
serving; it is stopped, after writing every queued record, when the app stops serving (the
last ``after_serving`` step), when the handler is closed or removed
(:func:`remove_compat_handlers`, ``logging.shutdown`` at exit) and when the handler is
garbage-collected or the interpreter exits. A record logged while it is stopped is written at
once, in the emitting thread, so no line is ever lost. :meth:`CompatHandler.flush` (and
:func:`flush_logs`) waits until everything queued so far has been written.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
import time
import weakref
from collections.abc import Iterable, Mapping
from logging.handlers import QueueHandler, QueueListener
from queue import SimpleQueue
from typing import IO, TYPE_CHECKING, Any, ClassVar, Final
from uuid import UUID

from dd_compat.tracing import NO_REQUEST_ID, peek_trace_ids

if TYPE_CHECKING:
    from types import ModuleType

    import quart

__all__ = [
    "LISTENER_THREAD_NAME",
    "LOG_FORMAT",
    "TIME_FORMAT",
    "AppNameFilter",
    "CompatHandler",
    "CompatStreamHandler",
    "JsonFormatter",
    "ReadableFormatter",
    "RequestIdFilter",
    "configure_logging",
    "flush_logs",
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
# Message arguments of these exact types are rendered in the listener: they cannot change
# after the call, and their str() needs no context. Any other argument (a dict, a list, an
# object with its own __str__, a LocalProxy) makes the message render in the emitting thread.
_PLAIN_ARGS: Final = frozenset({str, int, float, bool, type(None), bytes, UUID})
LISTENER_THREAD_NAME: Final = "dd_compat-log-listener"
# On a queued record: sys.stdout when it was logged (a leading "_": never an extra field).
_STDOUT_ATTR: Final = "_dd_compat_stdout"


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
    def __init__(self) -> None:
        super().__init__(datefmt=TIME_FORMAT)
        self.converter = time.gmtime

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
    def __init__(self) -> None:
        super().__init__(
            LOG_FORMAT,
            TIME_FORMAT,
            defaults={"application": "none", "requestId": NO_REQUEST_ID},
        )
        self.converter = time.gmtime

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = _extras(record)
        if extras:
            line = f"{line} {_dumps(extras)}"
        return redact(line)


class CompatStreamHandler(logging.StreamHandler[IO[str]]):
    """Formats, redacts and writes (in the listener thread) to its stream, if one is set; else
    to ``sys.stdout`` as it was when the record was logged (:meth:`CompatHandler.prepare`
    notes it), or as it is now."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        logging.Handler.__init__(self)
        self._stream = stream

    @property
    def has_stream(self) -> bool:
        """Whether a stream was set (else: ``sys.stdout``)."""
        return self._stream is not None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
            stream = getattr(record, _STDOUT_ATTR, None) or self.stream
            stream.write(line + self.terminator)
            stream.flush()
        except RecursionError:  # as StreamHandler.emit
            raise
        except Exception:
            self.handleError(record)

    @property
    def stream(self) -> IO[str]:
        return self._stream if self._stream is not None else sys.stdout

    @stream.setter
    def stream(self, value: IO[str] | None) -> None:
        self._stream = value

    def setStream(self, stream: IO[str] | None) -> IO[str] | None:
        """As ``StreamHandler.setStream``, ``None`` meaning the current ``sys.stdout``."""
        if stream is self._stream:
            return None
        old = self.stream
        self.acquire()
        try:
            self.flush()
            self._stream = stream
        finally:
            self.release()
        return old


class _Flush:
    """Queued by :meth:`_Pipeline.drain`; set once every record queued before it is written."""

    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done = threading.Event()


class _Listener(QueueListener):
    def handle(self, record: logging.LogRecord | _Flush) -> None:
        if isinstance(record, _Flush):
            try:
                for handler in self.handlers:
                    handler.flush()
            finally:
                record.done.set()
            return
        try:
            super().handle(record)
        except Exception:
            # StreamHandler.emit reports its own errors; anything escaping it must not end
            # the thread, or every later line would stay in the queue.
            for handler in self.handlers:
                handler.handleError(record)


class _Pipeline:
    """The queue, its listener and the thread's lifecycle. It holds no reference to its
    :class:`CompatHandler`, so a finalizer of the handler can stop it."""

    def __init__(self, output: logging.Handler) -> None:
        self.queue: SimpleQueue[logging.LogRecord | _Flush | None] = SimpleQueue()
        self.output = output
        self.listener = _Listener(self.queue, output)
        # Held to queue a record, and for the whole of start() and stop(): no record can be
        # queued behind the sentinel, and one logged during stop() waits for the queued ones
        # to be written, then is written directly, in order.
        self._lock = threading.Lock()
        self._accepting = False
        self._thread: threading.Thread | None = None

    @property
    def thread(self) -> threading.Thread | None:
        return self._thread

    def _in_listener(self) -> bool:
        return self._thread is not None and self._thread is threading.current_thread()

    def start(self) -> None:
        with self._lock:
            if self._accepting:
                return
            self.listener.start()
            thread = self.listener._thread  # set by start(); the stdlib has no public name
            if thread is not None:
                thread.name = LISTENER_THREAD_NAME
            self._thread = thread
            self._accepting = True

    def submit(self, record: logging.LogRecord) -> bool:
        """Queue ``record``; false when the listener is not running (write it yourself)."""
        if self._in_listener():  # logged while writing: write it there and then
            return False
        with self._lock:
            if not self._accepting:
                return False
            self.queue.put_nowait(record)
            return True

    def stop(self) -> None:
        """Write every queued record, then end the thread (idempotent)."""
        if self._in_listener():  # cannot wait for itself: it ends when it reaches the sentinel
            with self._lock:
                if self._accepting:
                    self._accepting = False
                    self.listener.enqueue_sentinel()
            return
        with self._lock:
            if not self._accepting:
                return
            self._accepting = False
            self.listener.stop()  # queues the sentinel after every record, joins the thread
            self._thread = None

    def drain(self) -> bool:
        """Wait until every record queued so far is written; false if the listener died."""
        if self._in_listener():
            self.output.flush()
            return True
        with self._lock:
            thread = self._thread
            marker = _Flush() if self._accepting else None
            if marker is not None:
                self.queue.put_nowait(marker)
        if marker is None or thread is None:
            self.output.flush()
            return True
        while not marker.done.wait(0.05):
            if not thread.is_alive():
                return False
        return True


_live_handlers: weakref.WeakSet[CompatHandler] = weakref.WeakSet()


class CompatHandler(QueueHandler):
    """The handler on the app's logger: filters and queues in the emitting thread; its
    :attr:`output` (a :class:`CompatStreamHandler`) formats and writes in a listener thread.

    Set the level and the (context-capturing) filters on this handler, the formatter on
    :attr:`output`. :meth:`start` is called by :func:`configure_logging`.
    """

    is_dd_compat: ClassVar[bool] = True

    def __init__(self, output: CompatStreamHandler | None = None) -> None:
        self.output = output if output is not None else CompatStreamHandler()
        self._pipeline = _Pipeline(self.output)
        super().__init__(self._pipeline.queue)
        self._closed = False
        # Stops the listener (writing what is queued) if the handler is dropped without being
        # closed, and at interpreter exit (weakref.finalize runs its callbacks then).
        weakref.finalize(self, self._pipeline.stop)
        _live_handlers.add(self)

    @property
    def running(self) -> bool:
        """Whether records go through the listener thread."""
        thread = self._pipeline.thread
        return thread is not None and thread.is_alive()

    @property
    def listener_thread(self) -> threading.Thread | None:
        return self._pipeline.thread

    def start(self) -> None:
        """Start the listener thread (no-op if running, or once the handler is closed)."""
        if not self._closed:
            self._pipeline.start()

    def stop(self) -> None:
        """Write every queued record and end the listener thread; later records are written
        in the emitting thread until :meth:`start`."""
        self._pipeline.stop()

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        """A shallow copy to queue (the formatter's own attributes, ``message``, ``asctime``,
        ``exc_text``, are then set on it, never on the record other handlers see), with the
        message rendered now unless its arguments are plain immutable values, and, unless a
        stream is set, the current ``sys.stdout`` (where the line is to be written)."""
        clone = logging.LogRecord.__new__(type(record))
        clone.__dict__.update(record.__dict__)
        if not _renders_later(record):
            clone.msg = record.getMessage()
            clone.args = None
        if not self.output.has_stream:  # the line goes where sys.stdout is now, as before
            setattr(clone, _STDOUT_ATTR, sys.stdout)
        return clone

    def emit(self, record: logging.LogRecord) -> None:
        try:
            prepared = self.prepare(record)
            if not self._pipeline.submit(prepared):
                self.output.handle(prepared)
        except Exception:
            self.handleError(record)

    def flush(self) -> None:
        """Wait until every record queued so far has been written, and flush the stream."""
        self._pipeline.drain()

    def close(self) -> None:
        """Write every queued record and end the listener for good."""
        self._closed = True
        self._pipeline.stop()
        self.output.flush()
        _live_handlers.discard(self)
        super().close()

    def setStream(self, stream: IO[str] | None) -> IO[str] | None:
        """Write to ``stream`` (``None``: the current ``sys.stdout``) from now on: what was
        logged before still goes to the old stream. Returns the old stream, if changed."""
        self.flush()
        return self.output.setStream(stream)


def _renders_later(record: logging.LogRecord) -> bool:
    if type(record.msg) is not str:
        return False
    args = record.args
    if not args:
        return True
    values = args.values() if isinstance(args, Mapping) else args
    return all(type(value) in _PLAIN_ARGS for value in values)


def flush_logs() -> None:
    """Wait until every line logged so far through a dd_compat handler has been written (for
    tests reading the output, and before anything that must follow the logs)."""
    for handler in list(_live_handlers):
        handler.flush()


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
    """Remove dd_compat's handlers (and Quart's/Flask's default ones) from ``logger``; a
    removed dd_compat handler is closed, after writing what it still holds."""
    import flask.logging
    import quart.logging

    for handler in list(logger.handlers):
        if isinstance(handler, CompatHandler):
            logger.removeHandler(handler)
            handler.close()  # writes what it still holds, ends its listener
        elif (
            getattr(handler, "is_dd_compat", False)
            or handler is flask.logging.default_handler
            or isinstance(handler, quart.logging.LocalQueueHandler)
        ):
            logger.removeHandler(handler)


def configure_logging(
    app: quart.Quart, nu_logging: ModuleType | None = None, *, debug: bool = False
) -> CompatHandler:
    """Install (or replace) the one dd_compat handler on the app's logger, its listener
    thread started."""
    config = app.config
    level = log_level(config.get("NOTIFY_LOG_LEVEL", "INFO"))
    app_name = str(config.get("NOTIFY_APP_NAME", "none"))
    output = CompatStreamHandler()
    output.setFormatter(ReadableFormatter() if debug else JsonFormatter())
    handler = CompatHandler(output)
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

    logger = logging.getLogger(app.name)
    remove_compat_handlers(logger)
    handler.start()
    logger.addHandler(handler)
    logger.setLevel(level)
    logging.getLogger("boto3").setLevel(logging.WARNING)
    logging.getLogger("s3transfer").setLevel(logging.WARNING)
    return handler
