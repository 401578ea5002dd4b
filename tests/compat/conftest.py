"""Fixtures for the compat suite: every test taking ``mode`` runs twice.

- ``builtin``: dd_compat's own implementations.
- ``notifications_utils``: the real package when it is importable (install it as the README
  says and the same tests run against it), else the Flask-bound stand-in in ``standin/``,
  put on ``sys.path`` for the test only.
"""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dd_compat
import pytest
from dd_compat.logging import remove_compat_handlers
from quart import Quart

STANDIN_DIR = Path(__file__).parent / "standin"
REAL_NOTIFICATIONS_UTILS = dd_compat.notifications_utils_available()
BUILTIN = "builtin"
NOTIFICATIONS_UTILS = "notifications_utils"
APP_NAME = "dd_api"


def _purge_notifications_utils() -> None:
    for name in list(sys.modules):
        if name == "notifications_utils" or name.startswith("notifications_utils."):
            del sys.modules[name]


@pytest.fixture(params=[BUILTIN, NOTIFICATIONS_UTILS])
def mode(request: pytest.FixtureRequest) -> Iterator[str]:
    if request.param == NOTIFICATIONS_UTILS and not REAL_NOTIFICATIONS_UTILS:
        _purge_notifications_utils()
        sys.path.insert(0, str(STANDIN_DIR))
        try:
            yield request.param
        finally:
            sys.path.remove(str(STANDIN_DIR))
            _purge_notifications_utils()
    else:
        yield request.param


@pytest.fixture
def nu_only(mode: str) -> str:
    if mode != NOTIFICATIONS_UTILS:
        pytest.skip("notifications_utils mode only")
    return mode


class LogCapture:
    """Lines written by the dd_compat handler of the app's logger.

    Lines are written by the handler's listener thread: reading waits until everything
    logged so far has been written (``dd_compat.flush_logs``).
    """

    def __init__(self) -> None:
        self.stream = io.StringIO()

    def text(self) -> str:
        dd_compat.flush_logs()
        return self.stream.getvalue()

    def lines(self) -> list[str]:
        return [line for line in self.text().splitlines() if line]

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.lines()]

    def find(self, message_part: str) -> dict[str, Any]:
        for record in self.records():
            if message_part in record["message"]:
                return record
        raise AssertionError(f"no log line containing {message_part!r}: {self.lines()}")


@pytest.fixture
def logs() -> LogCapture:
    return LogCapture()


@pytest.fixture
def make_app(mode: str, logs: LogCapture) -> Iterator[Callable[..., Quart]]:
    """``make_app(**config)``: a Quart("dd_api") app set up with ``dd_compat.init_app`` in the
    test's mode, its log lines going to ``logs``."""

    def _make(**config: Any) -> Quart:
        app = Quart(APP_NAME)
        app.config.update(config)
        dd_compat.init_app(app, use_notifications_utils=mode == NOTIFICATIONS_UTILS)
        handler = dd_compat.get_state(app).log_handler
        assert handler is not None
        handler.setStream(logs.stream)
        return app

    yield _make
    logger = logging.getLogger(APP_NAME)
    remove_compat_handlers(logger)
    logger.setLevel(logging.NOTSET)
