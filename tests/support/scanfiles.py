"""A stand-in for the scan-files API (cds-snc/scan-files) over real HTTP on 127.0.0.1.

It speaks the part of the real contract dd-api uses:

* ``POST /clamav`` with multipart field ``file``. ``Authorization`` must equal the raw api key
  (no ``Bearer``), else 401 ``{"detail": "Unauthorized API request"}``; no ``file`` part -> 422
  ``{"detail": [...]}``; otherwise 200 ``{"scan_id": "<uuid4>", "status": "completed",
  "verdict": "clean"}``, or ``"malicious"`` when the file contains the EICAR test string.
* ``GET /healthcheck`` -> 200 ``{"database": {"able_to_connect": true}}`` (no auth).
* Every response carries ``Strict-Transport-Security`` and ``Content-Security-Policy``.

and, for documents above the 6 MB Lambda payload cap, the S3 routes (answers as
``api/api_gateway/routers/clamav.py`` of cds-snc/scan-files gives them, FastAPI 0.128):

* ``POST /clamav/s3``, JSON body ``{"aws_account": "<account>", "s3_key": "s3://<bucket>/<key>",
  "sns_arn": "<topic ARN>"}``, same ``Authorization`` -> 200 ``{"status": "OK", "scan_id":
  "<uuid4>"}``, and the scan runs in the background (below). FastAPI's order is kept: a body
  that is not valid JSON (sent as ``application/json``, ``*+json`` or with no content type) ->
  422 ``{"detail": [{"type": "json_invalid", "loc": ["body", <pos>], "msg": "JSON decode
  error", "input": {}, "ctx": {"error": "<reason>"}}]}`` even before auth (400 ``{"detail":
  "There was an error parsing the body"}`` if it is not even text); then bad auth ->
  401 as above; then each absent or ``null`` field (every field when the body is empty, not
  JSON, or not an object) -> 422 ``{"type": "missing", "loc": ["body", "<field>"], "msg":
  "Field required", "input": null}`` and each non-string one -> ``{"type": "string_type",
  "loc": ["body", "<field>"], "msg": "Input should be a valid string", "input": <value>}``,
  all in one ``{"detail": [...]}``. No field's content is checked at this point (as in the
  real API): a bad key or account only shows in the verdict.
* The background scan (the real one runs in another Lambda invocation, which assumes the role
  ``ScanFilesGetObjects`` in ``aws_account`` and downloads the object): unless held (see
  ``hold_s3``), it reads the object from ``s3_endpoint`` with a plain boto3 ``GetObject``
  (no SSE-C parameters, so an SSE-C object is refused where the server enforces SSE-C, as
  ministack does and AWS would) and scans its bytes exactly as ``POST /clamav`` does (EICAR ->
  ``malicious``, else the ``set_verdict`` verdict; counted in ``scans_by_checksum``). If the
  object cannot be read (no ``s3_endpoint``, a key not starting ``s3://``, an account that is
  not 12 digits so no role could be assumed, no such bucket or key, access denied, SSE-C, S3
  unreachable), the verdict is ``"error"``: the real ``launch_scan`` catches the download
  failure and records ``ScanVerdicts.ERROR`` (``"error"``) with the scan completed
  (``unable_to_scan`` is only for a file clamd skipped). ``sns_arn`` and ``aws_account`` are
  recorded per scan; no SNS message is published.
* ``GET /clamav/<scan_id>`` (same auth; 401 first) -> 200 ``{"status": "completed",
  "verdict": "<verdict>"}`` once the scan is done, else 200 ``{"status": "in_progress"}``.
  The real API answers ``in_progress`` for an id it does not know too (it looks the scan up
  and finds none): there is no 404. Scan ids from ``POST /clamav`` are known as well
  (completed). A ``scan_id`` that is not a UUID -> 422 ``{"detail": [{"type": "uuid_parsing",
  "loc": ["path", "scan_id"], "msg": "Input should be a valid UUID, <reason>", "input":
  "<scan_id>", "ctx": {"error": "<reason>"}}]}`` (ids are accepted in the forms pydantic
  accepts: 32 hex digits, hyphenated, ``{hyphenated}`` or ``urn:uuid:hyphenated``, any case;
  the reason is the ``uuid`` crate's, whose wording varies between pydantic releases). So ``GET
  /clamav/s3`` is a 422 too. Other methods on ``/clamav/s3`` or ``/clamav/<id>`` -> 405.

Usage::

    with ScanFilesStandIn(api_key="scan-key") as standin:
        client = ScanClient(http, host=standin.url, api_key="scan-key")

or the function-scoped pytest fixture ``scanfiles`` (api key ``DEFAULT_API_KEY``), which a
conftest can re-export with ``from tests.support.scanfiles import scanfiles``.

Options (keyword; the defaults keep the behaviour above, and each is also a plain attribute a
test may set while the stand-in runs):

* ``s3_endpoint``: URL of an S3-compatible server on 127.0.0.1 (the ``moto_endpoint`` or
  ``ministack_endpoint`` session fixture) the background scans read from; ``None`` (default)
  makes every ``/clamav/s3`` scan end ``"error"``. ``aws_access_key_id`` /
  ``aws_secret_access_key`` (default ``"testing"``) and ``aws_region`` (``"us-east-1"``) are
  the credentials it uses, as in ``tests.helpers.AWS_ENV``. Only one attempt is made per scan.
* ``max_bytes``: when set, any request whose body is larger (its ``Content-Length``, or the
  bytes received when it is chunked) answers 413 ``{"message": "Request Entity Too Large"}``
  (``LAMBDA_TOO_LARGE_BODY``), as the Lambda function URL in front of scan-files refuses a
  payload over its limit, before auth and without scanning. The status is certain; the body
  is the one commonly reported for AWS's 413 and could not be checked against AWS's own
  documentation, so match on the status. The body is still read, so the
  client sees the answer rather than a reset, and a ``POST /clamav`` is recorded in
  ``requests`` with ``rejected_too_large=True``. Note that the real limit
  (``LAMBDA_PAYLOAD_LIMIT``, 6 MiB) is on the invocation event, in which a multipart body is
  base64-encoded: the raw body that fits is about 3/4 of it.

Controls (thread-safe; they apply to ``POST /clamav`` requests that passed auth and carry a
file, in this order: hang, hold, delay, failure, verdict):

* ``hang_next(count)``: the next ``count`` scans read the body, then never answer until
  ``release()`` or ``stop()``; they then get a 504 and produce no verdict (use this to provoke
  client read timeouts).
* ``hold()`` / ``release()``: while held, each scan blocks once its body is fully received, until
  ``release()`` (which also ends the hold and frees hung requests). ``wait_for_held(n, timeout)``
  (blocking; use from threads / sync tests) and ``await wait_for_held_async(n, timeout)`` (from
  async tests: the blocking one would freeze the event loop that sends the requests) return once
  at least ``n`` scans are blocked, and raise ``TimeoutError`` otherwise. ``held_count`` gives
  the current number, e.g. to show that the N+1th scan has not started while N are held.
* ``delay``: float attribute, seconds to sleep before answering each scan (benchmarks). It also
  delays each background S3 scan's completion.
* ``fail_next(count, status=502, retry_after=None)``: the next ``count`` scans answer ``status``
  (5xx with the real body ``{"error": "error scanning file [<name>] with clamav"}``, other
  codes with ``{"detail": "<reason phrase>"}``; optional ``Retry-After`` header).
  ``always_fail(status, retry_after=None)`` fails every scan until ``stop_failing()``, which
  also clears ``fail_next``.
* ``set_verdict(verdict)``: verdict for non-EICAR files (``None`` restores ``"clean"``); S3 scans
  use it too.

S3 controls (separate from ``hold()``/``release()`` on purpose: a test can hold one kind of scan
while the other flows, and the existing ``held_count`` keeps counting only ``POST /clamav``):

* ``hold_s3()`` / ``release_s3()``: while held, background S3 scans wait before reading the
  object (so what they read is the object as it is at release); ``GET`` answers ``in_progress``
  for them meanwhile. ``release_s3()`` ends the hold and lets them run. ``s3_held_count`` gives
  the number waiting, ``wait_for_s3_held(n, timeout)`` waits for it.
* ``wait_for_s3_requests(n, timeout)`` / ``await wait_for_s3_requests_async(n, timeout)``: until
  at least ``n`` ``POST /clamav/s3`` were received (any answer); ``wait_for_s3_completed(n,
  timeout)`` / ``await wait_for_s3_completed_async(n, timeout)``: until ``n`` background scans
  have a verdict; ``wait_for_polls(n, scan_id=None, timeout)`` / ``await
  wait_for_polls_async(...)``: until ``n`` polls (of ``scan_id``, or of all ids). All raise
  ``TimeoutError`` when ``timeout`` (default 5 s) passes first; use the ``_async`` ones from
  async tests.

Observations (snapshots, safe to read while requests run):

* ``requests``: every ``POST /clamav`` received (including 401/413/422/failed/hung ones), in
  arrival order, as ``RecordedRequest`` (headers are a case-insensitive ``werkzeug``
  ``Headers``).
* ``scans_by_checksum``: ``Counter`` of SHA-256 of scanned file bytes, counting only scans that
  answered with a verdict (S3 scans that read their object included).
* ``in_flight`` / ``max_in_flight``: scans being handled now / at most at once (hung and held
  requests count until they are answered, even if the client has already given up). Background
  S3 scans are not counted.
* ``s3_requests``: every ``POST /clamav/s3`` received, as ``RecordedS3Request`` (headers, raw and
  parsed JSON body, the status answered and the ``scan_id`` given, if any).
* ``s3_scans``: ``{scan_id: S3Scan}`` for accepted ``/clamav/s3`` requests, in order:
  ``aws_account``, ``s3_key``, ``sns_arn``, ``completed``, ``verdict``, ``error`` (why the
  object could not be read), ``size`` and ``sha256`` of what was read.
* ``polls``: ``Counter`` of authorised ``GET /clamav/<scan_id>`` with a valid UUID, keyed by the
  canonical (lower-case, hyphenated) id, known or not.

``stop()`` frees held and hung requests and held S3 scans (which then end without a verdict)
and shuts the server down promptly; it is idempotent.

Run as a process (benchmarks): ``python -m tests.support.scanfiles --port 6016 --api-key KEY
--delay 2.0 [--s3-endpoint URL] [--max-bytes N]`` serves until SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import email.message
import hashlib
import json
import re
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from types import FrameType
from typing import Any, Self
from urllib.parse import urlparse

import pytest
from werkzeug.datastructures import FileStorage, Headers
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

__all__ = [
    "DEFAULT_API_KEY",
    "EICAR",
    "LAMBDA_PAYLOAD_LIMIT",
    "LAMBDA_TOO_LARGE_BODY",
    "RecordedRequest",
    "RecordedS3Request",
    "S3Scan",
    "ScanFilesStandIn",
    "scanfiles",
]

DEFAULT_API_KEY = "scan-key"
EICAR = rb"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"

_SECURITY_HEADERS = {
    "Strict-Transport-Security": "max-age=63072000; includeSubDomains; preload",
    "Content-Security-Policy": "default-src 'self'",
}
_MISSING_FILE_DETAIL = [
    {"type": "missing", "loc": ["body", "file"], "msg": "Field required", "input": None}
]
# What a Lambda function URL answers for a request over its payload limit (see the module
# docstring), and that limit: 6 MiB for a synchronous invocation's event.
LAMBDA_TOO_LARGE_BODY = {"message": "Request Entity Too Large"}
LAMBDA_PAYLOAD_LIMIT = 6 * 1024 * 1024
# The body fields of ``POST /clamav/s3``, in the order FastAPI reports them.
_S3_FIELDS = ("aws_account", "s3_key", "sns_arn")
_ACCOUNT = re.compile(r"[0-9]{12}")


@dataclass(frozen=True)
class RecordedRequest:
    """One ``POST /clamav`` as the stand-in received it (file fields are None without a file)."""

    headers: Headers
    query: dict[str, str]
    content_length_header: str | None
    transfer_encoding_header: str | None
    filename: str | None
    content_type: str | None
    size: int | None
    sha256: str | None
    rejected_too_large: bool = False  # answered 413 because of ``max_bytes``

    @property
    def request_id(self) -> str | None:
        return self.headers.get("X-Scanning-Request-Id")


@dataclass(frozen=True)
class RecordedS3Request:
    """One ``POST /clamav/s3`` as the stand-in received it, and what it answered."""

    headers: Headers
    raw_body: bytes
    body: Any  # the parsed JSON; None when the body was empty, not JSON or not sent as JSON
    status: int
    scan_id: str | None  # the scan_id answered (200 only)

    @property
    def request_id(self) -> str | None:
        return self.headers.get("X-Scanning-Request-Id")


@dataclass(frozen=True)
class S3Scan:
    """A scan accepted by ``POST /clamav/s3``; replaced by a completed copy when it ends."""

    scan_id: str
    aws_account: str
    s3_key: str
    sns_arn: str
    completed: bool = False
    verdict: str | None = None
    error: str | None = None  # why the object could not be read (verdict "error")
    size: int | None = None
    sha256: str | None = None


class _QuietHandler(WSGIRequestHandler):
    """Keeps werkzeug's per-request access log out of test output; errors are still logged."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass


