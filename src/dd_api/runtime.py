"""The per-process dependencies the views use, created in ``before_serving``."""

from __future__ import annotations

from dataclasses import dataclass, field

from quart import current_app

from .config import Settings
from .metrics import Metrics
from .queue import MessageCodec, ScanQueue
from .scanning.client import ScanClient
from .scanning.scanner import Scanner
from .spool_dir import SpoolDirectory
from .store import DocumentStore


@dataclass
class Runtime:
    settings: Settings
    store: DocumentStore
    queue: ScanQueue
    metrics: Metrics
    spool_dir: SpoolDirectory = field(default_factory=SpoolDirectory)
    # set in before_serving: they need the running loop, or the queue key
    codec: MessageCodec | None = None
    scanner: Scanner | None = None
    scan_client: ScanClient | None = None


def runtime() -> Runtime:
    return current_app.extensions["dd_api"]
