"""The per-process dependencies the views use.

Some are built with the app; the others need the running loop (or the queue key) and are
made in ``before_serving``. Their properties raise, rather than return None, when read before
that: a view never runs before it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import cast

from quart import current_app

from .config import Settings
from .metrics import Metrics
from .queue import MessageCodec, ScanQueue
from .scanning.engine import ScanEngine
from .scanning.scanner import Scanner
from .spool_dir import SpoolDirectory
from .store import DocumentStore


@dataclass
class Started:
    codec: MessageCodec
    engine: ScanEngine
    scanner: Scanner


@dataclass
class Runtime:
    settings: Settings
    store: DocumentStore
    queue: ScanQueue
    metrics: Metrics
    spool_dir: SpoolDirectory = field(default_factory=SpoolDirectory)
    started: Started | None = None

    @property
    def codec(self) -> MessageCodec:
        return self._started().codec

    @property
    def engine(self) -> ScanEngine:
        return self._started().engine

    @property
    def scanner(self) -> Scanner:
        return self._started().scanner

    def _started(self) -> Started:
        if self.started is None:
            raise RuntimeError("dd-api's dependencies are opened in before_serving")
        return self.started


def runtime() -> Runtime:
    return cast(Runtime, current_app.extensions["dd_api"])
