"""SCANNER=clamd: dd-api scanning with a real clamd daemon, on one machine (local store, embedded
queue), with everything else shared with the scan-files path."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from dd_api import config
from dd_api.app import create_app
from dd_api.config import Settings
from dd_api.store import Location
from tests.helpers import AUTH, SERVICE_ID, post_form, running, upload
from tests.support import clamd as clamd_support
from tests.support.clamd import EICAR, SIGNATURE, STREAM_MAX_LENGTH, ClamdDaemon

clamd = clamd_support.clamd  # the session fixture, as a conftest would re-export it

QUICK_QUEUE = {
    "SCAN_DEADLINE_SECONDS": "1",
    "SCAN_QUEUE_DELAY_SECONDS": "2",
    "SCAN_RETRY_MAX_SECONDS": "1",
    "SCAN_ATTEMPT_TIMEOUT_SECONDS": "2",
}


def pdf(size: int = 20_000, middle: bytes = b"") -> bytes:
    head = b"%PDF-1.4\n" + uuid.uuid4().hex.encode() + b"\n"
    filler = b"q 1 0 0 1 0 0 cm Q\n" * (size // 19 + 1)
    body = head + filler[: size // 2] + middle + filler[size // 2 :]
    return body[:size] if not middle else body


@pytest.fixture
def clamd_env(base_env: dict[str, str], clamd: ClamdDaemon) -> dict[str, str]:
    return {
        **base_env,
        "DOCUMENT_STORE": "local",
        "SCANNER": "clamd",
        "CLAMD_ADDRESS": clamd.unix_address,
    }


async def until(probe: Callable[[], Awaitable[bool]], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not await probe():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.1)


def tags_of(client, body: dict) -> Callable[[], Awaitable[dict[str, str]]]:
    store = client.app.extensions["dd_api"].store
    location = Location(uuid.UUID(SERVICE_ID), uuid.UUID(body["id"]), body["sending_method"])
    return lambda: store.get_tags(location)


async def verdict_is(client, body: dict, status: str) -> bool:
    return (await tags_of(client, body)()).get("av-status") == status


def path_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}"


async def test_a_clean_pdf_is_clean_and_eicar_is_blocked(clamd_env, scanfiles, caplog) -> None:
    caplog.set_level(logging.WARNING)
    async with running(create_app(clamd_env)) as client:
        clean_bytes = pdf()
        clean = await upload(client, clean_bytes)
        infected = await upload(client, pdf(middle=EICAR), sending_method="attach")
        await until(lambda: verdict_is(client, clean, "clean"))
        await until(lambda: verdict_is(client, infected, "malicious"))
        tags = await tags_of(client, clean)()
        assert tags["av-checksum"] == hashlib.sha256(clean_bytes).hexdigest()
        assert tags["av-scanner"].startswith("clamd ClamAV ")
        assert (await client.get(path_of(infected["direct_file_url"]))).status_code == 423
        assert (await client.get(path_of(infected["url"]))).status_code == 404
        deep = await client.get("/_status?deep=1")
        assert (await deep.get_json())["checks"] == {
            "store": "ok",
            "scan_queue": "ok",
            "clamd": "ok",
        }
    assert scanfiles.requests == []  # scan-files was never asked
    assert any(SIGNATURE in record.getMessage() for record in caplog.records)


async def test_clamd_down_is_retried_then_clean_once_it_is_back(
    clamd_env, clamd: ClamdDaemon
) -> None:
    async with running(create_app({**clamd_env, **QUICK_QUEUE})) as client:
        with clamd.stopped():
            body = await upload(client, pdf())
            status = await post_form(
                client,
                f"/services/{SERVICE_ID}/documents/{body['id']}/scan-verdict",
                headers=AUTH,
            )
            assert status.status_code == 428
            deep = await client.get("/_status?deep=1")
            assert deep.status_code == 503
            assert (await deep.get_json())["checks"]["clamd"] == "unavailable"
        await until(lambda: verdict_is(client, body, "clean"))


async def test_a_document_over_stream_max_length_is_an_error_with_a_clear_log_line(
    clamd_env, caplog
) -> None:
    caplog.set_level(logging.WARNING)
    async with running(create_app(clamd_env)) as client:
        body = await upload(client, pdf(STREAM_MAX_LENGTH + 100_000))
        await until(lambda: verdict_is(client, body, "error"))
    reasons = [getattr(record, "scan_reason", None) for record in caplog.records]
    assert "document over clamd's StreamMaxLength" in reasons


def test_development_uses_the_debian_clamd_when_no_scanner_is_configured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    socket = tmp_path / "clamd.ctl"
    socket.touch()
    monkeypatch.setattr(config, "DEBIAN_CLAMD_SOCKET", str(socket))
    settings = Settings.from_env({})
    assert (settings.SCANNER, settings.CLAMD_ADDRESS) == ("clamd", str(socket))
    # anything configured, or any other environment, keeps scan-files
    assert Settings.from_env({"ANTIVIRUS_API_HOST": "http://scan:6016"}).SCANNER == "scan-files"
    production = {"NOTIFY_ENVIRONMENT": "production", "AUTH_TOKENS": "t"}
    assert Settings.from_env(production).SCANNER == "scan-files"
    socket.unlink()
    assert Settings.from_env({}).SCANNER == "scan-files"