class ScanFilesStandIn:
    """Threaded scan-files stand-in; see the module docstring for the contract and controls."""

    def __init__(
        self,
        api_key: str = DEFAULT_API_KEY,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        s3_endpoint: str | None = None,
        max_bytes: int | None = None,
        aws_access_key_id: str = "testing",
        aws_secret_access_key: str = "testing",
        aws_region: str = "us-east-1",
    ) -> None:
        self.api_key = api_key
        self.delay = 0.0
        self.s3_endpoint = s3_endpoint
        self.max_bytes = max_bytes
        self.aws_access_key_id = aws_access_key_id
        self.aws_secret_access_key = aws_secret_access_key
        self.aws_region = aws_region
        self._host = host
        self._port = port
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None
        # One condition guards all mutable state below; waiters are woken on any change.
        self._cond = threading.Condition()
        self._stopping = False
        self._holding = False
        self._release_generation = 0
        self._held = 0
        self._in_flight = 0
        self._max_in_flight = 0
        self._fail_next: list[tuple[int, float | None]] = []
        self._always_fail: tuple[int, float | None] | None = None
        self._hang_next = 0
        self._verdict = "clean"
        self._requests: list[RecordedRequest] = []
        self._scans_by_checksum: Counter[str] = Counter()
        # Verdicts of POST /clamav scans, so that GET /clamav/<scan_id> knows them too.
        self._sync_verdicts: dict[str, str] = {}
        self._s3_requests: list[RecordedS3Request] = []
        self._s3_scans: dict[str, S3Scan] = {}
        self._s3_holding = False
        self._s3_release_generation = 0
        self._s3_held = 0
        self._s3_threads: list[threading.Thread] = []
        self._polls: Counter[str] = Counter()
        # The boto3 client, made on first use, and the settings it was made with.
        self._s3_client_lock = threading.Lock()
        self._s3_client: Any = None
        self._s3_client_settings: tuple[str, str, str, str] | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> Self:
        if self._server is not None:
            raise RuntimeError("stand-in already started")
        self._stopping = False
        self._server = make_server(
            self._host, self._port, self._wsgi, threaded=True, request_handler=_QuietHandler
        )
        self._thread = threading.Thread(
            # A short poll interval keeps stop() prompt (werkzeug's default is 0.5 s).
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"scanfiles-standin:{self._server.server_port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._server is not None and self._thread is not None:
            self._server.shutdown()  # serve_forever() closes the listening socket on exit
            self._thread.join(timeout=5)
            self._server = None
        # Held or delayed S3 scans end at once; one reading its object finishes the read.
        with self._cond:
            threads, self._s3_threads = self._s3_threads, []
        give_up_at = time.monotonic() + 5
        for thread in threads:
            thread.join(timeout=max(0.0, give_up_at - time.monotonic()))

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("stand-in not started")
        return f"http://{self._host}:{self._server.server_port}"

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("stand-in not started")
        return self._server.server_port

    # -- controls ----------------------------------------------------------------------------

    def hold(self) -> None:
        with self._cond:
            self._holding = True

    def release(self) -> None:
        """End the hold and free every held or hung request."""
        with self._cond:
            self._holding = False
            self._release_generation += 1
            self._cond.notify_all()

    def wait_for_held(self, n: int, timeout: float = 5.0) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: self._held >= n, timeout=timeout):
                raise TimeoutError(f"{self._held} scans held, wanted {n}")

    async def wait_for_held_async(self, n: int, timeout: float = 5.0) -> None:
        # Polling keeps the event loop free to send the very requests we are waiting for.
        give_up_at = time.monotonic() + timeout
        while self.held_count < n:
            if time.monotonic() >= give_up_at:
                raise TimeoutError(f"{self.held_count} scans held, wanted {n}")
            await asyncio.sleep(0.005)

    def fail_next(
        self, count: int = 1, status: int = 502, retry_after: float | None = None
    ) -> None:
        with self._cond:
            self._fail_next.extend([(status, retry_after)] * count)

    def always_fail(self, status: int = 502, retry_after: float | None = None) -> None:
        with self._cond:
            self._always_fail = (status, retry_after)

    def stop_failing(self) -> None:
        with self._cond:
            self._always_fail = None
            self._fail_next.clear()

    def hang_next(self, count: int = 1) -> None:
        with self._cond:
            self._hang_next += count

    def set_verdict(self, verdict: str | None) -> None:
        with self._cond:
            self._verdict = verdict or "clean"

    def hold_s3(self) -> None:
        """Background S3 scans wait (before reading their object) until ``release_s3()``."""
        with self._cond:
            self._s3_holding = True

    def release_s3(self) -> None:
        """End the S3 hold and let every held background scan run."""
        with self._cond:
            self._s3_holding = False
            self._s3_release_generation += 1
            self._cond.notify_all()

    def wait_for_s3_held(self, n: int, timeout: float = 5.0) -> None:
        self._wait(
            lambda: self._s3_held >= n,
            timeout,
            lambda: f"{self._s3_held} S3 scans held, wanted {n}",
        )

    def wait_for_s3_requests(self, n: int, timeout: float = 5.0) -> None:
        self._wait(
            lambda: len(self._s3_requests) >= n,
            timeout,
            lambda: f"{len(self._s3_requests)} POST /clamav/s3 received, wanted {n}",
        )

    async def wait_for_s3_requests_async(self, n: int, timeout: float = 5.0) -> None:
        await self._wait_async(
            lambda: len(self._s3_requests) >= n,
            timeout,
            lambda: f"{len(self._s3_requests)} POST /clamav/s3 received, wanted {n}",
        )

    def wait_for_s3_completed(self, n: int, timeout: float = 5.0) -> None:
        self._wait(
            lambda: self._s3_completed_count() >= n,
            timeout,
            lambda: f"{self._s3_completed_count()} S3 scans completed, wanted {n}",
        )

    async def wait_for_s3_completed_async(self, n: int, timeout: float = 5.0) -> None:
        await self._wait_async(
            lambda: self._s3_completed_count() >= n,
            timeout,
            lambda: f"{self._s3_completed_count()} S3 scans completed, wanted {n}",
        )

    def wait_for_polls(self, n: int, scan_id: str | None = None, timeout: float = 5.0) -> None:
        self._wait(
            lambda: self._poll_count(scan_id) >= n,
            timeout,
            lambda: f"{self._poll_count(scan_id)} polls of {scan_id or 'any scan'}, wanted {n}",
        )

    async def wait_for_polls_async(
        self, n: int, scan_id: str | None = None, timeout: float = 5.0
    ) -> None:
        await self._wait_async(
            lambda: self._poll_count(scan_id) >= n,
            timeout,
            lambda: f"{self._poll_count(scan_id)} polls of {scan_id or 'any scan'}, wanted {n}",
        )

    def _wait(self, done: Callable[[], bool], timeout: float, state: Callable[[], str]) -> None:
        with self._cond:
            if not self._cond.wait_for(done, timeout=timeout):
                raise TimeoutError(state())

    async def _wait_async(
        self, done: Callable[[], bool], timeout: float, state: Callable[[], str]
    ) -> None:
        # Polling keeps the event loop free to send the very requests we are waiting for.
        give_up_at = time.monotonic() + timeout
        while True:
            with self._cond:
                if done():
                    return
                if time.monotonic() >= give_up_at:
                    raise TimeoutError(state())
            await asyncio.sleep(0.005)

    def _s3_completed_count(self) -> int:  # with self._cond held
        return sum(scan.completed for scan in self._s3_scans.values())

    def _poll_count(self, scan_id: str | None) -> int:  # with self._cond held
        if scan_id is None:
            return sum(self._polls.values())
        return self._polls[_canonical_uuid(scan_id) or scan_id]

    # -- observations ------------------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._cond:
            return list(self._requests)

    @property
    def scans_by_checksum(self) -> Counter[str]:
        with self._cond:
            return Counter(self._scans_by_checksum)

    @property
    def in_flight(self) -> int:
        with self._cond:
            return self._in_flight

    @property
    def max_in_flight(self) -> int:
        with self._cond:
            return self._max_in_flight

    @property
    def held_count(self) -> int:
        with self._cond:
            return self._held

    @property
    def s3_requests(self) -> list[RecordedS3Request]:
        with self._cond:
            return list(self._s3_requests)

    @property
    def s3_scans(self) -> dict[str, S3Scan]:
        with self._cond:
            return dict(self._s3_scans)

    @property
    def s3_held_count(self) -> int:
        with self._cond:
            return self._s3_held

    @property
    def polls(self) -> Counter[str]:
        with self._cond:
            return Counter(self._polls)

    # -- HTTP --------------------------------------------------------------------------------

    def _wsgi(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        request = Request(environ)
        try:
            response = self._route(request)
        finally:
            request.close()  # closes the spooled temp files werkzeug parsed the upload into
        response.headers.update(_SECURITY_HEADERS)
        return response(environ, start_response)

    def _route(self, request: Request) -> Response:
        # The function URL refuses an oversized payload before scan-files sees it.
        too_large = self._too_large(request)
        if request.path == "/clamav" and request.method == "POST":
            return self._clamav(request, too_large=too_large)
        if request.path == "/clamav/s3" and request.method == "POST":
            return self._clamav_s3(request, too_large=too_large)
        if too_large:
            request.get_data()  # read it all, so the client gets the answer, not a reset
            return _json(413, LAMBDA_TOO_LARGE_BODY)
        if request.path == "/healthcheck" and request.method == "GET":
            return _json(200, {"database": {"able_to_connect": True}})
        if request.path in ("/healthcheck", "/clamav"):
            return _json(405, {"detail": "Method Not Allowed"})
        # GET /clamav/s3 lands here too, as it does in FastAPI (and is a 422: "s3" is no UUID).
        scan_id = request.path.removeprefix("/clamav/")
        if scan_id != request.path and scan_id and "/" not in scan_id:
            if request.method in ("GET", "HEAD"):
                return self._scan_result(request, scan_id)
            return _json(405, {"detail": "Method Not Allowed"})
        return _json(404, {"detail": "Not Found"})

    def _too_large(self, request: Request) -> bool:
        limit = self.max_bytes
        if limit is None:
            return False
        declared = request.content_length
        if declared is not None:
            return declared > limit
        # No Content-Length (chunked): count what arrives. The body is kept, and the form
        # parser reads it from there.
        return len(request.get_data(cache=True, parse_form_data=False)) > limit

    def _clamav(self, request: Request, *, too_large: bool = False) -> Response:
        # Always consume the body first so the client never sees a reset mid-upload.
        upload = request.files.get("file")
        data = upload.read() if upload is not None else None
        sha256 = hashlib.sha256(data).hexdigest() if data is not None else None
        self._record(request, upload, data, sha256, too_large=too_large)
        if too_large:
            return _json(413, LAMBDA_TOO_LARGE_BODY)
        if request.headers.get("Authorization") != self.api_key:
            return _json(401, {"detail": "Unauthorized API request"})
        if upload is None or data is None:
            return _json(422, {"detail": _MISSING_FILE_DETAIL})
        with self._scan_in_flight():
            return self._scan(upload.filename or "", data, sha256 or "")

    def _record(
        self,
        request: Request,
        upload: FileStorage | None,
        data: bytes | None,
        sha256: str | None,
        *,
        too_large: bool = False,
    ) -> None:
        record = RecordedRequest(
            headers=Headers(request.headers),
            query=dict(request.args),
            content_length_header=request.environ.get("CONTENT_LENGTH") or None,
            transfer_encoding_header=request.environ.get("HTTP_TRANSFER_ENCODING"),
            filename=upload.filename if upload is not None else None,
            content_type=upload.content_type if upload is not None else None,
            size=len(data) if data is not None else None,
            sha256=sha256,
            rejected_too_large=too_large,
        )
        with self._cond:
            self._requests.append(record)

    def _scan(self, filename: str, data: bytes, sha256: str) -> Response:
        if self._take_hang():
            self._wait_for_release()
            return _json(504, {"message": "Endpoint request timed out"})
        self._block_while_held()
        if self.delay > 0:
            with self._cond:
                self._cond.wait_for(lambda: self._stopping, timeout=self.delay)
        failure = self._take_failure()
        if failure is not None:
            return _failure(*failure, filename=filename)
        scan_id = str(uuid.uuid4())
        with self._cond:
            verdict = "malicious" if EICAR in data else self._verdict
            self._scans_by_checksum[sha256] += 1
            self._sync_verdicts[scan_id] = verdict
        return _json(200, {"scan_id": scan_id, "status": "completed", "verdict": verdict})

    # -- S3 routes ---------------------------------------------------------------------------

    def _clamav_s3(self, request: Request, *, too_large: bool = False) -> Response:
        raw = request.get_data(cache=True, parse_form_data=False)
        if too_large:
            return self._record_s3(request, raw, None, _json(413, LAMBDA_TOO_LARGE_BODY))
        # FastAPI reads (and may refuse) the body before it runs the auth dependency.
        body, refused = _fastapi_json_body(raw, request.headers.get("Content-Type"))
        if refused is not None:
            return self._record_s3(request, raw, None, refused)
        if request.headers.get("Authorization") != self.api_key:
            return self._record_s3(
                request, raw, body, _json(401, {"detail": "Unauthorized API request"})
            )
        errors = _body_field_errors(body, _S3_FIELDS)
        if errors:
            return self._record_s3(request, raw, body, _json(422, {"detail": errors}))
        scan = S3Scan(
            scan_id=str(uuid.uuid4()),
            aws_account=body["aws_account"],
            s3_key=body["s3_key"],
            sns_arn=body["sns_arn"],
        )
        thread = threading.Thread(
            target=self._run_s3_scan,
            args=(scan.scan_id,),
            name=f"scanfiles-s3-scan:{scan.scan_id[:8]}",
            daemon=True,
        )
        response = _json(200, {"status": "OK", "scan_id": scan.scan_id})
        # One critical section: whoever sees the request also sees its scan, and stop() sees
        # the thread started (it waits on the lock before doing anything).
        self._record_s3(request, raw, body, response, scan=scan, thread=thread)
        return response

    def _record_s3(
        self,
        request: Request,
        raw: bytes,
        body: Any,
        response: Response,
        *,
        scan: S3Scan | None = None,
        thread: threading.Thread | None = None,
    ) -> Response:
        record = RecordedS3Request(
            headers=Headers(request.headers),
            raw_body=raw,
            body=body if isinstance(body, dict | list | str | int | float | bool) else None,
            status=response.status_code,
            scan_id=scan.scan_id if scan is not None else None,
        )
        with self._cond:
            self._s3_requests.append(record)
            if scan is not None and thread is not None:
                self._s3_scans[scan.scan_id] = scan
                self._s3_threads = [t for t in self._s3_threads if t.is_alive()]
                self._s3_threads.append(thread)
                thread.start()
            self._cond.notify_all()  # wake wait_for_s3_requests()
        return response

    def _scan_result(self, request: Request, raw_id: str) -> Response:
        if request.headers.get("Authorization") != self.api_key:
            return _json(401, {"detail": "Unauthorized API request"})
        scan_id = _canonical_uuid(raw_id)
        if scan_id is None:
            reason = _uuid_error(raw_id)
            error = {
                "type": "uuid_parsing",
                "loc": ["path", "scan_id"],
                "msg": f"Input should be a valid UUID, {reason}",
                "input": raw_id,
                "ctx": {"error": reason},
            }
            return _json(422, {"detail": [error]})
        with self._cond:
            self._polls[scan_id] += 1
            self._cond.notify_all()  # wake wait_for_polls()
            verdict = self._sync_verdicts.get(scan_id)
            s3_scan = self._s3_scans.get(scan_id)
            if s3_scan is not None and s3_scan.completed:
                verdict = s3_scan.verdict
        if verdict is None:
            return _json(200, {"status": "in_progress"})
        return _json(200, {"status": "completed", "verdict": verdict})

    def _run_s3_scan(self, scan_id: str) -> None:
        if not self._wait_while_s3_held():
            return
        if self.delay > 0:
            with self._cond:
                if self._cond.wait_for(lambda: self._stopping, timeout=self.delay):
                    return
        with self._cond:
            if self._stopping:
                return
            scan = self._s3_scans[scan_id]
        data, error = self._read_s3_object(scan.s3_key, scan.aws_account)
        with self._cond:
            if data is None:
                done = dataclasses.replace(scan, completed=True, verdict="error", error=error)
            else:
                sha256 = hashlib.sha256(data).hexdigest()
                verdict = "malicious" if EICAR in data else self._verdict
                self._scans_by_checksum[sha256] += 1
                done = dataclasses.replace(
                    scan, completed=True, verdict=verdict, size=len(data), sha256=sha256
                )
            self._s3_scans[scan_id] = done
            self._cond.notify_all()  # wake wait_for_s3_completed()

    def _wait_while_s3_held(self) -> bool:
        """False when the stand-in stops meanwhile (the scan then ends without a verdict)."""
        with self._cond:
            if self._stopping:
                return False
            if not self._s3_holding:
                return True
            generation = self._s3_release_generation
            self._s3_held += 1
            self._cond.notify_all()  # wake wait_for_s3_held()
            try:
                self._cond.wait_for(
                    lambda: self._stopping or self._s3_release_generation != generation
                )
            finally:
                self._s3_held -= 1
            return not self._stopping

    def _read_s3_object(self, s3_key: str, aws_account: str) -> tuple[bytes | None, str | None]:
        """The object's bytes, or None and why it could not be read."""
        if not s3_key.startswith("s3://"):
            # scan-files then takes it for a local path, which does not exist.
            return None, f"not an s3:// key: {s3_key!r}"
        if not _ACCOUNT.fullmatch(aws_account):
            return None, f"no role to assume in account {aws_account!r}"
        if self.s3_endpoint is None:
            return None, "the stand-in has no s3_endpoint"
        parsed = urlparse(s3_key)  # as scan-files' storage.get_file splits it
        bucket, key = parsed.netloc, parsed.path.lstrip("/")
        try:
            # No SSECustomerKey: the role scan-files assumes has no way to know one.
            response = self._s3().get_object(Bucket=bucket, Key=key)
            return response["Body"].read(), None
        except Exception as error:  # scan-files records any download failure the same way
            return None, f"{type(error).__name__}: {error}"

    def _s3(self) -> Any:
        settings = (
            self.s3_endpoint or "",
            self.aws_access_key_id,
            self.aws_secret_access_key,
            self.aws_region,
        )
        with self._s3_client_lock:
            if self._s3_client is None or self._s3_client_settings != settings:
                import boto3  # only the S3 route needs it
                from botocore.config import Config

                self._s3_client = boto3.session.Session().client(
                    "s3",
                    endpoint_url=settings[0],
                    aws_access_key_id=settings[1],
                    aws_secret_access_key=settings[2],
                    region_name=settings[3],
                    config=Config(
                        retries={"total_max_attempts": 1},
                        connect_timeout=5,
                        read_timeout=30,
                    ),
                )
                self._s3_client_settings = settings
            return self._s3_client

    def _take_hang(self) -> bool:
        with self._cond:
            if self._hang_next > 0:
                self._hang_next -= 1
                return True
            return False

    def _take_failure(self) -> tuple[int, float | None] | None:
        with self._cond:
            if self._fail_next:
                return self._fail_next.pop(0)
            return self._always_fail

    def _wait_for_release(self) -> None:
        with self._cond:
            generation = self._release_generation
            self._cond.wait_for(lambda: self._stopping or self._release_generation != generation)

    def _block_while_held(self) -> None:
        with self._cond:
            if not self._holding or self._stopping:
                return
            generation = self._release_generation
            self._held += 1
            self._cond.notify_all()  # wake wait_for_held()
            try:
                self._cond.wait_for(
                    lambda: self._stopping or self._release_generation != generation
                )
            finally:
                self._held -= 1

    @contextlib.contextmanager
    def _scan_in_flight(self) -> Iterator[None]:
        with self._cond:
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)
        try:
            yield
        finally:
            with self._cond:
                self._in_flight -= 1


