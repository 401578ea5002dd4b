"""The scan-files stand-in's S3 routes and payload cap, against real S3 server processes.

The ``POST /clamav`` contract itself is covered at the bottom of tests/test_scan_client.py.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest

from tests.helpers import new_bucket, s3_client
from tests.support.scanfiles import (
    DEFAULT_API_KEY,
    EICAR,
    LAMBDA_TOO_LARGE_BODY,
    RecordedS3Request,
    S3Scan,
    ScanFilesStandIn,
)

KEY = {"Authorization": DEFAULT_API_KEY}
ACCOUNT = "123456789012"
SNS_ARN = "arn:aws:sns:ca-central-1:123456789012:s3-object-scan-complete"
SSE_C = {"SSECustomerAlgorithm": "AES256", "SSECustomerKey": os.urandom(32)}
UNAUTHORIZED = {"detail": "Unauthorized API request"}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def missing(field: str) -> dict:
    return {"type": "missing", "loc": ["body", field], "msg": "Field required", "input": None}


@pytest.fixture
def moto_standin(moto_endpoint: str) -> Iterator[ScanFilesStandIn]:
    with ScanFilesStandIn(s3_endpoint=moto_endpoint) as standin:
        yield standin


@pytest.fixture
def ministack_standin(ministack_endpoint: str) -> Iterator[ScanFilesStandIn]:
    with ScanFilesStandIn(s3_endpoint=ministack_endpoint) as standin:
        yield standin


@pytest.fixture
def http(scanfiles: ScanFilesStandIn) -> Iterator[httpx.Client]:
    """A client for the ``scanfiles`` stand-in (no S3 endpoint)."""
    with httpx.Client(base_url=scanfiles.url, timeout=10) as client:
        yield client


def put(endpoint: str, body: bytes, **extra: object) -> str:
    """A new object in a new bucket on ``endpoint``; its s3:// key."""
    bucket = new_bucket(endpoint)
    s3_client(endpoint).put_object(Bucket=bucket, Key="quarantine/doc.pdf", Body=body, **extra)
    return f"s3://{bucket}/quarantine/doc.pdf"


