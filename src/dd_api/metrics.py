"""Prometheus metrics, one registry per app (tests build many apps in one process)."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from quart import Quart, Response, request

from .scanning.scanner import Scanner

__all__ = ["CONTENT_TYPE", "Metrics"]


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
        self.scan_queue_depth = Gauge(
            "dd_scan_queue_depth", "Scans waiting for a slot.", registry=self.registry
        )
        self.scans_in_flight = Gauge(
            "dd_scans_in_flight", "Scans talking to scan-files now.", registry=self.registry
        )
        self.scan_duration = Histogram(
            "dd_scan_duration_seconds",
            "From the scan being queued to its verdict being written.",
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
        self.scan_queue_depth.set_function(lambda: scanner.waiting)
        self.scans_in_flight.set_function(lambda: scanner.in_flight)

    def scan_finished(self, verdict: str, seconds: float) -> None:
        self.verdicts.labels(verdict).inc()
        self.scan_duration.observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    async def _count_request(self, response: Response) -> Response:
        rule = request.url_rule.rule if request.url_rule is not None else "unmatched"
        self.requests.labels(rule, request.method, str(response.status_code)).inc()
        return response
