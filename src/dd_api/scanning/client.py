"""Client for the scan-files API (``POST {host}/clamav``).

``ScanClient.scan`` never raises (except ``asyncio.CancelledError``): every failure becomes a
``ScanResult`` without a verdict, marked retryable when it may pass (scan-files down, 5xx,
429, the store unavailable), with a short reason that is safe to log.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import quote

import httpx

from .attempts import Attempt, Retrier, ScanResult
from .source import ScanSource, SourceError

__all__ = ["SCANNER", "ScanClient", "ScanFailed", "ScanResult"]

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


class ScanFailed(Exception):
    """A call of scan-files' S3 route failed; the reason is short and secret-free."""

    def __init__(self, reason: str, *, retryable: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable


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
        self._url = f"{host.rstrip('/')}/clamav"
        self._health_url = f"{host.rstrip('/')}/healthcheck"
        self._s3_url = f"{host.rstrip('/')}/clamav/s3"
        self._api_key = api_key
        self._retrier = Retrier(
            label="scan-files",
            backoff_base=backoff_base,
            backoff_max=backoff_max,
            on_failure=on_failure,
        )
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
        mimetype = _safe_mimetype(mimetype)
        return await self._retrier.run(
            lambda remaining: self._attempt(source, filename, mimetype, request_id, remaining),
            deadline=deadline,
            retry=retry,
            request_id=request_id,
        )

    async def _attempt(
        self, source: ScanSource, filename: str, mimetype: str, request_id: str, remaining: float
    ) -> Attempt:
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
            return Attempt(failure="deadline reached mid-attempt", retryable=True)
        except SourceError as error:
            return Attempt(failure=error.reason, retryable=error.retryable)
        except _PERMANENT_TRANSPORT_ERRORS as exc:
            return Attempt(failure=type(exc).__name__)
        except httpx.TransportError as exc:
            return Attempt(failure=type(exc).__name__, retryable=True)
        except Exception as exc:  # a bug must not kill the background task
            logger.exception(
                "scan attempt raised unexpectedly", extra={"scan_request_id": request_id}
            )
            return Attempt(failure=f"unexpected {type(exc).__name__}")
        finally:
            await body.aclose()
        outcome = _classify(response)
        if outcome.verdict is None:
            return outcome
        return Attempt(verdict=outcome.verdict, checksum=body.digest.hexdigest())

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


def _classify(response: httpx.Response) -> Attempt:
    status = response.status_code
    if status == 200:
        verdict = _verdict_from(response)
        if verdict is None:
            return Attempt(failure="http 200 without verdict", retryable=True)
        return Attempt(verdict=verdict)
    failure = f"http {status}"
    if status == 413:
        return Attempt(failure="http 413: the document is too large for scan-files")
    if status == 429:
        return Attempt(failure=failure, retryable=True, retry_after=_retry_after(response))
    # scan-files answers 502 whenever a scan throws, which under load is usually transient.
    return Attempt(failure=failure, retryable=status >= 500)


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
