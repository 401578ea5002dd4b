"""What scans the bytes: scan-files over HTTP, or a local clamd. Chosen at start-up."""

from __future__ import annotations

from typing import Protocol

from .attempts import ScanResult
from .source import ScanSource


class ScanEngine(Protocol):
    @property
    def scanner_name(self) -> str:
        """The ``av-scanner`` tag value."""
        ...

    async def scan(
        self,
        source: ScanSource,
        *,
        filename: str,
        mimetype: str,
        request_id: str,
        deadline: float,
        retry: bool = True,
    ) -> ScanResult:
        """The verdict, or a failure saying whether trying later may succeed; never raises."""
        ...

    async def ping(self) -> None:
        """Raise unless the engine answers."""
        ...
