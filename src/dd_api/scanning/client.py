"""Client for the scan-files API (``POST {host}/clamav``), used after an upload has been answered.

``ScanClient.scan`` never raises (except ``asyncio.CancelledError``): every failure becomes a
``ScanResult`` with verdict ``"error"`` and a short reason that is safe to log and store.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
import os
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Self

import httpx

__all__ = ["SCANNER", "ScanClient", "ScanResult"]

logger = logging.getLogger("dd_api.scanning")

SCANNER = "clamav"
_CONNECT_TIMEOUT = 5.0
_FALLBACK_MIMETYPE = "application/octet-stream"
# httpx writes the part's Content-Type verbatim, so anything outside a plain token/parameter
# syntax could inject extra multipart headers.
_SAFE_MIMETYPE = re.compile(r"[\x21-\x7e]+(?:; ?[\x21-\x7e]+)*")
# Transport errors that will fail identically on every attempt (bad URL scheme, a header value
# h11 refuses to send): retrying them would only burn the deadline.
_PERMANENT_TRANSPORT_ERRORS = (httpx.UnsupportedProtocol, httpx.LocalProtocolError)


@dataclass(frozen=True)
class ScanResult:
    verdict: str
    """scan-files verdict ("clean", "malicious", "unable_to_scan", ...) or "error" if we gave up."""
    checksum: str
    """SHA-256 hex of the document bytes ("" only if the source could not be read at all)."""
    scanner: str
    attempts: int
    reason: str | None
    """Short, secret-free reason when the verdict is "error" because of us, else None."""


class _HashingReader:
    """Sync file-like wrapper that hashes the bytes as httpx reads them.

    httpx seeks to 0 before rendering each request body, so a seek to 0 restarts the hash and
    a retry that re-sends the file still yields the digest of exactly the bytes sent. Any other
    seek breaks the sequential read, and ``hexdigest`` then re-reads from the start.
    """

    _CHUNK = 64 * 1024

    def __init__(self, raw: IO[bytes]) -> None:
        self._raw = raw
        self._hash = hashlib.sha256()
        self._pos = 0
        self._sequential = True  # every byte in [0, _pos) has gone through _hash, in order

    @classmethod
    def open(cls, source: bytes | os.PathLike[str] | str) -> Self:
        if isinstance(source, bytes | bytearray | memoryview):
            # BytesIO over an immutable bytes object shares its buffer instead of copying it.
            return cls(io.BytesIO(source))
        return cls(open(source, "rb"))  # closed by our own close()

    def read(self, size: int = -1) -> bytes:
        chunk = self._raw.read(size)
        if self._sequential:
            self._hash.update(chunk)
        self._pos += len(chunk)
        return chunk

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        pos = self._raw.seek(offset, whence)
        if pos == 0:
            self._hash = hashlib.sha256()
            self._sequential = True
        elif pos != self._pos:
            self._sequential = False
        self._pos = pos
        return pos

    def tell(self) -> int:
        return self._pos

    def fileno(self) -> int:
        # Lets httpx size a real file with fstat (-> Content-Length); BytesIO raises
        # UnsupportedOperation here and httpx falls back to seek/tell.
        return self._raw.fileno()

    def hexdigest(self) -> str:
        """Digest of the whole source, finishing (or, if needed, redoing) the streamed pass.

        After a request that sent the whole file this reads nothing more; only when no attempt
        got the body out (e.g. connection refused) does it read the source itself. Returns ""
        if the source cannot be read.
        """
        try:
            if not self._sequential:
                self.seek(0)
            while self.read(self._CHUNK):
                pass
        except OSError:
            return ""
        return self._hash.hexdigest()

    def close(self) -> None:
        self._raw.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


@dataclass(frozen=True)
class _Outcome:
    """What one attempt produced: a verdict, a retryable failure, or a permanent failure."""

    verdict: str | None = None
    failure: str | None = None  # "http 502", "ConnectError", ...: class names and codes only
    retryable: bool = False
    retry_after: float | None = None
    last_failure: str | None = None  # for "deadline exceeded": what the final attempt hit


class ScanClient:
    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        host: str,
        api_key: str,
        deadline: float = 120.0,
        backoff_base: float = 0.5,
        backoff_max: float = 10.0,
        attempt_timeout: float = 60.0,
        on_failure: Callable[[str], None] | None = None,
    ) -> None:
        self._http = http
        self._on_failure = on_failure  # told each failed attempt's kind, e.g. "http 502"
        self._url = f"{host.rstrip('/')}/clamav"
        self._health_url = f"{host.rstrip('/')}/healthcheck"
        self._api_key = api_key
        self._deadline = deadline
        self._backoff_base = backoff_base
        self._backoff_max = backoff_max
        self._attempt_timeout = attempt_timeout

    def __repr__(self) -> str:
        # Keep the api key out of tracebacks and debug dumps.
        return f"ScanClient(url={self._url!r}, deadline={self._deadline})"

    async def ping(self) -> None:
        """Raise unless scan-files answers its (unauthenticated) health check."""
        response = await self._http.get(self._health_url, timeout=2.0)
        response.raise_for_status()

    async def scan(
        self,
        source: bytes | os.PathLike[str] | str,
        *,
        filename: str,
        mimetype: str,
        request_id: str,
    ) -> ScanResult:
        """Scan ``source`` (bytes, or the path of a file the caller owns and deletes)."""
        started = asyncio.get_running_loop().time()
        try:
            reader = _HashingReader.open(source)
        except OSError as exc:
            failed = _Outcome(failure=f"cannot read source: {type(exc).__name__}")
            return self._finish(request_id, started, None, 0, failed)
        with reader:
            return await self._scan_with_retries(
                reader, filename, _safe_mimetype(mimetype), request_id, started
            )

    async def _scan_with_retries(
        self, reader: _HashingReader, filename: str, mimetype: str, request_id: str, started: float
    ) -> ScanResult:
        loop = asyncio.get_running_loop()
        deadline_at = started + self._deadline
        attempts = 0
        outcome: _Outcome | None = None
        while (remaining := deadline_at - loop.time()) > 0:
            attempts += 1
            outcome = await self._attempt(reader, filename, mimetype, request_id, remaining)
            if outcome.verdict is None and self._on_failure is not None:
                self._on_failure(outcome.failure or "unknown")
            if outcome.verdict is not None or not outcome.retryable:
                return self._finish(request_id, started, reader, attempts, outcome)
            delay = outcome.retry_after
            if delay is None:
                delay = self._backoff(attempts)
            if loop.time() + delay >= deadline_at:
                # The next attempt could not start in time: give up now rather than sleep.
                break
            logger.warning(
                "scan attempt %d failed (%s), retrying in %.2fs",
                attempts,
                outcome.failure,
                delay,
                extra=_log_extra(request_id, attempts, loop.time() - started, outcome.failure),
            )
            await asyncio.sleep(delay)
        last_failure = outcome.failure if outcome else None
        gave_up = _Outcome(
            failure=f"deadline exceeded after {attempts} attempts", last_failure=last_failure
        )
        return self._finish(request_id, started, reader, attempts, gave_up)

    async def _attempt(
        self,
        reader: _HashingReader,
        filename: str,
        mimetype: str,
        request_id: str,
        remaining: float,
    ) -> _Outcome:
        # httpx timeouts bound each connect/read/write separately; asyncio.timeout bounds the whole
        # attempt so a slowly trickling exchange cannot outlive the deadline.
        timeout = httpx.Timeout(
            min(self._attempt_timeout, remaining), connect=min(_CONNECT_TIMEOUT, remaining)
        )
        try:
            async with asyncio.timeout(remaining):
                response = await self._http.post(
                    self._url,
                    files={"file": (filename, reader, mimetype)},
                    headers={"Authorization": self._api_key, "X-Scanning-Request-Id": request_id},
                    timeout=timeout,
                )
        except TimeoutError:
            return _Outcome(failure="deadline reached mid-attempt", retryable=True)
        except _PERMANENT_TRANSPORT_ERRORS as exc:
            return _Outcome(failure=type(exc).__name__)
        except httpx.TransportError as exc:
            return _Outcome(failure=type(exc).__name__, retryable=True)
        except Exception as exc:  # a bug or an unreadable source must not kill the background task
            logger.exception(
                "scan attempt raised unexpectedly", extra={"scan_request_id": request_id}
            )
            return _Outcome(failure=f"unexpected {type(exc).__name__}")
        return _classify(response)

    def _backoff(self, attempts: int) -> float:
        """Full jitter: uniform in [0, base * 2^(attempts-1)], capped at backoff_max."""
        ceiling = min(self._backoff_max, self._backoff_base * 2 ** (attempts - 1))
        return random.uniform(0.0, ceiling)

    @staticmethod
    def _finish(
        request_id: str,
        started: float,
        reader: _HashingReader | None,
        attempts: int,
        outcome: _Outcome,
    ) -> ScanResult:
        verdict = outcome.verdict or "error"
        reason = None if outcome.verdict else outcome.failure
        elapsed = asyncio.get_running_loop().time() - started
        failure = outcome.last_failure or outcome.failure
        logger.log(
            logging.INFO if outcome.verdict else logging.WARNING,
            "scan finished: verdict=%s attempts=%d elapsed=%.2fs reason=%s",
            verdict,
            attempts,
            elapsed,
            reason if outcome.last_failure is None else f"{reason} (last: {outcome.last_failure})",
            extra={**_log_extra(request_id, attempts, elapsed, failure), "scan_verdict": verdict},
        )
        return ScanResult(
            verdict=verdict,
            checksum=reader.hexdigest() if reader else "",
            scanner=SCANNER,
            attempts=attempts,
            reason=reason,
        )


def _classify(response: httpx.Response) -> _Outcome:
    status = response.status_code
    if status == 200:
        verdict = _verdict_from(response)
        if verdict is None:
            return _Outcome(failure="http 200 without verdict", retryable=True)
        return _Outcome(verdict=verdict)
    failure = f"http {status}"
    if status == 429:
        return _Outcome(failure=failure, retryable=True, retry_after=_retry_after(response))
    # scan-files answers 502 whenever a scan throws, which under load is usually transient.
    return _Outcome(failure=failure, retryable=status >= 500)


def _verdict_from(response: httpx.Response) -> str | None:
    try:
        body = response.json()
    except ValueError:
        return None
    verdict = body.get("verdict") if isinstance(body, dict) else None
    return verdict if isinstance(verdict, str) and verdict else None


def _retry_after(response: httpx.Response) -> float | None:
    """Numeric Retry-After only; an HTTP-date falls back to our own backoff."""
    try:
        value = float(response.headers.get("Retry-After", ""))
    except ValueError:
        return None
    return value if 0 <= value < float("inf") else None


def _safe_mimetype(mimetype: str) -> str:
    return mimetype if _SAFE_MIMETYPE.fullmatch(mimetype) else _FALLBACK_MIMETYPE


def _log_extra(
    request_id: str, attempts: int, elapsed: float, failure: str | None
) -> dict[str, object]:
    # Deliberately no filename, headers or content: only correlation id and counters.
    return {
        "scan_request_id": request_id,
        "scan_attempts": attempts,
        "scan_elapsed": round(elapsed, 3),
        "scan_failure": failure,
    }
