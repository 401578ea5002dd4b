"""Client for the scan-files API (``POST {host}/clamav``).

``ScanClient.scan`` never raises (except ``asyncio.CancelledError``): every failure becomes a
``ScanResult`` without a verdict, marked retryable when it may pass (scan-files down, 5xx,
429, the store unavailable), with a short reason that is safe to log.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx

from .source import ScanSource, SourceError

__all__ = ["SCANNER", "ScanClient", "ScanFailed", "ScanResult"]

logger = logging.getLogger("dd_api.scanning")

SCANNER = "clamav"
_CONNECT_TIMEOUT = 5.0
# An attempt started with less time than this would end as "deadline reached" whatever the
# scanner does, hiding the failure that made it retry.
_MIN_ATTEMPT_SECONDS = 0.5
_FALLBACK_MIMETYPE = "application/octet-stream"
# httpx writes the part's Content-Type verbatim, so anything outside a plain token/parameter
# syntax could inject extra multipart headers.
_SAFE_MIMETYPE = re.compile(r"[\x21-\x7e]+(?:; ?[\x21-\x7e]+)*")
# Transport errors that will fail identically on every attempt (bad URL scheme, a header value
# h11 refuses to send): retrying them would only burn the deadline.
_PERMANENT_TRANSPORT_ERRORS = (httpx.UnsupportedProtocol, httpx.LocalProtocolError)


@dataclass(frozen=True)
class ScanResult:
    verdict: str | None
    """scan-files' verdict ("clean", "malicious", "unable_to_scan", ...); None if there is none."""
    checksum: str
    """SHA-256 hex of the bytes sent in the attempt that got the verdict ("" without one)."""
    attempts: int
    reason: str | None = None
    """Without a verdict: why, short and secret-free."""
    retryable: bool = False
    """Without a verdict: whether trying again later may succeed."""


