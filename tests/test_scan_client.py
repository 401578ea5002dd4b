"""ScanClient against the scan-files stand-in over real HTTP, plus the stand-in's own controls."""

import asyncio
import base64
import hashlib
import io
import logging
import os
import socket
import threading
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

from dd_api.scanning import attempts
from dd_api.scanning import client as client_module
from dd_api.scanning.client import ScanClient, ScanResult
from dd_api.scanning.source import BytesSource, FileSource, ScanSource, StoreSource
from dd_api.store import DocumentStore, Location, StoredDocument, StoreError
from dd_api.store.local import LocalStore
from tests.support import scanfiles as scanfiles_support
from tests.support.scanfiles import DEFAULT_API_KEY, EICAR, ScanFilesStandIn

scanfiles = scanfiles_support.scanfiles  # the shared fixture, as a conftest would re-export it

FAST = {"backoff_base": 0.01, "backoff_max": 0.05}
DOC = b"%PDF-1.4 hello world\n" * 100
REQUEST_ID = "req-123"
DOC_KEY = os.urandom(32)  # the document's own key, as an upload would get one
SOURCE_KINDS = ["bytes", "file", "store"]
# The reason when the deadline cuts the last attempt short, whatever the earlier ones hit.
CUT = "deadline reached mid-attempt"


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[LocalStore]:
    store = LocalStore(tmp_path / "documents")
    await store.open()
    yield store
    await store.close()


@pytest.fixture
def failures() -> list[str]:
    """What ``on_failure`` was told, in order (pass ``on_failure=failures.append``)."""
    return []


def make_client(http: httpx.AsyncClient, host: str, **kwargs: object) -> ScanClient:
    options: dict = {"api_key": DEFAULT_API_KEY, **FAST, **kwargs}
    return ScanClient(http, host=host, **options)


async def scan(
    client: ScanClient,
    source: bytes | ScanSource = DOC,
    *,
    deadline: float = 5.0,
    filename: str = "letter.pdf",
    mimetype: str = "application/pdf",
) -> ScanResult:
    if isinstance(source, bytes):
        source = BytesSource(source)
    return await client.scan(
        source, filename=filename, mimetype=mimetype, request_id=REQUEST_ID, deadline=deadline
    )


async def put_document(store: LocalStore, data: bytes, key: bytes | None = DOC_KEY) -> Location:
    location = Location(uuid.uuid4(), uuid.uuid4(), None)
    await store.put(
        location, io.BytesIO(data), size=len(data), mimetype="application/pdf", key=key, tags={}
    )
    return location


async def make_source(kind: str, data: bytes, tmp_path: Path, store: LocalStore) -> ScanSource:
    if kind == "bytes":
        return BytesSource(data)
    if kind == "file":
        path = tmp_path / "spooled.bin"
        path.write_bytes(data)
        return FileSource(path, len(data))
    return StoreSource(store, await put_document(store, data), DOC_KEY, len(data))


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def multipart_length(filename: str, mimetype: str, size: int) -> int:
    """Length of the body httpx renders for one file part (its boundaries are all 32 hex)."""
    files = {"file": (filename, b"\0" * size, mimetype)}
    return len(httpx.Request("POST", "http://scan.test", files=files).read())


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def elapsed_since(started: float) -> float:
    return asyncio.get_running_loop().time() - started


def now() -> float:
    return asyncio.get_running_loop().time()


class FlakyStore:
    """A real store whose first ``failures`` reads fail as an unreachable store's would
    (all of them when ``failures`` is None): at ``get``, or after the first chunk."""

    def __init__(self, store: DocumentStore, *, at: str, failures: int | None = 1) -> None:
        self._store = store
        self._at = at
        self._failures = failures
        self.gets = 0

    async def get(self, location: Location, key: bytes | None) -> StoredDocument:
        self.gets += 1
        if self._failures is not None and self.gets > self._failures:
            return await self._store.get(location, key)
        if self._at == "get":
            raise StoreError("connection reset")
        document = await self._store.get(location, key)
        return StoredDocument(
            mimetype=document.mimetype,
            size=document.size,
            chunks=_fail_after_first_chunk(document),
            release=document.close,
        )