def _json(status: int, body: object) -> Response:
    return Response(json.dumps(body), status=status, mimetype="application/json")


def _failure(status: int, retry_after: float | None, *, filename: str) -> Response:
    if status >= 500:
        response = _json(status, {"error": f"error scanning file [{filename}] with clamav"})
    else:
        response = _json(status, {"detail": HTTPStatus(status).phrase})
    if retry_after is not None:
        response.headers["Retry-After"] = f"{retry_after:g}"
    return response


def _fastapi_json_body(raw: bytes, content_type: str | None) -> tuple[Any, Response | None]:
    """The body as FastAPI 0.128 hands it to body fields, or its refusal of the body."""
    if not raw:
        return None, None
    if content_type:
        message = email.message.Message()
        message["content-type"] = content_type
        subtype = message.get_content_subtype()
        is_json = message.get_content_maintype() == "application" and (
            subtype == "json" or subtype.endswith("+json")
        )
        if not is_json:
            return raw, None  # not parsed: every field is then "missing"
    try:
        return json.loads(raw), None
    except json.JSONDecodeError as error:
        detail = {
            "type": "json_invalid",
            "loc": ["body", error.pos],
            "msg": "JSON decode error",
            "input": {},
            "ctx": {"error": error.msg},
        }
        return None, _json(422, {"detail": [detail]})
    except ValueError:  # e.g. not UTF-8
        return None, _json(400, {"detail": "There was an error parsing the body"})