class ScanFailed(Exception):
    """A call of scan-files' S3 route failed; the reason is short and secret-free."""

    def __init__(self, reason: str, *, retryable: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable


@dataclass(frozen=True)
class _Outcome:
    """What one attempt produced: a verdict, a retryable failure, or a permanent failure."""

    verdict: str | None = None
    failure: str | None = None  # "http 502", "ConnectError", ...: class names and codes only
    retryable: bool = False
    retry_after: float | None = None
    checksum: str = ""


class ScanClient:
    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        host: str,
        api_key: str,
        backoff_base: float = 0.5,
        backoff_max: float = 10.0,
        attempt_timeout: float = 60.0,
        on_failure: Callable[[str], None] | None = None,
    ) -> None:
        self._http = http
        self._on_failure = on_failure  # told each failed attempt's kind, e.g. "http 502"
        self._url = f"{host.rstrip('/')}/clamav"
        self._health_url = f"{host.rstrip('/')}/healthcheck"
        self._s3_url = f"{host.rstrip('/')}/clamav/s3"
        self._api_key = api_key
        self._backoff_base = backoff_base
        self._backoff_max = backoff_max
        self._attempt_timeout = attempt_timeout

    def __repr__(self) -> str:
        # Keep the api key out of tracebacks and debug dumps.
        return f"ScanClient(url={self._url!r})"

    @property
    def scanner_name(self) -> str:
        return SCANNER

    async def ping(self) -> None:
        """Raise unless scan-files answers its (unauthenticated) health check."""
        response = await self._http.get(self._health_url, timeout=2.0)
        response.raise_for_status()

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
        """Scan ``source`` within ``deadline`` seconds, retrying what may pass unless
        ``retry`` is false (the queue retries by delivering the message again)."""
        loop = asyncio.get_running_loop()
        deadline_at = loop.time() + deadline
        mimetype = _safe_mimetype(mimetype)
        attempts = 0
        outcome = _Outcome(failure="no time for an attempt", retryable=True)
        while (remaining := deadline_at - loop.time()) > 0:
            attempts += 1
            outcome = await self._attempt(source, filename, mimetype, request_id, remaining)
            if outcome.verdict is None and self._on_failure is not None:
                self._on_failure(outcome.failure or "unknown")
            if outcome.verdict is not None or not outcome.retryable or not retry:
                break
            delay = outcome.retry_after
            if delay is None:
                delay = self._backoff(attempts)
            if deadline_at - (loop.time() + delay) < min(_MIN_ATTEMPT_SECONDS, deadline / 4):
                break  # no time for a real attempt: give up now, with this attempt's reason
            logger.warning(
                "scan attempt %d failed (%s), retrying in %.2fs",
                attempts,
                outcome.failure,
                delay,
                extra={"scan_request_id": request_id, "scan_attempts": attempts},
            )
            await asyncio.sleep(delay)
        return ScanResult(
            verdict=outcome.verdict,
            checksum=outcome.checksum,
            attempts=attempts,
            reason=outcome.failure,
            retryable=outcome.retryable,
        )

    async def _attempt(
        self, source: ScanSource, filename: str, mimetype: str, request_id: str, remaining: float
    ) -> _Outcome:
        # httpx timeouts bound each connect/read/write separately; asyncio.timeout bounds the whole
        # attempt so a slowly trickling exchange cannot outlive the deadline.
        timeout = httpx.Timeout(
            min(self._attempt_timeout, remaining), connect=min(_CONNECT_TIMEOUT, remaining)
        )
        head, tail, content_type = _envelope(filename, mimetype)
        body = _Body(source, head, tail)
        try:
            async with asyncio.timeout(remaining):
                # An unreadable source fails here, before scan-files sees half an upload.
                await body.start()
                response = await self._http.post(
                    self._url,
                    content=body,
                    headers={
                        "Authorization": self._api_key,
                        "X-Scanning-Request-Id": request_id,
                        "Content-Type": content_type,
                        # known in advance, so the body is not sent chunked
                        "Content-Length": str(body.length),
                    },
                    timeout=timeout,
                )
        except TimeoutError:
            return _Outcome(failure="deadline reached mid-attempt", retryable=True)
        except SourceError as error:
            return _Outcome(failure=error.reason, retryable=error.retryable)
        except _PERMANENT_TRANSPORT_ERRORS as exc:
            return _Outcome(failure=type(exc).__name__)
        except httpx.TransportError as exc:
            return _Outcome(failure=type(exc).__name__, retryable=True)
        except Exception as exc:  # a bug must not kill the background task
            logger.exception(
                "scan attempt raised unexpectedly", extra={"scan_request_id": request_id}
            )
            return _Outcome(failure=f"unexpected {type(exc).__name__}")
        finally:
            await body.aclose()
        outcome = _classify(response)
        if outcome.verdict is None:
            return outcome
        return _Outcome(verdict=outcome.verdict, checksum=body.digest.hexdigest())

    # -- scan-files' S3 route, for documents above its request size cap --------------------

    async def start_s3_scan(
        self, s3_uri: str, *, aws_account: str, sns_arn: str, request_id: str
    ) -> str:
        """Ask scan-files to scan an object its role reads; its scan id. Raises ScanFailed."""
        response = await self._s3_call(
            "POST",
            self._s3_url,
            request_id,
            json={"aws_account": aws_account, "s3_key": s3_uri, "sns_arn": sns_arn},
        )
        scan_id = _json_field(response, "scan_id")
        if scan_id is None:
            raise ScanFailed("scan-files answered without a scan id", retryable=True)
        return scan_id

    async def s3_scan_verdict(self, scan_id: str, *, request_id: str) -> str | None:
        """The verdict of a scan started with ``start_s3_scan``; None while it runs."""
        response = await self._s3_call("GET", f"{self._url}/{quote(scan_id, safe='')}", request_id)
        if _json_field(response, "status") != "completed":
            return None
        verdict = _json_field(response, "verdict")
        if verdict is None:
            raise ScanFailed("completed scan without a verdict", retryable=True)
        return verdict

    async def _s3_call(
        self, method: str, url: str, request_id: str, **kwargs: Any
    ) -> httpx.Response:
        headers = {"Authorization": self._api_key, "X-Scanning-Request-Id": request_id}
        try:
            response = await self._http.request(
                method,
                url,
                headers=headers,
                timeout=httpx.Timeout(self._attempt_timeout, connect=_CONNECT_TIMEOUT),
                **kwargs,
            )
        except _PERMANENT_TRANSPORT_ERRORS as exc:
            raise ScanFailed(type(exc).__name__, retryable=False) from None
        except httpx.TransportError as exc:
            raise ScanFailed(type(exc).__name__, retryable=True) from None
        if response.status_code != 200:
            outcome = _classify(response)
            raise ScanFailed(outcome.failure or "unknown", retryable=outcome.retryable)
        return response

    def _backoff(self, attempts: int) -> float:
        """Full jitter: uniform in [0, base * 2^(attempts-1)], capped at backoff_max."""
        ceiling = min(self._backoff_max, self._backoff_base * 2 ** (attempts - 1))
        return random.uniform(0.0, ceiling)