async def _fail_after_first_chunk(document: StoredDocument) -> AsyncIterator[bytes]:
    try:
        async for chunk in document:
            yield chunk
            raise StoreError("read timed out")
    finally:
        await document.aclose()


# -- happy path ----------------------------------------------------------------------------------


async def test_bytes_are_scanned_clean_with_checksum(http, scanfiles, failures):
    result = await scan(make_client(http, scanfiles.url, on_failure=failures.append))

    assert result == ScanResult(
        verdict="clean", checksum=sha256(DOC), attempts=1, reason=None, retryable=False
    )
    [received] = scanfiles.requests
    assert received.sha256 == result.checksum
    assert received.size == len(DOC)
    assert scanfiles.scans_by_checksum == {result.checksum: 1}
    assert failures == []


@pytest.mark.parametrize("kind", SOURCE_KINDS)
async def test_each_source_is_streamed_with_content_length_and_hashed(
    http, scanfiles, tmp_path, store, kind
):
    # spans several of the sources' chunks (256 KiB) and the local store's segments (64 KiB)
    data = os.urandom(600 * 1024 + 123)
    source = await make_source(kind, data, tmp_path, store)

    result = await scan(make_client(http, scanfiles.url), source)

    assert (result.verdict, result.attempts) == ("clean", 1)
    assert result.checksum == sha256(data)
    [received] = scanfiles.requests
    assert (received.size, received.sha256) == (len(data), result.checksum)
    assert received.transfer_encoding_header is None  # not chunked
    # the exact length of the file part and its framing, declared up front
    assert received.content_length_header == str(
        multipart_length("letter.pdf", "application/pdf", len(data))
    )


async def test_file_source_is_streamed_and_left_in_place(http, scanfiles, tmp_path):
    data = os.urandom(3 * 1024 * 1024)
    path = tmp_path / "upload.bin"
    path.write_bytes(data)

    result = await scan(make_client(http, scanfiles.url), FileSource(path, len(data)))

    assert result.verdict == "clean"
    assert result.checksum == sha256(data)
    assert scanfiles.requests[0].sha256 == result.checksum
    assert path.read_bytes() == data  # the caller owns the file


async def test_store_source_streams_the_stored_document(http, scanfiles, store):
    data = os.urandom(200 * 1024)
    location = await put_document(store, data)

    result = await scan(
        make_client(http, scanfiles.url), StoreSource(store, location, DOC_KEY, len(data))
    )

    assert (result.verdict, result.checksum) == ("clean", sha256(data))
    [received] = scanfiles.requests
    assert (received.size, received.sha256) == (len(data), sha256(data))
    # read, not consumed: the document is still there for its recipient
    document = await store.get(location, DOC_KEY)
    try:
        assert b"".join([chunk async for chunk in document]) == data
    finally:
        await document.aclose()


async def test_eicar_is_malicious(http, scanfiles):
    result = await scan(make_client(http, scanfiles.url), b"prefix " + EICAR + b" suffix")

    assert (result.verdict, result.reason) == ("malicious", None)


async def test_other_verdicts_are_passed_through(http, scanfiles):
    scanfiles.set_verdict("unable_to_scan")

    result = await scan(make_client(http, scanfiles.url))

    assert (result.verdict, result.reason) == ("unable_to_scan", None)


async def test_request_carries_raw_key_request_id_and_file_part(http, scanfiles):
    await scan(make_client(http, scanfiles.url))

    [received] = scanfiles.requests
    assert received.headers["authorization"] == DEFAULT_API_KEY  # raw, no "Bearer "
    assert received.request_id == REQUEST_ID
    assert received.filename == "letter.pdf"
    assert received.content_type == "application/pdf"