def _body_field_errors(body: Any, fields: Iterable[str]) -> list[dict[str, Any]]:
    """FastAPI's errors for required ``str`` fields embedded in a JSON body."""
    errors: list[dict[str, Any]] = []
    for name in fields:
        value = body.get(name) if isinstance(body, dict) else None
        if value is None:
            errors.append(
                {"type": "missing", "loc": ["body", name], "msg": "Field required", "input": None}
            )
        elif not isinstance(value, str):
            errors.append(
                {
                    "type": "string_type",
                    "loc": ["body", name],
                    "msg": "Input should be a valid string",
                    "input": value,
                }
            )
    return errors


_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")
_GROUP_STARTS = (0, 9, 14, 19, 24)
_GROUP_LENGTHS = (8, 4, 4, 4, 12)


def _is_hyphenated(text: str) -> bool:
    return len(text) == 36 and all(
        (char == "-") if i in (8, 13, 18, 23) else (char in _HEX_DIGITS)
        for i, char in enumerate(text)
    )


def _canonical_uuid(text: str) -> str | None:
    """The UUID in ``text`` in the forms pydantic-core (the ``uuid`` crate) accepts, or None."""
    if len(text) == 32 and all(char in _HEX_DIGITS for char in text):
        core = text
    elif _is_hyphenated(text):
        core = text
    elif len(text) == 38 and text[0] == "{" and text[-1] == "}" and _is_hyphenated(text[1:-1]):
        core = text[1:-1]
    elif text.startswith("urn:uuid:") and _is_hyphenated(text[9:]):
        core = text[9:]
    else:
        return None
    return str(uuid.UUID(core))


