"""A stand-in for the scan-files API (cds-snc/scan-files) over real HTTP on 127.0.0.1.

It speaks the part of the real contract dd-api uses:

* ``POST /clamav`` with multipart field ``file``. ``Authorization`` must equal the raw api key
  (no ``Bearer``), else 401 ``{"detail": "Unauthorized API request"}``; no ``file`` part -> 422
  ``{"detail": [...]}``; otherwise 200 ``{"scan_id": "<uuid4>", "status": "completed",
  "verdict": "clean"}``, or ``"malicious"`` when the file contains the EICAR test string.
* ``GET /healthcheck`` -> 200 ``{"database": {"able_to_connect": true}}`` (no auth).
* Every response carries ``Strict-Transport-Security`` and ``Content-Security-Policy``.

Usage::

    with ScanFilesStandIn(api_key="scan-key") as standin:
        client = ScanClient(http, host=standin.url, api_key="scan-key")

or the function-scoped pytest fixture ``scanfiles`` (api key ``DEFAULT_API_KEY``), which a
conftest can re-export with ``from tests.support.scanfiles import scanfiles``.

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
* ``delay``: float attribute, seconds to sleep before answering each scan (benchmarks).
* ``fail_next(count, status=502, retry_after=None)``: the next ``count`` scans answer ``status``
  (5xx with the real body ``{"error": "error scanning file [<name>] with clamav"}``, other
  codes with ``{"detail": "<reason phrase>"}``; optional ``Retry-After`` header).
  ``always_fail(status, retry_after=None)`` fails every scan until ``stop_failing()``, which
  also clears ``fail_next``.
* ``set_verdict(verdict)``: verdict for non-EICAR files (``None`` restores ``"clean"``).

Observations (snapshots, safe to read while requests run):

* ``requests``: every ``POST /clamav`` received (including 401/422/failed/hung ones), in arrival
  order, as ``RecordedRequest`` (headers are a case-insensitive ``werkzeug`` ``Headers``).
* ``scans_by_checksum``: ``Counter`` of SHA-256 of scanned file bytes, counting only scans that
  answered with a verdict.
* ``in_flight`` / ``max_in_flight``: scans being handled now / at most at once (hung and held
  requests count until they are answered, even if the client has already given up).

``stop()`` frees held and hung requests and shuts the server down promptly; it is idempotent.

Run as a process (benchmarks): ``python -m tests.support.scanfiles --port 6016 --api-key KEY
--delay 2.0`` serves until SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from http import HTTPStatus
from types import FrameType
from typing import Any, Self

import pytest
from werkzeug.datastructures import FileStorage, Headers
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

__all__ = [
    "DEFAULT_API_KEY",
    "EICAR",
    "RecordedRequest",
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

    @property
    def request_id(self) -> str | None:
        return self.headers.get("X-Scanning-Request-Id")


class _QuietHandler(WSGIRequestHandler):
    """Keeps werkzeug's per-request access log out of test output; errors are still logged."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass


class ScanFilesStandIn:
    """Threaded scan-files stand-in; see the module docstring for the contract and controls."""

    def __init__(
        self, api_key: str = DEFAULT_API_KEY, *, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.api_key = api_key
        self.delay = 0.0
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
        if request.path == "/healthcheck" and request.method == "GET":
            return _json(200, {"database": {"able_to_connect": True}})
        if request.path == "/clamav" and request.method == "POST":
            return self._clamav(request)
        if request.path in ("/healthcheck", "/clamav"):
            return _json(405, {"detail": "Method Not Allowed"})
        return _json(404, {"detail": "Not Found"})

    def _clamav(self, request: Request) -> Response:
        # Always consume the body first so the client never sees a reset mid-upload.
        upload = request.files.get("file")
        data = upload.read() if upload is not None else None
        sha256 = hashlib.sha256(data).hexdigest() if data is not None else None
        self._record(request, upload, data, sha256)
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
        with self._cond:
            verdict = "malicious" if EICAR in data else self._verdict
            self._scans_by_checksum[sha256] += 1
        return _json(200, {"scan_id": str(uuid.uuid4()), "status": "completed", "verdict": verdict})

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
    args = parser.parse_args(argv)

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    with ScanFilesStandIn(api_key=args.api_key, host=args.host, port=args.port) as standin:
        standin.delay = args.delay
        print(f"scan-files stand-in listening on {standin.url}", flush=True)
        stop.wait()
    print("scan-files stand-in stopped", flush=True)


if __name__ == "__main__":
    main()
