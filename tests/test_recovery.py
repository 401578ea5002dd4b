"""No scan lost: pending copies, leases and the sweeper, with real processes and signals."""

from __future__ import annotations

import asyncio
import hashlib
import io
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from dd_api.app import create_app
from dd_api.store import Location, PendingCopy, StoreError
from tests.helpers import AUTH, SERVICE_ID, post_form, running, s3_client
from tests.helpers import document as document_part

RECOVERY = {
    "AUTH_TOKENS": "test-token",
    "PENDING_SCAN_GRACE_SECONDS": "1",
    "PENDING_SCAN_SWEEP_INTERVAL_SECONDS": "0.3",
    "SCAN_DEADLINE_SECONDS": "2",
    "SCAN_ATTEMPT_TIMEOUT_SECONDS": "1",
    "SCAN_LEASE_SECONDS": "3",
    "BACKGROUND_TASK_SHUTDOWN_TIMEOUT": "1",
}


def upload(url: str, content: bytes) -> dict:
    response = httpx.post(
        f"{url}/services/{SERVICE_ID}/documents",
        files={"document": ("document", content)},
        data={"filename": "note.txt"},
        headers=AUTH,
    )
    assert response.status_code == 201, response.text
    return response.json()["document"]


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


class Bucket:
    def __init__(self, endpoint: str, name: str) -> None:
        self.client, self.name = s3_client(endpoint), name

    def status(self, body: dict) -> str | None:
        key = f"api_link/{SERVICE_ID}/{body['id']}"
        tags = self.client.get_object_tagging(Bucket=self.name, Key=key)["TagSet"]
        return {tag["Key"]: tag["Value"] for tag in tags}.get("av-status")

    def leftovers(self) -> list[str]:
        keys = []
        for prefix in ("pending-scan/", "pending-scan-leases/"):
            listing = self.client.list_objects_v2(Bucket=self.name, Prefix=prefix)
            keys += [item["Key"] for item in listing.get("Contents", [])]
        return keys

    def all_clean(self, bodies: list[dict]) -> bool:
        return all(self.status(body) == "clean" for body in bodies)


@pytest.fixture
def shared_bucket(s3_env, moto_endpoint) -> tuple[dict[str, str], Bucket]:
    env = s3_env(moto_endpoint)
    return env, Bucket(moto_endpoint, env["DOCUMENTS_BUCKET"])


def test_kill_9_mid_scan_then_a_new_process_finishes_every_scan(
    serve, scanfiles, shared_bucket
) -> None:
    env, bucket = shared_bucket
    env = {**RECOVERY, **env, "SCAN_CONCURRENCY": "2"}
    scanfiles.hold()
    first = serve(env)
    bodies = [upload(first.url, f"Canada {n}".encode()) for n in range(4)]
    scanfiles.wait_for_held(2)  # two scanning, two queued
    first.process.kill()  # SIGKILL: no shutdown, no cleanup
    first.process.wait()
    scanfiles.release()
    assert not bucket.all_clean(bodies)

    serve(env)
    wait_until(lambda: bucket.all_clean(bodies))
    wait_until(lambda: not bucket.leftovers())


def test_two_instances_share_one_bucket_and_scan_each_document_once(
    serve, scanfiles, shared_bucket
) -> None:
    env, bucket = shared_bucket
    base = {**RECOVERY, **env}
    # A's lease outlasts the held scan; B sweeps every 0.3 s with a 1 s grace period
    a = serve(
        {
            **base,
            "SCAN_DEADLINE_SECONDS": "20",
            "SCAN_ATTEMPT_TIMEOUT_SECONDS": "20",
            "SCAN_LEASE_SECONDS": "60",
        }
    )
    b = serve(base)
    scanfiles.hold()
    body = upload(a.url, b"Canada, shared")
    scanfiles.wait_for_held(1)

    short = body["url"].replace("http://localhost:7000", b.url)
    assert httpx.get(short).content == b"Canada, shared"  # uploaded on A, served by B
    assert verdict(b.url, body) == 428
    time.sleep(2.5)  # several of B's sweeps see the copy; A's lease keeps them off it
    assert len(scanfiles.requests) == 1
    scanfiles.release()
    wait_until(lambda: verdict(b.url, body) == 200)
    assert scanfiles.scans_by_checksum[hashlib.sha256(b"Canada, shared").hexdigest()] == 1

    # A second uploader dies mid-scan: B's sweeper finishes the scan after the lease expires.
    c = serve(base)
    scanfiles.hold()
    orphan = upload(c.url, b"Canada, orphaned")
    scanfiles.wait_for_held(1)
    c.process.kill()
    c.process.wait()
    scanfiles.release()
    wait_until(lambda: verdict(b.url, orphan) == 200)
    wait_until(lambda: not bucket.leftovers())


