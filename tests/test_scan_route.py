"""Documents above scan-files' request cap, scanned through its S3 route.

The production command on ministack (which enforces SSE-C, so a scan copy scan-files could
not read fails as in AWS), with the scan-files stand-in reading that server and refusing
bodies above 6,000,000 bytes, as the Lambda in front of the real one does.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from urllib.parse import urlsplit

import httpx
import pytest

from tests.helpers import AUTH, SERVICE_ID, Shared, upload_to
from tests.support.scanfiles import EICAR

ACCOUNT = "123456789012"
TOPIC = f"arn:aws:sns:ca-central-1:{ACCOUNT}:scan-files-verdicts"
LAMBDA_CAP = 6_000_000
EIGHT_MIB = 8 * 1024 * 1024


def pdf(size: int, middle: bytes = b"") -> bytes:
    head = b"%PDF-1.4\n" + uuid.uuid4().hex.encode() + b"\n"
    filler = (b"0 0 0 RG 1 w 10 10 m 20 20 l S\n" * (size // 32 + 1))[: size - len(head)]
    half = len(filler) // 2
    return (head + filler[:half] + middle + filler[half:])[:size]


def wait_until(condition: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.2)


def verdict(url: str, body: dict) -> int:
    path = f"/services/{SERVICE_ID}/documents/{body['id']}/scan-verdict"
    return httpx.post(url + path, headers=AUTH).status_code


def local(url: str, link: str) -> str:
    parts = urlsplit(link)
    return f"{url}{parts.path}?{parts.query}"


@pytest.fixture
def shared(s3_env, ministack_endpoint) -> Shared:
    return Shared(ministack_endpoint, s3_env(ministack_endpoint))


@pytest.fixture
def capped(scanfiles, ministack_endpoint):
    scanfiles.s3_endpoint = ministack_endpoint
    scanfiles.max_bytes = LAMBDA_CAP
    return scanfiles


def route_env(shared: Shared, **extra: str) -> dict[str, str]:
    return {
        **shared.env,
        "SCAN_FILES_AWS_ACCOUNT": ACCOUNT,
        "SCAN_FILES_SNS_ARN": TOPIC,
        **extra,
    }


def scan_copies(shared: Shared) -> list[str]:
    listing = shared.s3.list_objects_v2(Bucket=shared.bucket, Prefix="scan-copies/")
    return [item["Key"] for item in listing.get("Contents", [])]


def test_large_documents_are_scanned_through_the_s3_route(serve, capped, shared) -> None:
    server = serve(route_env(shared))
    clean = upload_to(server.url, pdf(EIGHT_MIB))
    infected = upload_to(server.url, pdf(EIGHT_MIB, EICAR), sending_method="attach")
    wait_until(lambda: shared.status(clean) == "clean")
    wait_until(lambda: _status(shared, infected) == "malicious")

    assert verdict(server.url, clean) == 200
    assert httpx.get(local(server.url, infected["direct_file_url"])).status_code == 423
    assert httpx.get(local(server.url, infected["url"])).status_code == 404
    assert capped.requests == []  # nothing over the cap was sent to /clamav
    assert len(capped.s3_requests) == 2
    for request in capped.s3_requests:
        assert (request.body["aws_account"], request.body["sns_arn"]) == (ACCOUNT, TOPIC)
        assert request.body["s3_key"].startswith(f"s3://{shared.bucket}/scan-copies/")
    wait_until(lambda: not scan_copies(shared))
    tags = _tags(shared, clean)
    assert len(tags["av-checksum"]) == 64 and tags["av-scanner"] == "clamav"


def test_small_documents_still_go_to_clamav(serve, capped, shared) -> None:
    server = serve(route_env(shared))
    small = upload_to(server.url, pdf(100_000))
    wait_until(lambda: shared.status(small) == "clean")
    assert len(capped.requests) == 1 and capped.s3_requests == []


def test_a_kill_while_polling_leaves_the_scan_to_another_instance(serve, capped, shared) -> None:
    env = route_env(shared, SCAN_QUEUE_VISIBILITY_SECONDS="3", SCAN_ATTEMPT_TIMEOUT_SECONDS="30")
    capped.hold_s3()
    first = serve(env)
    body = upload_to(first.url, pdf(EIGHT_MIB))
    capped.wait_for_s3_requests(1, timeout=30)
    scan_id = capped.s3_requests[0].scan_id
    capped.wait_for_polls(1, scan_id=scan_id, timeout=30)
    first.process.kill()
    first.process.wait()

    second = serve(env)
    capped.wait_for_polls(2, scan_id=scan_id, timeout=60)  # the survivor polls the same scan
    capped.release_s3()
    wait_until(lambda: verdict(second.url, body) == 200)
    assert len(capped.s3_requests) == 1  # no second scan was started
    wait_until(lambda: not scan_copies(shared))


def test_without_the_route_a_413_is_a_permanent_failure(serve, capped, shared) -> None:
    server = serve(shared.env)
    body = upload_to(server.url, pdf(EIGHT_MIB))
    wait_until(lambda: verdict(server.url, body) == 422)
    assert shared.status(body) == "error"
    wait_until(lambda: "too large for scan-files" in server.output())  # written by its log thread
    assert capped.s3_requests == []


def _tags(shared: Shared, body: dict, prefix: str = "api_link") -> dict[str, str]:
    key = f"{prefix}/{SERVICE_ID}/{body['id']}"
    tag_set = shared.s3.get_object_tagging(Bucket=shared.bucket, Key=key)["TagSet"]
    return {tag["Key"]: tag["Value"] for tag in tag_set}


def _status(shared: Shared, body: dict) -> str | None:
    return _tags(shared, body, "api_attachments").get("av-status")