@pytest.mark.parametrize(
    "mimetype",
    [
        "text/plain\r\nX-Injected: 1",
        "text/plain\nX-Injected: 1",
        "text/plain\x00",
        "tëxt/plain",
        "",
    ],
)
async def test_unsafe_mimetype_is_not_sent_verbatim(http, scanfiles, mimetype):
    result = await scan(make_client(http, scanfiles.url), mimetype=mimetype)

    assert result.verdict == "clean"
    assert scanfiles.requests[0].content_type == "application/octet-stream"


@pytest.mark.parametrize(
    "filename",
    [
        'say "cheese".pdf',
        "line\r\nbreak.pdf",
        "back\\slash\\.pdf",
        "überweisung 文件 🙂.pdf",
        'evil.pdf"\r\nContent-Type: text/html\r\n\r\n<script>',
        '"; name="other"; filename="x.exe',
        '\\"\r\n\\',
    ],
)
async def test_hostile_filename_arrives_as_one_well_formed_file_part(http, scanfiles, filename):
    result = await scan(make_client(http, scanfiles.url), filename=filename)

    assert (result.verdict, result.checksum) == ("clean", sha256(DOC))
    [received] = scanfiles.requests
    # the stand-in found the "file" part, with the document's bytes and declared type intact
    assert (received.size, received.sha256) == (len(DOC), sha256(DOC))
    assert received.content_type == "application/pdf"
    # line breaks travel percent-encoded; every other character reaches scan-files as given
    assert received.filename is not None
    assert "\r" not in received.filename and "\n" not in received.filename
    assert received.filename.replace("%0D", "\r").replace("%0A", "\n") == filename


# -- retries -------------------------------------------------------------------------------------


async def test_502_twice_then_clean(http, scanfiles, failures):
    scanfiles.fail_next(2, status=502)

    result = await scan(make_client(http, scanfiles.url, on_failure=failures.append))

    assert (result.verdict, result.attempts, result.reason) == ("clean", 3, None)
    # every retry re-sent the whole file, and the checksum covers exactly one copy of it
    assert [r.sha256 for r in scanfiles.requests] == [sha256(DOC)] * 3
    assert result.checksum == sha256(DOC)
    assert scanfiles.scans_by_checksum == {result.checksum: 1}
    assert failures == ["http 502", "http 502"]


@pytest.mark.parametrize("status", [500, 503, 504])
async def test_other_5xx_are_retried(http, scanfiles, status):
    scanfiles.fail_next(1, status=status)

    result = await scan(make_client(http, scanfiles.url))

    assert (result.verdict, result.attempts) == ("clean", 2)


@pytest.mark.parametrize("kind", SOURCE_KINDS)
async def test_retries_reread_the_source_from_the_start(http, scanfiles, tmp_path, store, kind):
    data = os.urandom(300 * 1024)
    source = await make_source(kind, data, tmp_path, store)
    scanfiles.fail_next(1, status=503)

    result = await scan(make_client(http, scanfiles.url), source)

    assert (result.verdict, result.attempts) == ("clean", 2)
    assert result.checksum == sha256(data)
    assert [(r.size, r.sha256) for r in scanfiles.requests] == [(len(data), sha256(data))] * 2


async def test_always_502_gives_up_at_the_deadline(http, scanfiles, failures):
    scanfiles.always_fail(502)
    started = now()

    result = await scan(make_client(http, scanfiles.url, on_failure=failures.append), deadline=0.5)

    assert elapsed_since(started) < 0.5 + 1.0  # generous for a loaded machine
    assert (result.verdict, result.retryable, result.checksum) == (None, True, "")
    # the last attempt may be cut off by the deadline instead of answered
    assert result.reason in ("http 502", CUT)
    assert result.attempts >= 2
    # ... and then the stand-in may not have recorded it yet
    assert result.attempts - 1 <= len(scanfiles.requests) <= result.attempts
    assert len(failures) == result.attempts
    assert set(failures) <= {"http 502", CUT}


