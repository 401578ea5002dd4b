"""ScanClient against the scan-files stand-in over real HTTP, plus the stand-in's own controls."""

import asyncio
import hashlib
import logging
import os
import socket
import threading
from collections.abc import AsyncIterator

import httpx
import pytest

from dd_api.scanning.client import ScanClient, ScanResult
from tests.support import scanfiles as scanfiles_support
from tests.support.scanfiles import DEFAULT_API_KEY, EICAR, ScanFilesStandIn

scanfiles = scanfiles_support.scanfiles  # the shared fixture, as a conftest would re-export it

FAST = {"backoff_base": 0.01, "backoff_max": 0.05}
DOC = b"%PDF-1.4 hello world\n" * 100


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


def make_client(http: httpx.AsyncClient, host: str, **kwargs: float | str) -> ScanClient:
    options: dict = {"api_key": DEFAULT_API_KEY, "deadline": 5.0, **FAST, **kwargs}
    return ScanClient(http, host=host, **options)


async def scan(client: ScanClient, source: bytes | os.PathLike[str] | str = DOC) -> ScanResult:
    return await client.scan(
        source, filename="letter.pdf", mimetype="application/pdf", request_id="req-123"
    )


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- happy path ----------------------------------------------------------------------------------


async def test_bytes_are_scanned_clean_with_checksum(http, scanfiles):
    result = await scan(make_client(http, scanfiles.url))

    assert result == ScanResult(
        verdict="clean",
        checksum=hashlib.sha256(DOC).hexdigest(),
        scanner="clamav",
        attempts=1,
        reason=None,
    )
    [received] = scanfiles.requests
    assert received.sha256 == result.checksum
    assert received.size == len(DOC)
    assert scanfiles.scans_by_checksum == {result.checksum: 1}


async def test_temp_file_path_is_streamed_and_left_in_place(http, scanfiles, tmp_path):
    data = os.urandom(3 * 1024 * 1024)
    path = tmp_path / "upload.bin"
    path.write_bytes(data)

    result = await scan(make_client(http, scanfiles.url), path)

    assert result.verdict == "clean"
    assert result.checksum == hashlib.sha256(data).hexdigest()
    assert scanfiles.requests[0].sha256 == result.checksum
    assert path.read_bytes() == data  # the caller owns the file


async def test_str_path_is_accepted(http, scanfiles, tmp_path):
    path = tmp_path / "upload.txt"
    path.write_bytes(DOC)

    result = await scan(make_client(http, scanfiles.url), str(path))

    assert (result.verdict, result.checksum) == ("clean", hashlib.sha256(DOC).hexdigest())


async def test_eicar_is_malicious(http, scanfiles):
    result = await scan(make_client(http, scanfiles.url), b"prefix " + EICAR + b" suffix")

    assert result.verdict == "malicious"
    assert result.reason is None


async def test_other_verdicts_are_passed_through(http, scanfiles):
    scanfiles.set_verdict("unable_to_scan")

    result = await scan(make_client(http, scanfiles.url))

    assert (result.verdict, result.reason) == ("unable_to_scan", None)


async def test_request_carries_raw_key_request_id_and_file_part(http, scanfiles):
    await scan(make_client(http, scanfiles.url))

    [received] = scanfiles.requests
    assert received.headers["authorization"] == DEFAULT_API_KEY  # raw, no "Bearer "
    assert received.request_id == "req-123"
    assert received.filename == "letter.pdf"
    assert received.content_type == "application/pdf"


@pytest.mark.parametrize("as_path", [False, True], ids=["bytes", "path"])
async def test_body_has_content_length_not_chunked(http, scanfiles, tmp_path, as_path):
    source: bytes | os.PathLike[str] = DOC
    if as_path:
        source = tmp_path / "doc.pdf"
        source.write_bytes(DOC)

    await scan(make_client(http, scanfiles.url), source)

    [received] = scanfiles.requests
    assert received.transfer_encoding_header is None
    assert received.content_length_header is not None
    assert int(received.content_length_header) > len(DOC)  # file plus multipart framing


async def test_unsafe_mimetype_is_not_sent_verbatim(http, scanfiles):
    client = make_client(http, scanfiles.url)

    await client.scan(
        DOC, filename="a.pdf", mimetype="text/plain\r\nX-Injected: 1", request_id="req-123"
    )

    assert scanfiles.requests[0].content_type == "application/octet-stream"


# -- retries -------------------------------------------------------------------------------------


async def test_502_twice_then_clean(http, scanfiles):
    scanfiles.fail_next(2, status=502)

    result = await scan(make_client(http, scanfiles.url))

    assert (result.verdict, result.attempts, result.reason) == ("clean", 3, None)
    # every retry re-sent the whole file, and the checksum covers exactly one copy of it
    assert [r.sha256 for r in scanfiles.requests] == [hashlib.sha256(DOC).hexdigest()] * 3
    assert result.checksum == hashlib.sha256(DOC).hexdigest()
    assert scanfiles.scans_by_checksum == {result.checksum: 1}


async def test_retries_of_a_file_path_rehash_from_the_start(http, scanfiles, tmp_path):
    data = os.urandom(300 * 1024)
    path = tmp_path / "upload.bin"
    path.write_bytes(data)
    scanfiles.fail_next(1, status=503)

    result = await scan(make_client(http, scanfiles.url), path)

    assert (result.verdict, result.attempts) == ("clean", 2)
    assert result.checksum == hashlib.sha256(data).hexdigest()


