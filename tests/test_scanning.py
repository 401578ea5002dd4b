"""Background scanning: the 201 never waits, the verdict lands as tags, downloads obey it."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import tempfile
import time
from io import BytesIO
from pathlib import Path
from urllib.parse import urlsplit
from uuid import UUID

import dd_compat
import pytest
from werkzeug.datastructures import FileStorage

from dd_api.app import create_app
from dd_api.scanning.scanner import write_verdict
from dd_api.store import Location, StoreError
from tests.helpers import AUTH, SERVICE_ID, post_form, running, upload
from tests.helpers import document as document_part
from tests.support.scanfiles import EICAR

PDF = b"%PDF-1.4 file contents"
EICAR_TXT = EICAR.encode() if isinstance(EICAR, str) else EICAR


GD = "GuardDutyMalwareScanStatus"


def path_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}"


async def verdict(client, body: dict, sending_method: str | None = None):
    form = {"sending_method": sending_method} if sending_method else None
    response = await post_form(
        client,
        f"/services/{SERVICE_ID}/documents/{body['id']}/scan-verdict",
        form=form,
        headers=AUTH,
    )
    return response.status_code, await response.get_json()


async def scans_done(app) -> None:
    await asyncio.gather(*app.background_tasks)


# a fast-path window of 1 s, messages back 2 s after the upload, retries within 1 s
QUICK_QUEUE = {
    "SCAN_DEADLINE_SECONDS": "1",
    "SCAN_QUEUE_DELAY_SECONDS": "2",
    "SCAN_RETRY_MAX_SECONDS": "1",
    "SCAN_ATTEMPT_TIMEOUT_SECONDS": "2",
}


async def queued(queue) -> tuple[int, int]:
    depth = await queue.depth()
    return depth.visible, depth.delayed


async def until(probe, wanted, timeout: float = 30.0):
    """Poll ``await probe()`` until it returns ``wanted``; fail with the last value."""
    deadline = time.monotonic() + timeout
    while (got := await probe()) != wanted:
        assert time.monotonic() < deadline, f"still {got!r} after {timeout} s"
        await asyncio.sleep(0.1)
    return got


def store_of(app):
    return app.extensions["dd_api"].store


def location_of(body: dict) -> Location:
    return Location(UUID(SERVICE_ID), UUID(body["id"]), body["sending_method"])


@pytest.fixture
def make_client(base_env, store_env):
    def make(**env: str):
        return running(create_app({**base_env, **store_env, **env}))

    return make


async def test_upload_answers_before_the_scan_and_the_verdict_follows(client, scanfiles) -> None:
    scanfiles.hold()
    body = await upload(client, PDF)  # answered while the scan is held
    await scanfiles.wait_for_held_async(1)
    assert await verdict(client, body) == (428, {"error": "Content scanning is in progress"})
    scanfiles.release()
    await scans_done(client.app)
    assert await verdict(client, body) == (200, {"scan_verdict": "clean"})


async def test_verdict_tags_are_written_in_one_set(client, scanfiles) -> None:
    body = await upload(client, PDF)
    await scans_done(client.app)
    tags = await store_of(client.app).get_tags(location_of(body))
    assert tags["av-status"] == "clean"
    assert tags["av-scanner"] == "clamav"
    assert tags["av-checksum"] == hashlib.sha256(PDF).hexdigest()
    assert abs(int(tags["av-timestamp"]) - time.time() * 1000) < 60_000
    assert scanfiles.scans_by_checksum[hashlib.sha256(PDF).hexdigest()] == 1


async def test_a_verdict_keeps_the_tags_dd_api_did_not_write(client, scanfiles) -> None:
    scanfiles.hold()
    body = await upload(client, PDF)
    await scanfiles.wait_for_held_async(1)
    # GuardDuty tags the object while our scan runs
    store = store_of(client.app)
    tags = await store.get_tags(location_of(body))
    await store.put_tags(location_of(body), {**tags, GD: "UNSUPPORTED", "owner": "ops"})
    scanfiles.release()
    await scans_done(client.app)
    tags = await store.get_tags(location_of(body))
    assert (tags["av-status"], tags[GD], tags["owner"]) == ("clean", "UNSUPPORTED", "ops")


@pytest.mark.parametrize(("current", "written"), [("malicious", "error"), ("clean", "error")])
async def test_a_verdict_never_replaces_one_that_says_more(client, current, written) -> None:
    body = await upload(client, PDF)
    await scans_done(client.app)
    store = store_of(client.app)
    await store.put_tags(location_of(body), {"av-status": current})
    await write_verdict(store, location_of(body), written)
    assert (await store.get_tags(location_of(body)))["av-status"] == current


async def test_a_later_malicious_verdict_replaces_clean(client) -> None:
    body = await upload(client, PDF)
    await scans_done(client.app)
    store = store_of(client.app)
    await write_verdict(store, location_of(body), "malicious")
    assert (await store.get_tags(location_of(body)))["av-status"] == "malicious"


async def test_scan_request_follows_the_scan_files_contract(client, scanfiles) -> None:
    body = await upload(client, b"Canada", filename="note.txt")
    await scans_done(client.app)
    (request,) = scanfiles.requests
    assert request.headers["Authorization"] == scanfiles.api_key  # raw token, no Bearer
    assert request.filename == "note.txt"
    assert request.content_type == "text/plain"
    assert request.size == 6
    assert request.headers.get("X-Scanning-Request-Id")
    assert body["mime_type"] == "text/plain"


async def test_eicar_is_blocked_everywhere(client, scanfiles) -> None:
    body = await upload(client, EICAR_TXT, filename="eicar.txt", sending_method="attach")
    await scans_done(client.app)
    assert await verdict(client, body, "attach") == (423, {"error": "Malicious content detected"})
    direct = await client.get(path_of(body["direct_file_url"]))
    assert direct.status_code == 423
    assert await direct.get_json() == {"error": "Document download blocked"}
    short = await client.get(path_of(body["url"]))
    assert short.status_code == 404
    assert EICAR_TXT not in await short.get_data()


async def test_502s_are_retried(make_client, scanfiles) -> None:
    scanfiles.fail_next(2, status=502)
    async with make_client() as client:
        body = await upload(client, PDF)
        await scans_done(client.app)
        assert await verdict(client, body) == (200, {"scan_verdict": "clean"})
    assert len(scanfiles.requests) == 3


async def test_an_outage_delays_the_verdict_and_the_queue_delivers_it(
    make_client, scanfiles
) -> None:
    scanfiles.always_fail(502)
    async with make_client(**QUICK_QUEUE) as client:
        body = await upload(client, PDF)
        await scans_done(client.app)  # the fast path gave up without writing a verdict
        assert await verdict(client, body) == (428, {"error": "Content scanning is in progress"})
        # a failed scan does not hide the document: the email may already be out
        assert (await client.get(path_of(body["url"]))).status_code == 200
        scanfiles.stop_failing()
        await until(lambda: verdict(client, body), (200, {"scan_verdict": "clean"}))
    assert scanfiles.scans_by_checksum[hashlib.sha256(PDF).hexdigest()] == 1


async def test_an_outage_past_the_maximum_age_gives_scan_failed(make_client, scanfiles) -> None:
    scanfiles.always_fail(502)
    async with make_client(**QUICK_QUEUE, PENDING_SCAN_MAX_AGE_SECONDS="1") as client:
        body = await upload(client, PDF)
        await until(lambda: verdict(client, body), (422, {"scan_verdict": "scan_failed"}))
        assert (await store_of(client.app).get_tags(location_of(body)))["av-status"] == "error"
        assert (await client.get(path_of(body["url"]))).status_code == 200
    assert len(scanfiles.requests) >= 2


async def test_wrong_scan_files_key_is_not_retried(make_client, scanfiles) -> None:
    async with make_client(ANTIVIRUS_API_KEY="not-the-key") as client:
        body = await upload(client, PDF)
        await scans_done(client.app)
        assert await verdict(client, body) == (422, {"scan_verdict": "scan_failed"})
    assert len(scanfiles.requests) == 1


async def test_a_hung_scan_times_out_and_is_retried(make_client, scanfiles) -> None:
    scanfiles.hang_next(1)
    async with make_client(SCAN_ATTEMPT_TIMEOUT_SECONDS="0.5") as client:
        body = await upload(client, PDF)
        await scans_done(client.app)
        assert await verdict(client, body) == (200, {"scan_verdict": "clean"})
    scanfiles.release()
    assert len(scanfiles.requests) == 2


async def test_concurrency_is_bounded_and_uploads_do_not_wait(make_client, scanfiles) -> None:
    scanfiles.hold()
    async with make_client(SCAN_CONCURRENCY="2") as client:
        bodies = [await upload(client, f"Canada {n}".encode()) for n in range(3)]
        await scanfiles.wait_for_held_async(2)
        # the third upload kept nothing: its message waits in the queue, visible, because
        # no slot is free to receive it
        queue = client.app.extensions["dd_api"].queue
        await until(lambda: queued(queue), (1, 2))
        assert scanfiles.held_count == 2
        scanfiles.release()
        for body in bodies:
            await until(lambda body=body: verdict(client, body), (200, {"scan_verdict": "clean"}))
    assert scanfiles.max_in_flight == 2


BIG = b"Canada " * 300_000  # ~2 MiB, over the 512 KiB in-memory threshold


@pytest.fixture
def scratch(tmp_path, monkeypatch) -> Path:
    """The temp directory: large uploads are spooled there for their scans."""
    path = tmp_path / "scratch"
    path.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(path))
    return path


async def test_large_documents_are_scanned_from_a_temp_file_that_is_removed(
    make_client, scanfiles, scratch
) -> None:
    async with make_client() as client:
        scanfiles.hold()
        body = await upload(client, BIG, filename="big.txt")
        await scanfiles.wait_for_held_async(1)
        assert len(list(scratch.rglob("upload-*"))) == 1
        scanfiles.release()
        await scans_done(client.app)
        tags = await store_of(client.app).get_tags(location_of(body))
    assert tags["av-checksum"] == hashlib.sha256(BIG).hexdigest()
    assert not list(scratch.rglob("upload-*"))


async def test_a_refused_large_upload_leaves_no_temp_file(make_client, scratch) -> None:
    async with make_client() as client:
        response = await post_form(
            client,
            f"/services/{SERVICE_ID}/documents",
            files=document_part(os.urandom(len(BIG))),  # application/octet-stream
            headers=AUTH,
        )
        assert response.status_code == 400
        assert not list(scratch.rglob("upload-*"))


async def test_a_large_upload_that_cannot_be_stored_leaves_no_temp_file(
    make_client, scratch, monkeypatch
) -> None:
    async with make_client() as client:

        async def fail(*args, **kwargs):
            raise StoreError("injected")  # a store that fails on demand does not exist

        monkeypatch.setattr(store_of(client.app), "put", fail)
        response = await post_form(
            client,
            f"/services/{SERVICE_ID}/documents",
            files=document_part(BIG, filename="big.txt"),
            headers=AUTH,
        )
        assert response.status_code == 503
        assert not list(scratch.rglob("upload-*"))


async def test_extra_large_file_parts_are_not_kept(make_client, scanfiles, scratch) -> None:
    files = {
        "attachment": FileStorage(BytesIO(BIG), filename="other.txt"),
        **document_part(BIG[::-1], filename="big.txt"),
        "another": FileStorage(BytesIO(BIG), filename="more.txt"),
    }
    async with make_client() as client:
        scanfiles.hold()
        response = await post_form(
            client, f"/services/{SERVICE_ID}/documents", files=files, headers=AUTH
        )
        assert response.status_code == 201
        # the document was not the part spooled for a scan: nothing is kept, and the queue
        # scans it from the store
        await scanfiles.wait_for_held_async(1)
        assert not list(scratch.rglob("upload-*"))
        scanfiles.release()
        body = (await response.get_json())["document"]
        await until(lambda: verdict(client, body), (200, {"scan_verdict": "clean"}))
        tags = await store_of(client.app).get_tags(location_of(body))
    assert tags["av-checksum"] == hashlib.sha256(BIG[::-1]).hexdigest()


async def test_shutdown_lets_a_running_scan_finish(make_client, scanfiles) -> None:
    scanfiles.delay = 1.0  # shorter than BACKGROUND_TASK_SHUTDOWN_TIMEOUT (3 s)
    async with make_client() as client:
        body = await upload(client, PDF)
        app = client.app
    # the app has shut down; the verdict was written before it did
    async with running(app) as client:
        assert await verdict(client, body) == (200, {"scan_verdict": "clean"})


async def test_shutdown_timeout_leaves_in_progress_and_names_the_document(
    make_client, scanfiles, caplog
) -> None:
    scanfiles.hold()  # never released before shutdown
    caplog.set_level(logging.INFO, logger="dd_api")
    async with make_client(BACKGROUND_TASK_SHUTDOWN_TIMEOUT="0.5") as client:
        body = await upload(client, PDF)
        await scanfiles.wait_for_held_async(1)
        app = client.app
    scanfiles.release()
    records = [r for r in caplog.records if "shutting down" in r.getMessage()]
    assert records and records[0].document_id == body["id"]
    async with running(app) as client:
        assert await verdict(client, body) == (428, {"error": "Content scanning is in progress"})


@pytest.mark.parametrize(
    ("tags", "status", "response"),
    [
        ({"av-status": "clean"}, 200, {"scan_verdict": "clean"}),
        ({GD: "NO_THREATS_FOUND"}, 200, {"scan_verdict": "NO_THREATS_FOUND"}),
        ({}, 428, {"error": "Content scanning is in progress"}),
        ({"av-status": "in_progress"}, 428, {"error": "Content scanning is in progress"}),
        ({"av-status": "malicious"}, 423, {"error": "Malicious content detected"}),
        ({"av-status": "suspicious"}, 423, {"error": "Malicious content detected"}),
        ({GD: "THREATS_FOUND"}, 423, {"error": "Malicious content detected"}),
        ({GD: "UNSUPPORTED"}, 422, {"scan_verdict": "scan_unsupported"}),
        ({"av-status": "error"}, 422, {"scan_verdict": "scan_failed"}),
        ({"av-status": "unable_to_scan"}, 422, {"scan_verdict": "scan_failed"}),
        ({"av-status": "failed_to_start"}, 422, {"scan_verdict": "scan_failed"}),
        ({"av-status": "unknown"}, 422, {"scan_verdict": "scan_failed"}),
        ({"av-status": "something new"}, 422, {"scan_verdict": "scan_failed"}),
        ({GD: "FAILED"}, 422, {"scan_verdict": "scan_failed"}),
        ({GD: "ACCESS_DENIED"}, 422, {"scan_verdict": "scan_failed"}),
        ({GD: "THREATS_FOUND", "av-status": "clean"}, 423, {"error": "Malicious content detected"}),
        # a threat found by either scanner wins over whatever the other one says
        *(
            ({GD: gd, "av-status": own}, 423, {"error": "Malicious content detected"})
            for gd in ("NO_THREATS_FOUND", "UNSUPPORTED", "FAILED", "ACCESS_DENIED")
            for own in ("malicious", "suspicious")
        ),
        ({GD: "UNSUPPORTED", "av-status": "clean"}, 422, {"scan_verdict": "scan_unsupported"}),
        ({GD: "NO_THREATS_FOUND", "av-status": "error"}, 200, {"scan_verdict": "NO_THREATS_FOUND"}),
        ({GD: "", "av-status": "malicious"}, 423, {"error": "Malicious content detected"}),
    ],
)
async def test_verdict_table(client, tags, status, response) -> None:
    body = await upload(client, PDF, sending_method="attach")
    await scans_done(client.app)
    await store_of(client.app).put_tags(location_of(body), tags)
    assert await verdict(client, body, "attach") == (status, response)
    direct = await client.get(path_of(body["direct_file_url"]))
    short = await client.get(path_of(body["url"]))
    if status == 423:
        assert (direct.status_code, short.status_code) == (423, 404)
    else:
        assert (direct.status_code, short.status_code) == (200, 200)


async def test_verdict_for_a_missing_document_is_404(client) -> None:
    status, body = await verdict(client, {"id": "44444444-4444-4444-4444-444444444444"})
    assert (status, body) == (404, {"error": "Document not found"})


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer nope"}])
async def test_verdict_needs_a_token(client, headers) -> None:
    body = await upload(client, PDF)
    response = await post_form(
        client, f"/services/{SERVICE_ID}/documents/{body['id']}/scan-verdict", headers=headers
    )
    assert response.status_code in (401, 403)


@pytest.mark.parametrize(
    ("age_seconds", "status"), [(30, 428), (659, 428), (661, 408), (90_000, 408), (-3600, 428)]
)
async def test_age_decides_between_in_progress_and_timed_out(
    base_env, scanfiles, tmp_path, age_seconds, status
) -> None:
    # The local store keeps the write time in its metadata; an old document is made by
    # moving that time back, as S3's Last-Modified would be for a document written earlier.
    scanfiles.hold()
    async with running(create_app({**base_env, "DOCUMENT_STORE": "local"})) as client:
        body = await upload(client, PDF)
        await scanfiles.wait_for_held_async(1)
        (meta_path,) = (tmp_path / "documents" / "api_link").rglob(f"{body['id']}.json")
        meta = json.loads(meta_path.read_text())
        meta["created"] = time.time() - age_seconds
        meta_path.write_text(json.dumps(meta))
        expected = (
            {"scan_verdict": "scan_timed_out"}
            if status == 408
            else {"error": "Content scanning is in progress"}
        )
        assert await verdict(client, body) == (status, expected)
        assert (await client.get(path_of(body["url"]))).status_code == 200
        scanfiles.release()


async def test_timed_out_on_s3(base_env, s3_env, moto_endpoint, scanfiles) -> None:
    scanfiles.hold()
    env = {**base_env, **s3_env(moto_endpoint), "SCAN_TIMEOUT_SECONDS": "1"}
    async with running(create_app(env)) as client:
        body = await upload(client, PDF)
        await scanfiles.wait_for_held_async(1)
        assert (await verdict(client, body))[0] == 428
        await asyncio.sleep(2.2)  # S3's Last-Modified has whole-second precision
        assert await verdict(client, body) == (408, {"scan_verdict": "scan_timed_out"})
        scanfiles.release()


async def test_trace_id_travels_from_the_upload_to_scan_files(client, scanfiles, capsys) -> None:
    trace_id = "463ac35c9f6413ad48485a3953bb6124"
    response = await post_form(
        client,
        f"/services/{SERVICE_ID}/documents",
        files=document_part(PDF),
        headers={**AUTH, "X-B3-TraceId": trace_id, "X-B3-SpanId": "a2fb4a1d1a96d312"},
    )
    assert response.status_code == 201
    assert response.headers["X-B3-TraceId"] == trace_id
    await scans_done(client.app)
    assert scanfiles.requests[-1].headers["X-Scanning-Request-Id"] == trace_id
    # the scan's own log lines, written after the response, carry the request's id; they are
    # written by the logging thread, so wait for it to catch up
    dd_compat.flush_logs()
    scan_lines = [line for line in capsys.readouterr().out.splitlines() if "Scan finished" in line]
    assert scan_lines and trace_id in scan_lines[-1]


async def test_a_trace_id_is_generated_when_the_caller_sends_none(client, scanfiles) -> None:
    body_response = await post_form(
        client, f"/services/{SERVICE_ID}/documents", files=document_part(PDF), headers=AUTH
    )
    trace_id = body_response.headers["X-B3-TraceId"]
    assert len(trace_id) == 32 and trace_id != "None"
    await scans_done(client.app)
    assert scanfiles.requests[-1].headers["X-Scanning-Request-Id"] == trace_id
