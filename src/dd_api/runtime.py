"""The per-process dependencies the views use, created in ``before_serving``."""

from __future__ import annotations

from dataclasses import dataclass

from quart import current_app

from .config import Settings
from .metrics import Metrics
from .scanning.client import ScanClient
from .scanning.recovery import Sweeper
from .scanning.scanner import Scanner
from .store import DocumentStore


@dataclass
class Runtime:
    settings: Settings
    store: DocumentStore
    metrics: Metrics
    # set in before_serving: they need the running loop
    scanner: Scanner | None = None
    scan_client: ScanClient | None = None
    sweeper: Sweeper | None = None


def runtime() -> Runtime:
    return current_app.extensions["dd_api"]