def _envelope(filename: str, mimetype: str) -> tuple[bytes, bytes, str]:
    """The multipart part's head and the closing boundary around the file's bytes.

    httpx cannot stream an async source as a file part, so its encoder renders the part
    (filename escaping included) around empty content, and the bytes go between.
    """
    empty = httpx.Request("POST", "http://scan", files={"file": (filename, b"", mimetype)})
    content_type = empty.headers["Content-Type"]
    boundary = content_type.partition("boundary=")[2].encode()
    tail = b"\r\n--" + boundary + b"--\r\n"
    return empty.read()[: -len(tail)], tail, content_type


class _Body:
    """One attempt's request body: the part's head, the source's bytes, the closing boundary.

    The bytes are hashed as they go (off the event loop: a 10 MiB digest would hold it about
    25 ms) and counted, so a source that is not the size it declared fails as a source
    instead of as a broken HTTP exchange.
    """

    def __init__(self, source: ScanSource, head: bytes, tail: bytes) -> None:
        self._source = source
        self._head = head
        self._tail = tail
        self._chunks = source.chunks()
        self._first = b""
        self.digest = hashlib.sha256()
        self.length = len(head) + source.size + len(tail)

    async def start(self) -> None:
        """Read the first chunk: opening the source is what fails when it is unreadable."""
        self._first = await anext(self._chunks, b"")

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self._head
        sent = 0
        chunk = self._first
        while chunk:
            sent += len(chunk)
            if sent > self._source.size:
                break
            await asyncio.to_thread(self.digest.update, chunk)
            yield chunk
            chunk = await anext(self._chunks, b"")
        if sent != self._source.size:
            raise SourceError("document is not the size it was stored with", retryable=False)
        yield self._tail

    async def aclose(self) -> None:
        await self._chunks.aclose()


def _classify(response: httpx.Response) -> _Outcome:
    status = response.status_code
    if status == 200:
        verdict = _verdict_from(response)
        if verdict is None:
            return _Outcome(failure="http 200 without verdict", retryable=True)
        return _Outcome(verdict=verdict)
    failure = f"http {status}"
    if status == 413:
        return _Outcome(failure="http 413: the document is too large for scan-files")
    if status == 429:
        return _Outcome(failure=failure, retryable=True, retry_after=_retry_after(response))
    # scan-files answers 502 whenever a scan throws, which under load is usually transient.
    return _Outcome(failure=failure, retryable=status >= 500)


def _verdict_from(response: httpx.Response) -> str | None:
    return _json_field(response, "verdict")


def _json_field(response: httpx.Response, name: str) -> str | None:
    try:
        body = response.json()
    except ValueError:
        return None
    value = body.get(name) if isinstance(body, dict) else None
    return value if isinstance(value, str) and value else None


def _retry_after(response: httpx.Response) -> float | None:
    """Numeric Retry-After only; an HTTP-date falls back to our own backoff."""
    try:
        value = float(response.headers.get("Retry-After", ""))
    except ValueError:
        return None
    return value if 0 <= value < float("inf") else None


def _safe_mimetype(mimetype: str) -> str:
    return mimetype if _SAFE_MIMETYPE.fullmatch(mimetype) else _FALLBACK_MIMETYPE