def _uuid_error(text: str) -> str:
    """Why ``text`` is not a UUID, in the words of the ``uuid`` crate pydantic-core relies on
    (``InvalidUuid::into_err`` of uuid 1.23.1). The wording and positions differ a little
    between pydantic-core releases, and scan-files does not pin pydantic: match on the error's
    type and the ``Input should be a valid UUID`` prefix, not on this reason."""
    if len(text) >= 2 and text[0] == "{" and text[-1] == "}":
        inner, offset, simple = text[1:-1], 1, False
    elif text.startswith("urn:uuid:"):
        inner, offset, simple = text[9:], 9, False
    else:
        inner, offset, simple = text, 0, True
    hyphens = 0
    bounds = [0, 0, 0, 0]
    index = 0  # in UTF-8 bytes, as the crate counts
    for char in inner:
        if char == "-":
            if hyphens < 4:
                bounds[hyphens] = index
            hyphens += 1
        elif char not in _HEX_DIGITS:
            return f"invalid character: found `{char}` at {index + offset + 1}"
        index += len(char.encode())
    length = len(text.encode())
    if hyphens == 0 and simple:
        return f"invalid length: expected length 32 for simple format, found {length}"
    if hyphens != 4:
        return f"invalid group count: expected 5, found {hyphens + 1}"
    for group in range(4):
        if bounds[group] != _GROUP_STARTS[group + 1] - 1:
            expected, found = _GROUP_LENGTHS[group], bounds[group] - _GROUP_STARTS[group]
            return f"invalid group length in group {group}: expected {expected}, found {found}"
    return f"invalid group length in group 4: expected 12, found {length - _GROUP_STARTS[4]}"


