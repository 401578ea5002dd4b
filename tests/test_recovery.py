"""No scan lost: the scan queue, with real server processes, S3 and SQS (moto), and signals."""

from __future__ import annotations

import asyncio
import hashlib
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from dd_api.app import create_app
from dd_api.queue import MessageCodec, QueueError, ScanMessage, new_queue_key, parse_queue_key
from dd_api.store import Location, StoreError
from tests.helpers import (
    AUTH,
    SERVICE_ID,
    Shared,
    free_port,
    post_form,
    running,
    s3_client,
    upload_to,
)
from tests.helpers import document as document_part

UPLOAD = f"/services/{SERVICE_ID}/documents"
SMALL = 50_000  # kept in memory for a fast-path scan
LARGE = 700_000  # over SCAN_MEMORY_THRESHOLD_BYTES: spooled to a file


def content(n: int, size: int = SMALL, tag: str = "") -> bytes:
    line = f"Canada {tag} {n} {uuid.uuid4()}\n".encode()
    return (line * (size // len(line) + 1))[:size]


def verdict(url: str, body: dict) -> int:
    return httpx.post(
        f"{url}/services/{SERVICE_ID}/documents/{body['id']}/scan-verdict", headers=AUTH
    ).status_code


def wait_until(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.2)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def shared(s3_env, moto_endpoint) -> Shared:
    return Shared(moto_endpoint, s3_env(moto_endpoint))


def test_kill_9_with_default_settings_every_verdict_arrives_within_90_s(
    serve, scanfiles, shared, tmp_path
) -> None:
    # Default delay, visibility and windows. The instance keeps small documents for a
    # fast-path scan and leaves large ones to the queue (no disk budget), which its own
    # consumer then receives: both kinds are mid-scan when it dies.
    scanfiles.hold()
    first = serve({**shared.env, "SCAN_BACKLOG_DISK_BYTES": "0"})
    fast = [content(n, SMALL, "fast") for n in range(2)]
    queued = [content(n, LARGE, "queued") for n in range(2)]
    bodies = [upload_to(first.url, data) for data in fast + queued]
    scanfiles.wait_for_held(4)
    first.process.kill()  # SIGKILL: no shutdown, no cleanup
    first.process.wait()
    killed = time.monotonic()
    scanfiles.release()
    assert not any(shared.status(body) == "clean" for body in bodies)

    serve(shared.env)
    wait_until(lambda: shared.all_clean(bodies), timeout=90 - (time.monotonic() - killed))
    for data in fast + queued:
        # the survivor scanned each one (the dead instance's held requests are not counted
        # by the stand-in once their client is gone, or count once more: at least one)
        assert scanfiles.scans_by_checksum[sha(data)] >= 1


def test_two_instances_with_a_backlog_scan_every_document_exactly_once(
    serve, scanfiles, shared
) -> None:
    env = {
        **shared.env,
        "SCAN_CONCURRENCY": "2",
        "SCAN_DEADLINE_SECONDS": "20",
        "SCAN_QUEUE_DELAY_SECONDS": "4",  # the fast path's window is 2 s
    }
    a, b = serve(env), serve(env)
    scanfiles.hold()
    documents = [content(n, SMALL if n % 3 else LARGE, "shared") for n in range(12)]
    bodies = [upload_to((a, b)[n % 2].url, data) for n, data in enumerate(documents)]
    scanfiles.wait_for_held(4)  # two slots on each: the rest wait in the queue
    assert scanfiles.held_count == 4
    scanfiles.release()
    wait_until(lambda: shared.all_clean(bodies))
    # every delayed message of a fast-path scan has come and gone, unscanned
    wait_until(shared.queue_empty)
    assert {sha(data): scanfiles.scans_by_checksum[sha(data)] for data in documents} == {
        sha(data): 1 for data in documents
    }
    assert len(scanfiles.requests) == len(documents)
    uploaded_on_a = bodies[0]
    short = uploaded_on_a["url"].replace("http://localhost:7000", b.url)
    assert httpx.get(short).content == documents[0]  # uploaded on A, served by B


def test_scan_files_down_longer_than_the_deadline_then_back_every_document_clean(
    serve, scanfiles, shared
) -> None:
    env = {
        **shared.env,
        "SCAN_DEADLINE_SECONDS": "1",
        "SCAN_QUEUE_DELAY_SECONDS": "2",
        "SCAN_RETRY_MAX_SECONDS": "2",
        "SCAN_ATTEMPT_TIMEOUT_SECONDS": "2",
    }
    scanfiles.always_fail(502)
    server = serve(env)
    documents = [content(n, SMALL if n % 2 else LARGE, "outage") for n in range(6)]
    bodies = [upload_to(server.url, data) for data in documents]
    # fast-path windows over, queued scans failing and coming back: still no verdict
    wait_until(lambda: server.output().count("Queued scan failed") >= 6)
    assert all(verdict(server.url, body) == 428 for body in bodies)
    scanfiles.stop_failing()
    wait_until(lambda: shared.all_clean(bodies))
    assert all(scanfiles.scans_by_checksum[sha(data)] == 1 for data in documents)


def test_sigterm_with_scans_in_flight_leaves_them_to_the_queue(serve, scanfiles, shared) -> None:
    env = {
        **shared.env,
        "SCAN_CONCURRENCY": "1",
        "SCAN_QUEUE_DELAY_SECONDS": "4",
        "SCAN_QUEUE_VISIBILITY_SECONDS": "3",
        "BACKGROUND_TASK_SHUTDOWN_TIMEOUT": "1",
    }
    scanfiles.hold()
    first = serve(env)
    bodies = [upload_to(first.url, content(n, tag="sigterm")) for n in range(3)]
    scanfiles.wait_for_held(1)
    first.process.terminate()
    assert first.process.wait(20) == 0
    assert "Fast-path scan without a verdict (shutting down)" in first.output()
    scanfiles.release()

    serve(env)
    wait_until(lambda: shared.all_clean(bodies))


def test_the_embedded_queue_survives_a_restart_with_documents_in_it(serve, scanfiles) -> None:
    env = {
        "NOTIFY_ENVIRONMENT": "development",
        "AUTH_TOKENS": "test-token",
        "SCAN_DEADLINE_SECONDS": "1",
        "SCAN_QUEUE_DELAY_SECONDS": "2",
        "SCAN_RETRY_MAX_SECONDS": "1",
    }
    scanfiles.always_fail(503)
    first = serve(env)
    documents = [content(n, tag="embedded") for n in range(3)]
    bodies = [upload_to(first.url, data) for data in documents]
    first.process.terminate()
    assert first.process.wait(20) == 0
    assert all(scanfiles.scans_by_checksum[sha(data)] == 0 for data in documents)
    scanfiles.stop_failing()

    second = serve(env)  # the same LOCAL_STORE_PATH, so the same queue file
    wait_until(lambda: all(verdict(second.url, body) == 200 for body in bodies))


def test_spool_files_of_a_dead_process_are_removed_and_a_live_ones_kept(
    serve, scanfiles, shared, tmp_path
) -> None:
    spool = tmp_path / "tmp"
    spool.mkdir()
    env = {**shared.env, "TMPDIR": str(spool)}
    scanfiles.hold()
    dead, alive = serve(env), serve(env)
    upload_to(dead.url, content(1, LARGE, "dead"))
    upload_to(alive.url, content(2, LARGE, "alive"))
    scanfiles.wait_for_held(2)
    files = set(spool.rglob("upload-*"))
    assert len(files) == 2
    dead.process.kill()
    dead.process.wait()

    serve(env)  # starting, it removes what the dead process left
    remaining = set(spool.rglob("upload-*"))
    assert len(remaining) == 1 and remaining < files
    assert str(alive.process.pid) in str(next(iter(remaining)).parent.name)
    scanfiles.release()


# -- messages the consumer cannot use, uploads that cannot send one ---------------------------


async def until(probe: Callable[[], object], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not await probe():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.1)


async def test_an_unreadable_message_is_dead_lettered_not_scanned(base_env, scanfiles) -> None:
    env = {
        **base_env,
        "DOCUMENT_STORE": "local",
        "SCAN_QUEUE_VISIBILITY_SECONDS": "0.2",
        "SCAN_QUEUE_MAX_RECEIVES": "3",
    }
    queue_file = Path(env["LOCAL_STORE_PATH"]) / "scan-queue.sqlite3"
    app = create_app(env)
    async with running(app):
        await app.extensions["dd_api"].queue.send("not a scan message")

        async def dead_lettered() -> bool:
            with sqlite3.connect(queue_file) as db:
                return db.execute("SELECT COUNT(*) FROM dead_letters").fetchone()[0] == 1

        await until(dead_lettered)
    assert scanfiles.requests == []


async def test_a_message_no_queue_key_opens_gives_scan_failed(base_env, scanfiles) -> None:
    app = create_app({**base_env, "DOCUMENT_STORE": "local", "SCAN_QUEUE_KEY": new_queue_key()})
    async with running(app) as client:
        body = await upload_document(client)
        location = Location(uuid.UUID(SERVICE_ID), uuid.UUID(body["id"]), None)
        deps = app.extensions["dd_api"]
        await until(lambda: tag_is(deps.store, location, "clean"))
        await deps.store.put_tags(location, {"av-status": "in_progress"})
        # a message sent under a key this instance does not have (a botched rotation)
        other = MessageCodec([parse_queue_key(new_queue_key())])
        stray = ScanMessage(
            service_id=location.service_id,
            document_id=location.document_id,
            sending_method=None,
            filename="x",
            mimetype="application/pdf",
            size=8,
            trace_id="t",
            created=time.time(),
            key=os.urandom(32),
        )
        await deps.queue.send(other.encode(stray))
        await until(lambda: tag_is(deps.store, location, "error"))


async def test_an_unsent_message_rolls_the_document_back(
    base_env, s3_env, moto_endpoint, monkeypatch, caplog
) -> None:
    # S3 and SQS will not fail on demand, mid-upload, so these faults are injected.
    env = s3_env(moto_endpoint)
    app = create_app({**base_env, **env})
    async with running(app) as client:
        deps = app.extensions["dd_api"]

        async def queue_down(*args, **kwargs):
            raise QueueError("injected")

        async def store_down(*args, **kwargs):
            raise StoreError("injected")

        monkeypatch.setattr(deps.queue, "send", queue_down)
        response = await post_form(client, UPLOAD, files=document_part(b"%PDF-1.4 x"), headers=AUTH)
        assert response.status_code == 503
        listing = s3_client(moto_endpoint).list_objects_v2(Bucket=env["DOCUMENTS_BUCKET"])
        assert listing.get("KeyCount", 0) == 0  # stored, then removed: never unscannable
        # and when the removal fails too, an operator is told which document to remove
        monkeypatch.setattr(deps.store, "delete", store_down)
        response = await post_form(client, UPLOAD, files=document_part(b"%PDF-1.4 y"), headers=AUTH)
        assert response.status_code == 503
    (record,) = [r for r in caplog.records if "not rolled back" in r.getMessage()]
    assert record.levelname == "ERROR"
    assert uuid.UUID(record.document_id)


async def upload_document(client) -> dict:
    response = await post_form(client, UPLOAD, files=document_part(b"%PDF-1.4 x"), headers=AUTH)
    assert response.status_code == 201
    return (await response.get_json())["document"]


async def tag_is(store, location: Location, status: str) -> bool:
    return (await store.get_tags(location)).get("av-status") == status


def test_thousands_of_uploads_with_scan_files_down_keep_within_the_byte_budgets(
    serve, tmp_path, scanfiles
) -> None:
    # smaller than SCAN_CONCURRENCY (4) documents: the budgets, not the slots, hold bytes back
    memory_budget, disk_budget = 50_000, LARGE + 100_000
    spool = tmp_path / "tmp"
    spool.mkdir()
    server = serve(
        {
            "AUTH_TOKENS": "test-token",
            "ANTIVIRUS_API_HOST": f"http://127.0.0.1:{free_port()}",  # scan-files down
            "SCAN_BACKLOG_MEMORY_BYTES": str(memory_budget),
            "SCAN_BACKLOG_DISK_BYTES": str(disk_budget),
            "TMPDIR": str(spool),
        }
    )
    peaks = {"memory": 0.0, "disk": 0.0, "spooled": 0}
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            for where in ("memory", "disk"):
                peaks[where] = max(peaks[where], held(server.url, where))
            spooled = sum(path.stat().st_size for path in spool.rglob("upload-*"))
            peaks["spooled"] = max(peaks["spooled"], spooled)

    watcher = threading.Thread(target=watch)
    watcher.start()
    sizes = [LARGE if n % 40 == 0 else 20_000 for n in range(2000)]
    try:
        with ThreadPoolExecutor(16) as pool:
            bodies = list(
                pool.map(
                    lambda n: upload_to(server.url, content(n, sizes[n], "burst")), range(2000)
                )
            )
    finally:
        done.set()
        watcher.join()
    assert len(bodies) == 2000
    assert 0 < peaks["memory"] <= memory_budget
    assert 0 < peaks["disk"] <= disk_budget
    # spool files: those held for scans, and the bodies of the 16 uploads being received
    assert peaks["spooled"] <= disk_budget + 16 * LARGE
    # nothing was lost: every document waits in the queue for scan-files
    assert verdict(server.url, bodies[-1]) == 428


def held(url: str, where: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "dd_scan_bytes_held" and sample.labels.get("where") == where:
                return sample.value
    raise AssertionError("dd_scan_bytes_held missing")
