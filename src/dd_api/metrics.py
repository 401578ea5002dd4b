"""Prometheus metrics, one registry per app (tests build many apps in one process)."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from quart import Quart, Response, request

from .queue import QueueDepth
from .scanning.scanner import Scanner

__all__ = ["CONTENT_TYPE", "Metrics"]

# Labels come from a fixed set, whatever clients send: each new label value is a new series
# kept for the life of the process.
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "dd_requests",
            "HTTP requests by route template (never the path: it holds ids) and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.upload_bytes = Counter(
            "dd_upload_bytes", "Bytes of documents stored.", registry=self.registry
        )
        self.download_bytes = Counter(
            "dd_download_bytes", "Bytes of documents served.", registry=self.registry
        )
        self.scans_in_flight = Gauge(
            "dd_scans_in_flight", "Scans talking to the scanner now.", registry=self.registry
        )
        self.scan_slots_busy = Gauge(
            "dd_scan_slots_busy",
            "Scan slots taken (of SCAN_CONCURRENCY), by fast-path and queued scans.",
            registry=self.registry,
        )
        self.scan_bytes_held = Gauge(
            "dd_scan_bytes_held",
            "Bytes kept for fast-path scans, in memory or in spool files (disk).",
            ["where"],
            registry=self.registry,
        )
        self.scans = Counter(
            "dd_scans",
            "Scans that wrote a verdict, by path: fast (at upload) or queue.",
            ["path"],
            registry=self.registry,
        )
        self.queue_messages = Gauge(
            "dd_scan_queue_messages",
            "Scan messages in the queue (approximate, polled), by state.",
            ["state"],
            registry=self.registry,
        )
        self.scan_duration = Histogram(
            "dd_scan_duration_seconds",
            "From the scan's start to its verdict being written.",
            buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600),
            registry=self.registry,
        )
        self.verdicts = Counter(
            "dd_scan_verdicts", "Verdicts written, by value.", ["verdict"], registry=self.registry
        )
        self.scan_errors = Counter(
            "dd_scan_files_errors",
            "Failed scan-files attempts, by kind (http status or error class).",
            ["kind"],
            registry=self.registry,
        )

    def install(self, app: Quart) -> None:
        app.after_request(self._count_request)

    def watch(self, scanner: Scanner) -> None:
        self.scans_in_flight.set_function(lambda: scanner.scanning)
        self.scan_slots_busy.set_function(lambda: scanner.slots.busy)
        self.scan_bytes_held.labels("memory").set_function(lambda: scanner.memory.held)
        self.scan_bytes_held.labels("disk").set_function(lambda: scanner.disk.held)

    def scan_finished(self, verdict: str, path: str, seconds: float) -> None:
        self.verdicts.labels(verdict).inc()
        self.scans.labels(path).inc()
        self.scan_duration.observe(seconds)

    def queue_depth(self, depth: QueueDepth) -> None:
        self.queue_messages.labels("visible").set(depth.visible)
        self.queue_messages.labels("in_flight").set(depth.in_flight)
        self.queue_messages.labels("delayed").set(depth.delayed)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    async def _count_request(self, response: Response) -> Response:
        rule = request.url_rule.rule if request.url_rule is not None else "unmatched"
        method = request.method if request.method in KNOWN_METHODS else "other"
        self.requests.labels(rule, method, str(response.status_code)).inc()
        return response