@pytest.fixture
def scanfiles() -> Iterator[ScanFilesStandIn]:
    """A started stand-in with api key ``DEFAULT_API_KEY``, stopped after the test."""
    with ScanFilesStandIn(api_key=DEFAULT_API_KEY) as standin:
        yield standin


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve the scan-files stand-in until signalled.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=6016)
    parser.add_argument("--api-key", default=DEFAULT_API_KEY)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds per scan")
    parser.add_argument("--s3-endpoint", default=None, help="S3 server for POST /clamav/s3")
    parser.add_argument("--max-bytes", type=int, default=None, help="413 above this body size")
    parser.add_argument(
        "--counts",
        type=Path,
        default=None,
        help="at exit, write the scans by SHA-256 and the request count to this JSON file",
    )
    args = parser.parse_args(argv)

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    with ScanFilesStandIn(
        api_key=args.api_key,
        host=args.host,
        port=args.port,
        s3_endpoint=args.s3_endpoint,
        max_bytes=args.max_bytes,
    ) as standin:
        standin.delay = args.delay
        print(f"scan-files stand-in listening on {standin.url}", flush=True)
        stop.wait()
    if args.counts is not None:
        counts = {"scans_by_checksum": standin.scans_by_checksum, "requests": len(standin.requests)}
        partial = args.counts.with_suffix(".partial")  # the reader never sees half a file
        partial.write_text(json.dumps(counts))
        partial.replace(args.counts)
    print("scan-files stand-in stopped", flush=True)


if __name__ == "__main__":
    main()