def test_sigterm_with_queued_scans_leaves_them_to_the_sweeper(
    serve, scanfiles, shared_bucket
) -> None:
    env, bucket = shared_bucket
    env = {**RECOVERY, **env, "SCAN_CONCURRENCY": "1"}
    scanfiles.hold()
    first = serve(env)
    bodies = [upload(first.url, f"Canada {n}, queued".encode()) for n in range(3)]
    scanfiles.wait_for_held(1)
    first.process.terminate()
    assert first.process.wait(20) == 0
    assert first.output().count("left in_progress") == 3
    scanfiles.release()

    serve(env)
    wait_until(lambda: bucket.all_clean(bodies))
    wait_until(lambda: not bucket.leftovers())


# -- failed writes at upload --------------------------------------------------------------


@pytest.mark.parametrize("blocked", ["pending-scan", "api_link"])
async def test_a_failed_local_write_leaves_nothing_behind(base_env, tmp_path, blocked) -> None:
    root = tmp_path / "documents"
    root.mkdir()
    (root / blocked).write_text("a file where a directory should be")
    async with running(create_app({**base_env, "DOCUMENT_STORE": "local"})) as client:
        response = await post_form(
            client,
            f"/services/{SERVICE_ID}/documents",
            files=document_part(b"%PDF-1.4 x"),
            headers=AUTH,
        )
        assert response.status_code == 503
        assert await response.get_json() == {
            "error": "Document storage is unavailable, try again later"
        }
    assert not [p for p in root.rglob("*") if p.suffix in (".data", ".json")]


@pytest.mark.parametrize("failing", ["put", "put_pending"])
async def test_a_failed_s3_write_leaves_nothing_behind(
    base_env, s3_env, moto_endpoint, monkeypatch, failing
) -> None:
    # S3 will not fail one of two writes on demand, so this fault is injected.
    env = s3_env(moto_endpoint)
    app = create_app({**base_env, **env})
    async with running(app) as client:
        store = app.extensions["dd_api"].store

        async def fail(*args, **kwargs):
            await asyncio.sleep(0.05)  # let the other write land first
            raise StoreError("injected")

        monkeypatch.setattr(store, failing, fail)
        response = await post_form(
            client,
            f"/services/{SERVICE_ID}/documents",
            files=document_part(b"%PDF-1.4 x"),
            headers=AUTH,
        )
        assert response.status_code == 503
    listing = s3_client(moto_endpoint).list_objects_v2(Bucket=env["DOCUMENTS_BUCKET"])
    assert listing.get("KeyCount", 0) == 0


# -- the sweeper's decisions, on what a dead instance left behind ---------------------------


async def leave_behind(store, content: bytes, tags: dict[str, str]) -> Location:
    """Write a document and its pending copy as an instance that then died would have."""
    location = Location(uuid.UUID(SERVICE_ID), uuid.uuid4(), "attach")
    await store.put(
        location,
        io.BytesIO(content),
        size=len(content),
        mimetype="text/plain",
        key=bytes(32),
        tags=tags,
    )
    pending = PendingCopy(location, "left.txt", "text/plain", "trace-from-the-dead-instance")
    await store.put_pending(pending, io.BytesIO(content), size=len(content))
    return location


@pytest.fixture
async def recovering_app(base_env, store_env):
    app = create_app(
        {
            **base_env,
            **store_env,
            "PENDING_SCAN_GRACE_SECONDS": "0.2",
            "PENDING_SCAN_SWEEP_INTERVAL_SECONDS": "3600",  # the test sweeps by hand
        }
    )
    async with running(app):
        yield app


