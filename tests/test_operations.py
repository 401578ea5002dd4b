"""GET /metrics (Prometheus) and the deep health check."""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

from prometheus_client.parser import text_string_to_metric_families

from dd_api.app import create_app
from dd_api.queue import new_queue_key
from tests.helpers import AWS_ENV, free_port, running, upload

PDF = b"%PDF-1.4 metrics"


async def scrape(client) -> dict[tuple[str, tuple], float]:
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    text = await response.get_data(as_text=True)
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_metrics_count_requests_bytes_and_scans(client, scanfiles) -> None:
    scanfiles.fail_next(1, status=502)
    body = await upload(client, PDF)
    await asyncio.gather(*client.app.background_tasks)
    parts = urlsplit(body["url"])
    assert (await client.get(f"{parts.path}?{parts.query}")).status_code == 200

    samples = await scrape(client)
    route = "/services/<uuid:service_id>/documents"
    assert value(samples, "dd_requests_total", route=route, method="POST", status="201") == 1
    assert value(samples, "dd_upload_bytes_total") == len(PDF)
    assert value(samples, "dd_download_bytes_total") == len(PDF)
    assert value(samples, "dd_scan_verdicts_total", verdict="clean") == 1
    assert value(samples, "dd_scan_duration_seconds_count") == 1
    assert value(samples, "dd_scan_files_errors_total", kind="http 502") == 1
    assert value(samples, "dd_scans_in_flight") == 0


async def test_metrics_show_scans_bytes_held_and_the_queue(base_env, store_env, scanfiles) -> None:
    env = {**base_env, **store_env, "SCAN_CONCURRENCY": "1", "SCAN_QUEUE_DEPTH_POLL_SECONDS": "0.1"}
    scanfiles.hold()
    async with running(create_app(env)) as client:
        first = f"Canada {0}".encode()
        for n in range(3):
            await upload(client, f"Canada {n}".encode())
        await scanfiles.wait_for_held_async(1)
        # one fast-path scan holds its bytes and the only slot; two messages wait, visible
        samples = await until_sample(client, "dd_scan_queue_messages", 2, state="visible")
        assert value(samples, "dd_scan_queue_messages", state="delayed") == 1
        assert value(samples, "dd_scans_in_flight") == 1
        assert value(samples, "dd_scan_slots_busy") == 1
        assert value(samples, "dd_scan_bytes_held", where="memory") == len(first)
        assert value(samples, "dd_scan_bytes_held", where="disk") == 0
        scanfiles.release()
        samples = await until_sample(client, "dd_scans_total", 2, path="queue")
        assert value(samples, "dd_scans_total", path="fast") == 1
        assert value(samples, "dd_scan_bytes_held", where="memory") == 0


async def test_a_large_upload_holds_disk_not_memory(base_env, store_env, scanfiles) -> None:
    scanfiles.hold()
    async with running(create_app({**base_env, **store_env})) as client:
        big = b"%PDF-1.4 " + b"x" * 600_000
        await upload(client, big)
        await scanfiles.wait_for_held_async(1)
        samples = await scrape(client)
        assert value(samples, "dd_scan_bytes_held", where="disk") == len(big)
        assert value(samples, "dd_scan_bytes_held", where="memory") == 0
        scanfiles.release()


async def until_sample(client, name: str, wanted: float, **labels: str):
    for _ in range(300):
        samples = await scrape(client)
        if value(samples, name, **labels) == wanted:
            return samples
        await asyncio.sleep(0.1)
    raise AssertionError(f"{name}{labels} never reached {wanted}: {value(samples, name, **labels)}")


async def test_metrics_name_routes_never_ids_or_keys(client) -> None:
    body = await upload(client, PDF)
    await client.get("/no/such/path")
    text = await (await client.get("/metrics")).get_data(as_text=True)
    key = body["url"].split("key=")[1].split("&")[0]
    assert body["id"] not in text
    assert key not in text
    assert 'route="unmatched"' in text


async def test_deep_status_reports_each_dependency(client) -> None:
    response = await client.get("/_status?deep=1")
    assert response.status_code == 200
    assert await response.get_json() == {
        "status": "ok",
        "checks": {"store": "ok", "scan_queue": "ok", "scan_files": "ok"},
    }


async def test_deep_status_fails_alone_when_scan_files_is_down(base_env, store_env) -> None:
    env = {**base_env, **store_env, "ANTIVIRUS_API_HOST": f"http://127.0.0.1:{free_port()}"}
    async with running(create_app(env)) as client:
        deep = await client.get("/_status?deep=1")
        assert deep.status_code == 503
        assert await deep.get_json() == {
            "status": "unavailable",
            "checks": {"store": "ok", "scan_queue": "ok", "scan_files": "unavailable"},
        }
        shallow = await client.get("/_status")
        assert shallow.status_code == 200  # load balancers keep sending traffic


async def test_deep_status_reports_an_unreachable_store(base_env, monkeypatch) -> None:
    for name, setting in AWS_ENV.items():
        monkeypatch.setenv(name, setting)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{free_port()}")
    async with running(create_app({**base_env, "DOCUMENT_STORE": "s3"})) as client:
        deep = await client.get("/_status?deep=1")
        assert deep.status_code == 503
        assert (await deep.get_json())["checks"] == {
            "store": "unavailable",
            "scan_queue": "ok",
            "scan_files": "ok",
        }


async def test_deep_status_reports_an_unreachable_queue(base_env, monkeypatch, tmp_path) -> None:
    for name, setting in AWS_ENV.items():
        monkeypatch.setenv(name, setting)
    monkeypatch.setenv("AWS_ENDPOINT_URL_SQS", f"http://127.0.0.1:{free_port()}")
    env = {
        **base_env,
        "SCAN_QUEUE_URL": f"http://127.0.0.1:{free_port()}/123456789012/scans",
        "SCAN_QUEUE_KEY": new_queue_key(),
    }
    async with running(create_app(env)) as client:
        deep = await client.get("/_status?deep=1")
        assert deep.status_code == 503
        assert (await deep.get_json())["checks"] == {
            "store": "ok",
            "scan_queue": "unavailable",
            "scan_files": "ok",
        }