async def test_no_time_left_means_no_attempt(http, scanfiles, failures):
    result = await scan(make_client(http, scanfiles.url, on_failure=failures.append), deadline=0)

    assert (result.verdict, result.attempts, result.retryable) == (None, 0, True)
    assert scanfiles.requests == []
    assert failures == []


async def test_wrong_key_is_not_retried(http, scanfiles, failures):
    client = make_client(http, scanfiles.url, api_key="wrong-key", on_failure=failures.append)

    result = await scan(client)

    assert (result.verdict, result.reason, result.attempts) == (None, "http 401", 1)
    assert (result.retryable, result.checksum) == (False, "")
    assert len(scanfiles.requests) == 1
    assert failures == ["http 401"]


TOO_LARGE = "http 413: the document is too large for scan-files"


@pytest.mark.parametrize(
    ("status", "reason"),
    [(400, "http 400"), (403, "http 403"), (404, "http 404"), (413, TOO_LARGE), (422, "http 422")],
)
async def test_other_4xx_are_not_retried(http, scanfiles, failures, status, reason):
    scanfiles.always_fail(status)

    result = await scan(make_client(http, scanfiles.url, on_failure=failures.append))

    assert (result.verdict, result.reason, result.attempts) == (None, reason, 1)
    assert result.retryable is False
    assert len(scanfiles.requests) == 1
    assert failures == [reason]


async def test_hung_attempt_times_out_then_retry_succeeds(http, scanfiles, failures):
    scanfiles.hang_next(1)
    client = make_client(http, scanfiles.url, attempt_timeout=0.3, on_failure=failures.append)

    result = await scan(client)

    assert (result.verdict, result.attempts, result.checksum) == ("clean", 2, sha256(DOC))
    assert len(scanfiles.requests) == 2
    assert failures == ["ReadTimeout"]


async def test_hung_scans_never_outlive_the_deadline(http, scanfiles):
    scanfiles.hang_next(100)
    started = now()

    result = await scan(make_client(http, scanfiles.url, attempt_timeout=60), deadline=0.5)

    assert elapsed_since(started) < 0.5 + 1.0
    assert (result.verdict, result.retryable) == (None, True)
    # the attempt's read timeout and the deadline fall together: either may fire first
    assert result.reason in ("ReadTimeout", CUT)


async def test_connection_refused_is_retried_then_no_verdict(http, failures):
    client = make_client(http, f"http://127.0.0.1:{closed_port()}", on_failure=failures.append)

    result = await scan(client, deadline=0.3)

    assert (result.verdict, result.retryable) == (None, True)
    assert result.reason in ("ConnectError", CUT)
    assert result.attempts >= 2
    assert result.checksum == ""  # nothing was scanned
    assert failures[:-1] == ["ConnectError"] * (result.attempts - 1)
    assert failures[-1:] == [result.reason]


async def test_429_is_retried(http, scanfiles, failures):
    scanfiles.fail_next(1, status=429)

    result = await scan(make_client(http, scanfiles.url, on_failure=failures.append))

    assert (result.verdict, result.attempts) == ("clean", 2)
    assert failures == ["http 429"]


async def test_429_retry_after_replaces_the_backoff(http, scanfiles, monkeypatch):
    # The backoff would always pick its ceiling, 60 s: past the deadline, so without the
    # Retry-After the client would give up after the first attempt.
    monkeypatch.setattr(attempts, "random", SimpleNamespace(uniform=lambda low, high: high))
    scanfiles.fail_next(1, status=429, retry_after=0)
    client = make_client(http, scanfiles.url, backoff_base=60.0, backoff_max=60.0)

    result = await scan(client, deadline=10.0)

    assert (result.verdict, result.attempts) == ("clean", 2)


async def test_429_retry_after_is_waited_for(http, scanfiles):
    scanfiles.fail_next(1, status=429, retry_after=0.3)
    started = now()

    result = await scan(make_client(http, scanfiles.url))

    assert (result.verdict, result.attempts) == ("clean", 2)
    assert elapsed_since(started) >= 0.29  # the backoff alone would be at most 0.01 s