async def test_sweeper_scans_what_a_dead_instance_left(recovering_app, scanfiles) -> None:
    runtime = recovering_app.extensions["dd_api"]
    location = await leave_behind(runtime.store, b"Canada, left", {"av-status": "in_progress"})
    await asyncio.sleep(0.3)
    assert await runtime.sweeper.sweep() == 1
    await asyncio.gather(*recovering_app.background_tasks)
    tags = await runtime.store.get_tags(location)
    assert tags["av-status"] == "clean"
    assert tags["av-checksum"] == hashlib.sha256(b"Canada, left").hexdigest()
    assert scanfiles.requests[-1].headers["X-Scanning-Request-Id"] == "trace-from-the-dead-instance"
    assert scanfiles.requests[-1].filename == "left.txt"
    assert await runtime.store.list_pending() == []


async def test_sweeper_only_removes_the_copy_when_the_verdict_is_written(
    recovering_app, scanfiles
) -> None:
    runtime = recovering_app.extensions["dd_api"]
    location = await leave_behind(runtime.store, b"Canada", {"av-status": "malicious"})
    await asyncio.sleep(0.3)
    assert await runtime.sweeper.sweep() == 0
    assert await runtime.store.get_tags(location) == {"av-status": "malicious"}
    assert await runtime.store.list_pending() == []
    assert scanfiles.requests == []


async def test_sweeper_removes_the_copy_of_a_deleted_document(recovering_app) -> None:
    runtime = recovering_app.extensions["dd_api"]
    location = await leave_behind(runtime.store, b"Canada", {"av-status": "in_progress"})
    await runtime.store.delete(location, bytes(32))
    await asyncio.sleep(0.3)
    assert await runtime.sweeper.sweep() == 0
    assert await runtime.store.list_pending() == []


async def test_sweeper_leaves_young_copies_alone(base_env, store_env) -> None:
    # a grace period well over S3's one-second Last-Modified resolution
    env = {**base_env, **store_env, "PENDING_SCAN_GRACE_SECONDS": "30"}
    app = create_app(env)
    async with running(app):
        runtime = app.extensions["dd_api"]
        await leave_behind(runtime.store, b"Canada", {"av-status": "in_progress"})
        assert await runtime.sweeper.sweep() == 0
        assert len(await runtime.store.list_pending()) == 1


async def test_sweeper_leaves_copies_leased_by_a_live_instance_alone(recovering_app) -> None:
    runtime = recovering_app.extensions["dd_api"]
    location = await leave_behind(runtime.store, b"Canada", {"av-status": "in_progress"})
    await asyncio.sleep(0.3)
    held = datetime.now(UTC) + timedelta(minutes=5)
    assert await runtime.store.claim(location, "another-instance", held)
    assert await runtime.sweeper.sweep() == 0
    assert len(await runtime.store.list_pending()) == 1


async def test_a_copy_past_the_retention_bound_is_given_up(base_env, store_env, caplog) -> None:
    app = create_app(
        {
            **base_env,
            **store_env,
            "PENDING_SCAN_GRACE_SECONDS": "0.1",
            "PENDING_SCAN_MAX_AGE_SECONDS": "0.5",
            "PENDING_SCAN_SWEEP_INTERVAL_SECONDS": "3600",
        }
    )
    async with running(app):
        runtime = app.extensions["dd_api"]
        location = await leave_behind(runtime.store, b"Canada", {"av-status": "in_progress"})
        await asyncio.sleep(1.1)
        await runtime.sweeper.sweep()
        assert (await runtime.store.get_tags(location))["av-status"] == "error"
        assert await runtime.store.list_pending() == []
    assert any(
        "retention" in record.getMessage()
        and getattr(record, "document_id", None) == str(location.document_id)
        for record in caplog.records
    )


async def test_uploads_leave_no_pending_copy_once_scanned(client) -> None:
    from tests.helpers import upload as upload_in_process

    await upload_in_process(client, b"%PDF-1.4 scanned")
    await asyncio.gather(*client.app.background_tasks)
    assert await client.app.extensions["dd_api"].store.list_pending() == []


async def test_deleting_a_document_removes_its_pending_copy(client, scanfiles) -> None:
    from tests.helpers import upload as upload_in_process

    scanfiles.hold()
    body = await upload_in_process(client, b"%PDF-1.4 to delete", sending_method="template_attach")
    await scanfiles.wait_for_held_async(1)
    response = await client.delete(
        f"/services/{SERVICE_ID}/documents/{body['id']}?sending_method=template_attach",
        headers=AUTH,
    )
    assert response.status_code == 200
    assert await client.app.extensions["dd_api"].store.list_pending() == []
    scanfiles.release()
