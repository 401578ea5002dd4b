"""Stand-in for ``notifications_utils.logging`` (Flask-bound, synchronous).

The real module formats with python-json-logger; this one uses the stdlib so that it imports
here, with the same field renames. Like 50.1+, every line gets the request's full path (query
string included) appended: dd_compat must never let this formatter write.
"""

import json
import logging
import sys
from pathlib import Path
from time import monotonic

from flask import g, request
from flask.ctx import has_request_context

LOG_FORMAT = (
    '%(asctime)s %(app_name)s %(name)s %(levelname)s %(request_id)s "%(message)s"'
    " [in %(pathname)s:%(lineno)d]"
)
TIME_FORMAT = "%Y-%m-%dT%H:%M:%S"


def init_app(app, statsd_client=None):
    app.config.setdefault("NOTIFY_LOG_LEVEL", "INFO")
    app.config.setdefault("NOTIFY_APP_NAME", "none")
    app.config.setdefault("NOTIFY_LOG_PATH", "./log/application.log")

    @app.after_request
    def after_request(response):
        extra_fields = {
            "method": request.method,
            "url": request.url,
            "status": response.status_code,
        }
        if "service_id" in g:
            extra_fields["service_id"] = g.service_id
        if "start" in g:
            extra_fields["time_taken"] = f"{monotonic() - g.start:.5f}"
        if "endpoint" in g:
            extra_fields["endpoint"] = g.endpoint
        if statsd_client:
            stat = ".".join(str(extra_fields.get(k)) for k in ("method", "endpoint", "status"))
            statsd_client.incr(stat)
        return response

    logging.getLogger().addHandler(logging.NullHandler())
    del app.logger.handlers[:]
    ensure_log_path_exists(app.config["NOTIFY_LOG_PATH"])
    handler = get_handler(app)
    level = logging.getLevelName(app.config["NOTIFY_LOG_LEVEL"])
    print("This is the log level", level)
    for logger in (app.logger, logging.getLogger("utils")):
        logger.addHandler(handler)
        logger.setLevel(level)
    logging.getLogger("boto3").setLevel(logging.WARNING)
    logging.getLogger("s3transfer").setLevel(logging.WARNING)
    app.logger.info("Logging configured")


def ensure_log_path_exists(path):
    try:
        Path(path).parent.mkdir(mode=755, parents=True)  # sic: decimal, as in the library
    except FileExistsError:
        pass


def get_handler(app):
    handler = logging.StreamHandler(sys.stdout)
    handler.setLevel(logging.getLevelName(app.config["NOTIFY_LOG_LEVEL"]))
    handler.addFilter(AppNameFilter(app.config["NOTIFY_APP_NAME"]))
    handler.addFilter(RequestIdFilter())
    if app.debug:
        handler.setFormatter(CustomLogFormatter(LOG_FORMAT, TIME_FORMAT))
    else:
        handler.setFormatter(JSONFormatter(LOG_FORMAT, TIME_FORMAT))
    return handler


def _request_details():
    if not has_request_context():
        return ""
    return f" [Request details: full_path: '{request.full_path}' endpoint: '{request.endpoint}' ]"


class AppNameFilter(logging.Filter):
    def __init__(self, app_name):
        super().__init__()
        self.app_name = app_name

    def filter(self, record):
        record.app_name = self.app_name
        return record


class RequestIdFilter(logging.Filter):
    @property
    def request_id(self):
        if has_request_context() and hasattr(request, "request_id"):
            return request.request_id
        return "no-request-id"

    def filter(self, record):
        record.request_id = self.request_id
        return record


class CustomLogFormatter(logging.Formatter):
    def format(self, record):
        record.msg = str(record.msg).format(**record.__dict__) + _request_details()
        return super().format(record)


class JSONFormatter(logging.Formatter):
    def format(self, record):
        return json.dumps(
            {
                "time": self.formatTime(record, TIME_FORMAT),
                "application": getattr(record, "app_name", None),
                "name": record.name,
                "levelname": record.levelname,
                "requestId": getattr(record, "request_id", None),
                "message": record.getMessage() + _request_details(),
                "logType": "application",
            },
            default=str,
        )