async def test_429_retry_after_beyond_deadline_gives_up_without_retrying(http, scanfiles, failures):
    scanfiles.fail_next(1, status=429, retry_after=30)
    started = now()

    result = await scan(make_client(http, scanfiles.url, on_failure=failures.append), deadline=10)

    assert elapsed_since(started) < 5.0  # gave up at once instead of sleeping to the deadline
    assert (result.verdict, result.attempts, result.reason) == (None, 1, "http 429")
    assert result.retryable is True
    assert len(scanfiles.requests) == 1
    assert failures == ["http 429"]


async def test_200_without_verdict_is_retried():
    answers = iter(
        [
            httpx.Response(200, json={"scan_id": "x", "status": "completed"}),
            httpx.Response(200, text="not json"),
            httpx.Response(200, json=["clean"]),
            httpx.Response(200, json={"scan_id": "x", "status": "completed", "verdict": ""}),
            httpx.Response(200, json={"scan_id": "x", "status": "completed", "verdict": "clean"}),
        ]
    )
    transport = httpx.MockTransport(lambda request: next(answers))
    async with httpx.AsyncClient(transport=transport) as http:
        result = await scan(make_client(http, "http://scan.test"))

    assert (result.verdict, result.attempts, result.checksum) == ("clean", 5, sha256(DOC))


async def test_200_never_with_a_verdict_is_retryable():
    transport = httpx.MockTransport(lambda request: httpx.Response(200, json={"status": "x"}))
    async with httpx.AsyncClient(transport=transport) as http:
        result = await scan(make_client(http, "http://scan.test"), deadline=0.3)

    assert (result.verdict, result.retryable) == (None, True)
    assert result.reason in ("http 200 without verdict", CUT)
    assert result.attempts >= 2


# -- sources that cannot be read -----------------------------------------------------------------


@pytest.mark.parametrize("kind", ["missing", "directory"])
async def test_unreadable_spool_file_is_a_failure_not_an_exception(
    http, scanfiles, tmp_path, failures, kind
):
    path = tmp_path / "gone.bin"
    if kind == "directory":
        path.mkdir()

    client = make_client(http, scanfiles.url, on_failure=failures.append)
    result = await scan(client, FileSource(path, len(DOC)))

    assert (result.verdict, result.retryable, result.checksum) == (None, False, "")
    assert result.reason is not None and result.reason.startswith("spool file unreadable")
    assert failures == [result.reason]
    assert scanfiles.scans_by_checksum == {}


@pytest.mark.parametrize("error", [-1, 1], ids=["shorter", "longer"])
async def test_source_not_matching_its_size_gets_no_verdict(http, scanfiles, tmp_path, error):
    path = tmp_path / "changed.bin"
    path.write_bytes(DOC)

    result = await scan(make_client(http, scanfiles.url), FileSource(path, len(DOC) + error))

    assert (result.verdict, result.retryable, result.checksum) == (None, False, "")
    assert scanfiles.scans_by_checksum == {}


@pytest.mark.parametrize("key", [os.urandom(32), None], ids=["wrong key", "no key"])
async def test_store_source_with_a_key_that_does_not_open_it_fails_for_good(
    http, scanfiles, store, failures, caplog, key
):
    caplog.set_level(logging.DEBUG)
    location = await put_document(store, DOC)
    client = make_client(http, scanfiles.url, on_failure=failures.append)

    result = await scan(client, StoreSource(store, location, key, len(DOC)))

    assert (result.verdict, result.retryable, result.checksum) == (None, False, "")
    assert result.reason is not None and "key" in result.reason
    assert failures == [result.reason]
    assert scanfiles.scans_by_checksum == {}
    for secret in (DOC_KEY, key or b""):
        for shown in (secret.hex(), base64.b64encode(secret).decode(), repr(secret)[2:-1]):
            if shown:
                assert shown not in result.reason
                assert shown not in caplog.text