async def test_always_502_gives_up_at_the_deadline(http, scanfiles):
    scanfiles.always_fail(502)

    result = await scan(make_client(http, scanfiles.url, deadline=0.5))

    assert result.verdict == "error"
    assert result.reason == f"deadline exceeded after {result.attempts} attempts"
    assert result.attempts >= 2
    # the last attempt may be cut off by the deadline before the stand-in has recorded it
    assert result.attempts - 1 <= len(scanfiles.requests) <= result.attempts
    assert result.checksum == hashlib.sha256(DOC).hexdigest()


async def test_wrong_key_is_not_retried(http, scanfiles):
    client = make_client(http, scanfiles.url, api_key="wrong-key")

    result = await scan(client)

    assert (result.verdict, result.reason, result.attempts) == ("error", "http 401", 1)
    assert len(scanfiles.requests) == 1
    assert result.checksum == hashlib.sha256(DOC).hexdigest()


@pytest.mark.parametrize("status", [400, 403, 404, 413])
async def test_other_4xx_are_not_retried(http, scanfiles, status):
    scanfiles.always_fail(status)

    result = await scan(make_client(http, scanfiles.url))

    assert (result.verdict, result.reason, result.attempts) == ("error", f"http {status}", 1)
    assert len(scanfiles.requests) == 1


async def test_hung_attempt_times_out_then_retry_succeeds(http, scanfiles):
    scanfiles.hang_next(1)

    result = await scan(make_client(http, scanfiles.url, attempt_timeout=0.3))

    assert (result.verdict, result.attempts) == ("clean", 2)
    assert len(scanfiles.requests) == 2


async def test_connection_refused_is_retried_then_error(http):
    client = make_client(http, f"http://127.0.0.1:{closed_port()}", deadline=0.3)

    result = await scan(client)

    assert result.verdict == "error"
    assert result.attempts >= 2
    assert result.reason == f"deadline exceeded after {result.attempts} attempts"
    # nothing was ever sent, yet the checksum still describes the document
    assert result.checksum == hashlib.sha256(DOC).hexdigest()


async def test_429_is_retried(http, scanfiles):
    scanfiles.fail_next(1, status=429)

    result = await scan(make_client(http, scanfiles.url))

    assert (result.verdict, result.attempts) == ("clean", 2)


async def test_429_retry_after_is_honoured(http, scanfiles):
    scanfiles.fail_next(1, status=429, retry_after=0)

    result = await scan(make_client(http, scanfiles.url))

    assert (result.verdict, result.attempts) == ("clean", 2)


async def test_429_retry_after_beyond_deadline_gives_up_without_retrying(http, scanfiles):
    scanfiles.fail_next(1, status=429, retry_after=30)

    result = await scan(make_client(http, scanfiles.url, deadline=2.0))

    assert (result.verdict, result.attempts) == ("error", 1)
    assert result.reason == "deadline exceeded after 1 attempts"
    assert len(scanfiles.requests) == 1


async def test_200_without_verdict_is_retried():
    answers = iter(
        [
            httpx.Response(200, json={"scan_id": "x", "status": "completed"}),
            httpx.Response(200, text="not json"),
            httpx.Response(200, json={"scan_id": "x", "status": "completed", "verdict": "clean"}),
        ]
    )
    transport = httpx.MockTransport(lambda request: next(answers))
    async with httpx.AsyncClient(transport=transport) as http:
        result = await scan(make_client(http, "http://scan.test"))

    assert (result.verdict, result.attempts) == ("clean", 3)


# -- robustness ----------------------------------------------------------------------------------


async def test_missing_file_is_an_error_not_an_exception(http, scanfiles, tmp_path):
    result = await scan(make_client(http, scanfiles.url), tmp_path / "gone.bin")

    assert (result.verdict, result.attempts, result.checksum) == ("error", 0, "")
    assert result.reason == "cannot read source: FileNotFoundError"
    assert scanfiles.requests == []


async def test_bad_host_is_an_error_not_an_exception(http):
    result = await scan(make_client(http, "scan.internal:6016"))  # no scheme

    assert (result.verdict, result.attempts) == ("error", 1)
    assert result.reason == "UnsupportedProtocol"


async def test_cancellation_propagates(http, scanfiles):
    scanfiles.hold()
    task = asyncio.create_task(scan(make_client(http, scanfiles.url)))
    await scanfiles.wait_for_held_async(1)

    task.cancel()

    with pytest.raises(asyncio.CancelledError):
        await task


async def test_logs_never_contain_the_key_or_the_content(http, scanfiles, caplog):
    caplog.set_level(logging.DEBUG)
    scanfiles.fail_next(1)

    await scan(make_client(http, scanfiles.url))
    await scan(make_client(http, scanfiles.url, api_key="wrong-secret-key"))

    assert "retrying" in caplog.text
    assert "scan finished" in caplog.text
    for secret in (DEFAULT_API_KEY, "wrong-secret-key", DOC[:20].decode()):
        assert secret not in caplog.text
    retry = next(r for r in caplog.records if r.name == "dd_api.scanning")
    assert (retry.scan_request_id, retry.scan_attempts, retry.scan_failure) == (
        "req-123",
        1,
        "http 502",
    )


def test_repr_hides_the_key(http):
    client = ScanClient(http, host="http://scan.test", api_key="top-secret")

    assert "top-secret" not in repr(client)


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