def start_scan(standin: ScanFilesStandIn, s3_key: str, account: str = ACCOUNT) -> str:
    response = httpx.post(
        f"{standin.url}/clamav/s3",
        json={"aws_account": account, "s3_key": s3_key, "sns_arn": SNS_ARN},
        headers=KEY,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert list(body) == ["status", "scan_id"]
    assert body["status"] == "OK"
    assert str(uuid.UUID(body["scan_id"])) == body["scan_id"]
    return body["scan_id"]


def poll(standin: ScanFilesStandIn, scan_id: str, timeout: float = 5.0) -> dict:
    """Poll as a client would until the scan is no longer in progress; the last answer."""
    give_up_at = time.monotonic() + timeout
    while True:
        response = httpx.get(f"{standin.url}/clamav/{scan_id}", headers=KEY)
        assert response.status_code == 200, response.text
        if response.json() != {"status": "in_progress"}:
            return response.json()
        if time.monotonic() >= give_up_at:
            raise TimeoutError(f"scan {scan_id} still in progress after {timeout} s")
        time.sleep(0.01)


# -- POST /clamav/s3 and the background scan ------------------------------------------------------


def test_a_clean_object_is_scanned_and_polled_to_completion(moto_endpoint, moto_standin):
    content = b"%PDF-1.4 a clean document"
    s3_key = put(moto_endpoint, content)

    scan_id = start_scan(moto_standin, s3_key)

    assert poll(moto_standin, scan_id) == {"status": "completed", "verdict": "clean"}
    [request] = moto_standin.s3_requests
    assert request.body == {"aws_account": ACCOUNT, "s3_key": s3_key, "sns_arn": SNS_ARN}
    assert (request.status, request.scan_id) == (200, scan_id)
    assert request.headers["authorization"] == DEFAULT_API_KEY
    assert moto_standin.s3_scans == {
        scan_id: S3Scan(
            scan_id=scan_id,
            aws_account=ACCOUNT,
            s3_key=s3_key,
            sns_arn=SNS_ARN,
            completed=True,
            verdict="clean",
            size=len(content),
            sha256=sha256(content),
        )
    }
    assert moto_standin.scans_by_checksum == {sha256(content): 1}
    assert moto_standin.polls[scan_id] >= 1
    assert moto_standin.requests == []  # POST /clamav was not used


def test_an_eicar_object_is_malicious_and_set_verdict_applies(moto_endpoint, moto_standin):
    infected = put(moto_endpoint, b"prefix " + EICAR + b" suffix")
    other = put(moto_endpoint, b"%PDF-1.4 odd")
    moto_standin.set_verdict("suspicious")

    infected_id, other_id = start_scan(moto_standin, infected), start_scan(moto_standin, other)

    assert poll(moto_standin, infected_id) == {"status": "completed", "verdict": "malicious"}
    assert poll(moto_standin, other_id) == {"status": "completed", "verdict": "suspicious"}
    assert sum(moto_standin.scans_by_checksum.values()) == 2


def test_a_large_object_is_read_whole(moto_endpoint, moto_standin):
    content = os.urandom(7 * 1024 * 1024) + EICAR  # above scan-files' 6 MB Lambda cap

    scan_id = start_scan(moto_standin, put(moto_endpoint, content))

    assert poll(moto_standin, scan_id) == {"status": "completed", "verdict": "malicious"}
    assert moto_standin.s3_scans[scan_id].sha256 == sha256(content)


@pytest.mark.parametrize(
    ("s3_key", "account", "error"),
    [
        ("s3://{bucket}/no-such-key", ACCOUNT, "NoSuchKey"),
        ("s3://no-such-bucket-for-the-standin/doc.pdf", ACCOUNT, "NoSuchBucket"),
        ("{bucket}/doc.pdf", ACCOUNT, "not an s3:// key"),
        ("s3://{bucket}/doc.pdf", "not-an-account", "no role to assume"),
    ],
)
def test_an_object_that_cannot_be_read_ends_with_the_error_verdict(
    moto_endpoint, moto_standin, s3_key, account, error
):
    bucket = new_bucket(moto_endpoint)
    s3_client(moto_endpoint).put_object(Bucket=bucket, Key="doc.pdf", Body=b"%PDF-1.4")

    scan_id = start_scan(moto_standin, s3_key.format(bucket=bucket), account=account)

    assert poll(moto_standin, scan_id) == {"status": "completed", "verdict": "error"}
    scan = moto_standin.s3_scans[scan_id]
    assert error in scan.error
    assert (scan.size, scan.sha256) == (None, None)
    assert moto_standin.scans_by_checksum == {}


def test_on_ministack_an_sse_c_object_cannot_be_read_but_an_sse_s3_one_can(
    ministack_endpoint, ministack_standin
):
    content = b"%PDF-1.4 encrypted at rest"
    sse_c = put(ministack_endpoint, content, **SSE_C)
    sse_s3 = put(ministack_endpoint, content, ServerSideEncryption="AES256")

    sse_c_id, sse_s3_id = (
        start_scan(ministack_standin, sse_c),
        start_scan(ministack_standin, sse_s3),
    )

    assert poll(ministack_standin, sse_c_id) == {"status": "completed", "verdict": "error"}
    assert poll(ministack_standin, sse_s3_id) == {"status": "completed", "verdict": "clean"}
    assert "InvalidRequest" in ministack_standin.s3_scans[sse_c_id].error  # as AWS answers
    assert ministack_standin.scans_by_checksum == {sha256(content): 1}


def test_without_an_s3_endpoint_every_s3_scan_ends_in_error(scanfiles):
    scan_id = start_scan(scanfiles, "s3://bucket/doc.pdf")

    assert poll(scanfiles, scan_id) == {"status": "completed", "verdict": "error"}
    assert scanfiles.s3_scans[scan_id].error == "the stand-in has no s3_endpoint"


def test_s3_endpoint_can_be_set_on_a_running_standin(moto_endpoint, scanfiles):
    scanfiles.s3_endpoint = moto_endpoint

    scan_id = start_scan(scanfiles, put(moto_endpoint, b"%PDF-1.4"))

    assert poll(scanfiles, scan_id) == {"status": "completed", "verdict": "clean"}


# -- hold and waits ---------------------------------------------------------------------------


def test_held_s3_scans_stay_in_progress_until_released(moto_endpoint, moto_standin):
    s3_key = put(moto_endpoint, b"%PDF-1.4")
    moto_standin.hold_s3()

    scan_id = start_scan(moto_standin, s3_key)
    moto_standin.wait_for_s3_held(1)
    answer = httpx.get(f"{moto_standin.url}/clamav/{scan_id}", headers=KEY)

    assert (answer.status_code, answer.json()) == (200, {"status": "in_progress"})
    assert moto_standin.s3_held_count == 1
    assert moto_standin.s3_scans[scan_id].completed is False
    with pytest.raises(TimeoutError):
        moto_standin.wait_for_s3_completed(1, timeout=0.05)
    assert moto_standin.held_count == 0  # the POST /clamav hold is separate

    moto_standin.release_s3()
    moto_standin.wait_for_s3_completed(1)

    assert poll(moto_standin, scan_id) == {"status": "completed", "verdict": "clean"}
    assert moto_standin.s3_held_count == 0


def test_a_held_object_is_read_at_release(moto_endpoint, moto_standin):
    s3_key = put(moto_endpoint, b"%PDF-1.4")
    moto_standin.hold_s3()
    scan_id = start_scan(moto_standin, s3_key)
    moto_standin.wait_for_s3_held(1)

    bucket, key = s3_key.removeprefix("s3://").split("/", 1)
    s3_client(moto_endpoint).delete_object(Bucket=bucket, Key=key)
    moto_standin.release_s3()

    assert poll(moto_standin, scan_id) == {"status": "completed", "verdict": "error"}


def test_stop_ends_held_s3_scans_without_a_verdict(moto_endpoint):
    with ScanFilesStandIn(s3_endpoint=moto_endpoint) as standin:
        standin.hold_s3()
        scan_id = start_scan(standin, put(moto_endpoint, b"%PDF-1.4"))
        standin.wait_for_s3_held(1)
        started = time.monotonic()
        standin.stop()

        assert time.monotonic() - started < 2
        assert standin.s3_scans[scan_id].completed is False
        assert standin.scans_by_checksum == {}
        assert not any(t.name.startswith("scanfiles-s3-scan") for t in threading.enumerate())


def test_waits_time_out(scanfiles):
    for wait in (
        lambda: scanfiles.wait_for_s3_requests(1, timeout=0.05),
        lambda: scanfiles.wait_for_s3_completed(1, timeout=0.05),
        lambda: scanfiles.wait_for_s3_held(1, timeout=0.05),
        lambda: scanfiles.wait_for_polls(1, timeout=0.05),
    ):
        with pytest.raises(TimeoutError):
            wait()


async def test_async_waits_follow_requests_completions_and_polls(moto_endpoint, moto_standin):
    s3_key = put(moto_endpoint, b"%PDF-1.4")
    async with httpx.AsyncClient(base_url=moto_standin.url, headers=KEY) as client:
        payload = {"aws_account": ACCOUNT, "s3_key": s3_key, "sns_arn": SNS_ARN}
        scan_id = (await client.post("/clamav/s3", json=payload)).json()["scan_id"]
        await moto_standin.wait_for_s3_requests_async(1)
        await moto_standin.wait_for_s3_completed_async(1)
        for _ in range(3):
            await client.get(f"/clamav/{scan_id}")
        await moto_standin.wait_for_polls_async(3, scan_id=scan_id.upper())
        with pytest.raises(TimeoutError):
            await moto_standin.wait_for_s3_requests_async(2, timeout=0.05)

    moto_standin.wait_for_s3_requests(1)
    moto_standin.wait_for_polls(3)
    assert moto_standin.polls == {scan_id: 3}


# -- the answers of the real API --------------------------------------------------------------


def test_bad_auth_is_401_and_starts_no_scan(http, scanfiles):
    payload = {"aws_account": ACCOUNT, "s3_key": "s3://b/k", "sns_arn": SNS_ARN}

    for headers in ({}, {"Authorization": "Bearer " + DEFAULT_API_KEY}, {"Authorization": "x"}):
        posted = http.post("/clamav/s3", json=payload, headers=headers)
        polled = http.get(f"/clamav/{uuid.uuid4()}", headers=headers)
        not_a_uuid = http.get("/clamav/not-a-uuid", headers=headers)  # auth comes first

        for response in (posted, polled, not_a_uuid):
            assert (response.status_code, response.json()) == (401, UNAUTHORIZED)
            assert response.headers["Strict-Transport-Security"].startswith("max-age=")

    assert [r.status for r in scanfiles.s3_requests] == [401] * 3
    assert scanfiles.s3_scans == {}
    assert scanfiles.polls == {}


@pytest.mark.parametrize(
    ("payload", "detail"),
    [
        ({"s3_key": "s3://b/k", "sns_arn": SNS_ARN}, [missing("aws_account")]),
        ({"aws_account": ACCOUNT, "sns_arn": SNS_ARN}, [missing("s3_key")]),
        ({"aws_account": ACCOUNT, "s3_key": "s3://b/k", "sns_arn": None}, [missing("sns_arn")]),
        ({}, [missing("aws_account"), missing("s3_key"), missing("sns_arn")]),
        ([], [missing("aws_account"), missing("s3_key"), missing("sns_arn")]),
        (
            {"aws_account": 123456789012, "s3_key": "s3://b/k"},
            [
                {
                    "type": "string_type",
                    "loc": ["body", "aws_account"],
                    "msg": "Input should be a valid string",
                    "input": 123456789012,
                },
                missing("sns_arn"),
            ],
        ),
    ],
)
def test_missing_or_wrong_fields_are_422_as_fastapi_answers(http, scanfiles, payload, detail):
    response = http.post("/clamav/s3", json=payload, headers=KEY)

    assert (response.status_code, response.json()) == (422, {"detail": detail})
    assert scanfiles.s3_requests[0].body == payload
    assert scanfiles.s3_requests[0].status == 422
    assert scanfiles.s3_scans == {}


def test_a_body_that_is_not_json_is_422(http, scanfiles):
    fields = [missing("aws_account"), missing("s3_key"), missing("sns_arn")]
    as_form = http.post("/clamav/s3", data={"aws_account": ACCOUNT}, headers=KEY)
    empty = http.post("/clamav/s3", headers=KEY)
    # malformed JSON is refused before the api key is checked, as FastAPI reads the body first
    malformed = http.post(
        "/clamav/s3", content=b'{"aws_account": ', headers={"Content-Type": "application/json"}
    )

    assert (as_form.status_code, as_form.json()) == (422, {"detail": fields})
    assert (empty.status_code, empty.json()) == (422, {"detail": fields})
    assert malformed.status_code == 422
    assert malformed.json() == {
        "detail": [
            {
                "type": "json_invalid",
                "loc": ["body", 16],
                "msg": "JSON decode error",
                "input": {},
                "ctx": {"error": "Expecting value"},
            }
        ]
    }
    assert [(r.status, r.body) for r in scanfiles.s3_requests] == [
        (422, None),
        (422, None),
        (422, None),
    ]
    assert scanfiles.s3_requests[2].raw_body == b'{"aws_account": '


def test_an_unknown_scan_id_is_in_progress_not_404(http, scanfiles):
    scan_id = uuid.uuid4()

    for form in (str(scan_id), str(scan_id).upper(), scan_id.hex, f"urn:uuid:{scan_id}"):
        response = http.get(f"/clamav/{form}", headers=KEY)
        assert (response.status_code, response.json()) == (200, {"status": "in_progress"})

    assert scanfiles.polls == {str(scan_id): 4}


@pytest.mark.parametrize("scan_id", ["not-a-uuid", "s3", "1234", f"{uuid.uuid4()}0"])
def test_a_scan_id_that_is_not_a_uuid_is_422(http, scanfiles, scan_id):
    response = http.get(f"/clamav/{scan_id}", headers=KEY)

    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert (error["type"], error["loc"], error["input"]) == (
        "uuid_parsing",
        ["path", "scan_id"],
        scan_id,
    )
    assert error["msg"] == f"Input should be a valid UUID, {error['ctx']['error']}"
    assert scanfiles.polls == {}


def test_uuid_parsing_reasons_follow_the_uuid_crate(http):
    def reason(scan_id: str) -> str:
        return http.get(f"/clamav/{scan_id}", headers=KEY).json()["detail"][0]["ctx"]["error"]

    good = "123e4567-e89b-12d3-a456-426614174000"
    assert reason("s3") == "invalid character: found `s` at 1"
    assert reason("1234") == "invalid length: expected length 32 for simple format, found 4"
    assert reason(good[:23]) == "invalid group count: expected 5, found 4"
    assert reason(good + "1") == "invalid group length in group 4: expected 12, found 13"


def test_other_methods_are_405_and_other_paths_404(http):
    assert http.put("/clamav/s3", headers=KEY).status_code == 405
    assert http.delete(f"/clamav/{uuid.uuid4()}", headers=KEY).status_code == 405
    assert http.post(f"/clamav/{uuid.uuid4()}", headers=KEY).status_code == 405
    assert http.get(f"/clamav/{uuid.uuid4()}/x", headers=KEY).status_code == 404
    assert http.get("/clamav/s3", headers=KEY).status_code == 422  # routed as /clamav/{scan_id}


def test_a_post_clamav_scan_id_can_be_polled_too(http, scanfiles):
    scanned = http.post("/clamav", files={"file": ("a.txt", EICAR)}, headers=KEY).json()

    polled = http.get(f"/clamav/{scanned['scan_id']}", headers=KEY)

    assert polled.json() == {"status": "completed", "verdict": "malicious"}


# -- max_bytes: the Lambda function URL's payload cap ------------------------------------------


def test_a_body_above_max_bytes_is_413_and_not_scanned(http, scanfiles):
    assert scanfiles.max_bytes is None
    big, small = os.urandom(4000), os.urandom(500)
    assert http.post("/clamav", files={"file": ("a", big)}, headers=KEY).status_code == 200

    scanfiles.max_bytes = 2000
    refused = http.post("/clamav", files={"file": ("a", big)}, headers=KEY)
    unauthorised = http.post("/clamav", files={"file": ("a", big)})  # the cap comes first
    accepted = http.post("/clamav", files={"file": ("a", small)}, headers=KEY)

    assert (refused.status_code, refused.json()) == (413, LAMBDA_TOO_LARGE_BODY)
    assert refused.json() == {"message": "Request Entity Too Large"}
    assert (unauthorised.status_code, unauthorised.json()) == (413, LAMBDA_TOO_LARGE_BODY)
    assert accepted.json()["verdict"] == "clean"
    assert scanfiles.scans_by_checksum == {sha256(big): 1, sha256(small): 1}  # the first, uncapped
    assert [r.rejected_too_large for r in scanfiles.requests] == [False, True, True, False]
    assert scanfiles.requests[1].sha256 == sha256(big)  # recorded, not scanned


def test_a_chunked_body_above_max_bytes_is_413(http, scanfiles):
    def multipart(content: bytes) -> bytes:
        head = 'Content-Disposition: form-data; name="file"; filename="a"'
        return f"--b0undary\r\n{head}\r\n\r\n".encode() + content + b"\r\n--b0undary--\r\n"

    scanfiles.max_bytes = 2000
    headers = {**KEY, "Content-Type": "multipart/form-data; boundary=b0undary"}
    big = multipart(os.urandom(4000))

    # an iterator has no length: httpx sends it chunked, without a Content-Length
    refused = http.post("/clamav", content=iter([big[:1000], big[1000:]]), headers=headers)
    accepted = http.post("/clamav", content=iter([multipart(b"tiny")]), headers=headers)

    assert (refused.status_code, refused.json()) == (413, LAMBDA_TOO_LARGE_BODY)
    assert (accepted.status_code, accepted.json()["verdict"]) == (200, "clean")
    assert [r.transfer_encoding_header for r in scanfiles.requests] == ["chunked"] * 2
    assert [r.rejected_too_large for r in scanfiles.requests] == [True, False]
    assert scanfiles.requests[1].size == 4


def test_max_bytes_as_an_option_caps_every_route():
    with ScanFilesStandIn(max_bytes=100) as standin, httpx.Client(base_url=standin.url) as client:
        payload = {"aws_account": ACCOUNT, "s3_key": "s3://b/" + "k" * 200, "sns_arn": SNS_ARN}
        s3 = client.post("/clamav/s3", json=payload, headers=KEY)
        other = client.post("/elsewhere", content=b"x" * 101)

        assert (s3.status_code, s3.json()) == (413, LAMBDA_TOO_LARGE_BODY)
        assert (other.status_code, other.json()) == (413, LAMBDA_TOO_LARGE_BODY)
        assert standin.s3_requests[0].status == 413
        assert standin.s3_scans == {}


def test_recorded_s3_requests_carry_the_request_id(http, scanfiles):
    http.post("/clamav/s3", json={}, headers={**KEY, "X-Scanning-Request-Id": "abc"})

    [request] = scanfiles.s3_requests
    assert isinstance(request, RecordedS3Request)
    assert request.request_id == "abc"