async def test_store_source_for_a_deleted_document_fails_for_good(http, scanfiles, store, failures):
    location = await put_document(store, DOC)
    await store.delete(location, DOC_KEY)
    client = make_client(http, scanfiles.url, on_failure=failures.append)

    result = await scan(client, StoreSource(store, location, DOC_KEY, len(DOC)))

    assert (result.verdict, result.retryable, result.checksum) == (None, False, "")
    assert result.reason == "document deleted"
    assert failures == ["document deleted"]
    assert scanfiles.scans_by_checksum == {}


@pytest.mark.parametrize("at", ["get", "stream"])
async def test_store_unavailable_is_retried(http, scanfiles, store, failures, at):
    data = os.urandom(200 * 1024)  # several segments, so "stream" fails part way
    flaky = FlakyStore(store, at=at)
    source = StoreSource(flaky, await put_document(store, data), DOC_KEY, len(data))

    result = await scan(make_client(http, scanfiles.url, on_failure=failures.append), source)

    assert (result.verdict, result.attempts, result.checksum) == ("clean", 2, sha256(data))
    assert flaky.gets == 2
    assert scanfiles.scans_by_checksum == {sha256(data): 1}  # the cut-off body was not scanned
    [failure] = failures
    assert failure.startswith("store unavailable" if at == "get" else "store read failed")


async def test_store_that_stays_down_gives_no_verdict_but_is_retryable(http, scanfiles, store):
    flaky = FlakyStore(store, at="get", failures=None)
    source = StoreSource(flaky, await put_document(store, DOC), DOC_KEY, len(DOC))

    result = await scan(make_client(http, scanfiles.url), source, deadline=0.3)

    assert (result.verdict, result.retryable, result.checksum) == (None, True, "")
    assert result.reason == CUT or str(result.reason).startswith("store unavailable")
    assert result.attempts >= 2
    assert scanfiles.scans_by_checksum == {}


# -- robustness ----------------------------------------------------------------------------------


async def test_bad_host_is_not_retried(http, failures):
    client = make_client(http, "scan.internal:6016", on_failure=failures.append)  # no scheme

    result = await scan(client)

    assert (result.verdict, result.attempts, result.retryable) == (None, 1, False)
    assert result.reason == "UnsupportedProtocol"
    assert failures == ["UnsupportedProtocol"]


async def test_cancellation_propagates(http, scanfiles, failures):
    scanfiles.hold()
    client = make_client(http, scanfiles.url, on_failure=failures.append)
    task = asyncio.create_task(scan(client))
    await scanfiles.wait_for_held_async(1)

    task.cancel()

    with pytest.raises(asyncio.CancelledError):
        await task
    assert failures == []


async def test_hashing_runs_off_the_event_loop(http, scanfiles, monkeypatch):
    loop_thread = threading.get_ident()
    hashes: list[_ThreadRecordingSha256] = []

    def sha256_factory() -> "_ThreadRecordingSha256":
        hashes.append(_ThreadRecordingSha256())
        return hashes[-1]

    monkeypatch.setattr(client_module, "hashlib", SimpleNamespace(sha256=sha256_factory))
    data = os.urandom(600 * 1024)  # several chunks

    result = await scan(make_client(http, scanfiles.url), data)

    assert result.checksum == sha256(data)
    threads = [thread for digest in hashes for thread in digest.threads]
    assert len(threads) >= 3
    assert loop_thread not in threads


class _ThreadRecordingSha256:
    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self.threads: list[int] = []

    def update(self, data: bytes) -> None:
        self.threads.append(threading.get_ident())
        self._hash.update(data)

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


async def test_logs_never_contain_the_key_or_the_content(http, scanfiles, store, caplog):
    caplog.set_level(logging.DEBUG)
    scanfiles.fail_next(1)
    location = await put_document(store, DOC)

    await scan(make_client(http, scanfiles.url))
    await scan(make_client(http, scanfiles.url, api_key="wrong-secret-key"))
    await scan(make_client(http, scanfiles.url), StoreSource(store, location, DOC_KEY, len(DOC)))
    await scan(make_client(http, scanfiles.url), StoreSource(store, location, bytes(32), len(DOC)))

    assert "retrying" in caplog.text
    assert "scan finished" not in caplog.text.lower()  # the scanner's line, not the client's
    for secret in (DEFAULT_API_KEY, "wrong-secret-key", DOC[:20].decode(), DOC_KEY.hex()):
        assert secret not in caplog.text
    retry = next(r for r in caplog.records if r.name == "dd_api.scanning")
    assert (retry.scan_request_id, retry.scan_attempts) == (REQUEST_ID, 1)
    assert "http 502" in retry.getMessage()


async def test_repr_hides_the_key(http):
    client = ScanClient(http, host="http://scan.test", api_key="top-secret")

    assert "top-secret" not in repr(client)
    assert "top-secret" not in str(client)


# -- the stand-in itself -------------------------------------------------------------------------


def test_standin_contract_over_http(scanfiles):
    with httpx.Client(base_url=scanfiles.url) as client:
        health = client.get("/healthcheck")
        unauthorised = client.post(
            "/clamav", files={"file": ("a.txt", b"x")}, headers={"Authorization": "Bearer x"}
        )
        missing = client.post(
            "/clamav", files={"other": ("a.txt", b"x")}, headers={"Authorization": "scan-key"}
        )
        scanfiles.fail_next(1)
        failed = client.post(
            "/clamav", files={"file": ("a.txt", b"x")}, headers={"Authorization": "scan-key"}
        )

    assert health.json() == {"database": {"able_to_connect": True}}
    assert health.headers["Strict-Transport-Security"].startswith("max-age=")
    assert (unauthorised.status_code, unauthorised.json()) == (
        401,
        {"detail": "Unauthorized API request"},
    )
    assert missing.status_code == 422
    assert isinstance(missing.json()["detail"], list)
    assert (failed.status_code, failed.json()) == (
        502,
        {"error": "error scanning file [a.txt] with clamav"},
    )
    assert len(scanfiles.requests) == 3
    assert scanfiles.scans_by_checksum == {}


async def test_standin_hold_blocks_scans_until_release(http, scanfiles):
    client = make_client(http, scanfiles.url)
    scanfiles.hold()

    tasks = [asyncio.create_task(scan(client, DOC + bytes([i]))) for i in range(3)]
    await scanfiles.wait_for_held_async(3)

    assert scanfiles.held_count == 3
    assert scanfiles.in_flight == 3
    assert len(scanfiles.requests) == 3  # bodies were fully received before blocking
    assert scanfiles.scans_by_checksum == {}
    assert not any(task.done() for task in tasks)

    scanfiles.release()
    results = await asyncio.gather(*tasks)

    assert [r.verdict for r in results] == ["clean"] * 3
    assert scanfiles.max_in_flight == 3
    assert (scanfiles.in_flight, scanfiles.held_count) == (0, 0)
    assert sum(scanfiles.scans_by_checksum.values()) == 3


def test_standin_wait_for_held_times_out_and_stop_frees_held_requests():
    with ScanFilesStandIn(api_key="k") as standin:
        with pytest.raises(TimeoutError):
            standin.wait_for_held(1, timeout=0.05)
        standin.hold()
        with httpx.Client(base_url=standin.url, timeout=5) as client:
            pool = [_post_in_thread(client, "k") for _ in range(2)]
            standin.wait_for_held(2, timeout=5)
            standin.stop()  # must not wait for the held requests to be released by hand
            for thread in pool:
                thread.join(timeout=5)
                assert not thread.is_alive()


def _post_in_thread(client: httpx.Client, key: str) -> threading.Thread:
    def post() -> None:
        client.post("/clamav", files={"file": ("a.txt", b"x")}, headers={"Authorization": key})

    thread = threading.Thread(target=post, daemon=True)
    thread.start()
    return thread
