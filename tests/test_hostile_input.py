"""Hostile input against the production server process (hypercorn -c hypercorn.toml ...).

Two parts:

- Schemathesis generates valid and invalid requests for every operation of ``openapi.json``
  (bounded: a fixed number of examples, derandomized so every run sends the same requests).
  No answer may be a 5xx, every error body must be JSON without a stack trace, and every
  answer must be a documented status with the documented body and headers.
- Targeted cases a generator would not think of: broken multipart, too many parts, huge
  fields and headers, hostile filenames, almost-ids, bad keys, repeated parameters, slow
  bodies. Each ends in a clear 4xx and leaves the store exactly as it was (hostile filenames
  are accepted at upload and must come back as a safe ``Content-Disposition``).

The module's server must have logged no traceback when it stops.
"""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import time
import unicodedata
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import schemathesis
from hypercorn.config import Config as HypercornConfig
from hypothesis import HealthCheck, settings
from werkzeug.http import parse_options_header

from dd_api.app import create_app
from dd_api.views.limits import SMALL_BODY
from tests.helpers import (
    AUTH,
    ROOT,
    SERVICE_ID,
    TOKEN,
    Server,
    hypercorn_in_thread,
    production_server,
)
from tests.support.scanfiles import DEFAULT_API_KEY, ScanFilesStandIn

SPEC_PATH = ROOT / "src" / "dd_api" / "openapi.json"
LIMIT = 1024 * 1024  # the servers' MAX_CONTENT_LENGTH (above Quart's 500 kB form field limit)
PDF = b"%PDF-1.4 hostile input test"
UPLOAD = f"/services/{SERVICE_ID}/documents"
ZERO = "00000000-0000-0000-0000-000000000000"
SHORT_ZERO = "AAAAAAAAAAAAAAAAAAAAAA"
TRACEBACK_MARKERS = ("Traceback (most recent call last)", 'File "/')
NO_DOCUMENT = "No document upload"


# the settings of every server of the hostile-input suites
HOSTILE_ENV = {
    "NOTIFY_ENVIRONMENT": "test",
    "AUTH_TOKENS": TOKEN,
    "DOCUMENT_STORE": "local",
    "MAX_CONTENT_LENGTH": str(LIMIT),
    "SCAN_DEADLINE_SECONDS": "5",
    "BACKGROUND_TASK_SHUTDOWN_TIMEOUT": "3",
}


@contextmanager
def hostile_server(tmp: Path, **env: str) -> Iterator[Server]:
    """The production server with the suite's settings and ``env``, a scan-files stand-in of
    its own and a fresh local store."""
    with (
        ScanFilesStandIn(api_key=DEFAULT_API_KEY) as scanfiles,
        production_server(tmp, scanfiles, {**HOSTILE_ENV, **env}) as server,
    ):
        yield server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with hostile_server(tmp_path_factory.mktemp("hostile")) as running:
        yield running
    output = running.output()
    for marker in TRACEBACK_MARKERS:
        assert marker not in output, f"the server logged a traceback:\n{output[-6000:]}"


@pytest.fixture(scope="module")
def http(server: Server) -> Iterator[httpx.Client]:
    # A connection per request: a refused upload may close its connection (see
    # test_an_upload_refused_before_its_body_is_read_announces_the_close).
    limits = httpx.Limits(max_keepalive_connections=0)
    with httpx.Client(base_url=server.url, timeout=10, limits=limits) as client:
        yield client


@pytest.fixture
def unchanged(server: Server) -> Iterator[None]:
    """The test must add nothing to the store (scans of earlier uploads may remove their
    pending copies meanwhile; a wrongly deleted document is caught by the tests themselves).

    Checked once every request of the test has ended: the server stores a document before
    it answers, and a test that leaves a request unanswered waits for the server to have
    ended it (``wait_until_ended``)."""
    before = server.files()
    yield
    assert not server.files() - before


@pytest.fixture(scope="module")
def doc(http: httpx.Client) -> dict[str, str]:
    """One stored document: its ids and its key (base64 and raw)."""
    response = http.post(UPLOAD, files={"document": ("d", PDF)}, headers=AUTH)
    assert response.status_code == 201, response.text
    body = response.json()["document"]
    key = parse_qs(urlsplit(body["url"]).query)["key"][0]
    return {
        "id": body["id"],
        "key": key,
        "raw": base64.urlsafe_b64decode(key + "==").hex(),
        "direct": f"/services/{SERVICE_ID}/documents/{body['id']}",
        "short": urlsplit(body["url"]).path,
    }


def assert_json_error(response: httpx.Response, *statuses: int) -> str:
    """A 4xx with a JSON ``{"error": "<message>"}`` body and no stack trace; the message."""
    assert response.status_code in statuses, (response.status_code, response.text[:300])
    assert response.headers["content-type"] == "application/json", response.headers
    body = response.json()
    assert list(body) == ["error"] and isinstance(body["error"], str), body
    for marker in TRACEBACK_MARKERS:
        assert marker not in response.text
    return body["error"]


def multipart(*parts: tuple[bytes, bytes], boundary: bytes = b"b", end: bool = True) -> bytes:
    """A multipart body from (Content-Disposition value, content) pairs, byte for byte."""
    body = b"".join(
        b"--"
        + boundary
        + b"\r\nContent-Disposition: "
        + disposition
        + b"\r\n\r\n"
        + content
        + b"\r\n"
        for disposition, content in parts
    )
    return body + (b"--" + boundary + b"--\r\n" if end else b"")


DOCUMENT_PART = (b'form-data; name="document"; filename="d"', PDF)


def post_multipart(http: httpx.Client, body: bytes, boundary: str = "b", **headers: str):
    return http.post(
        UPLOAD,
        content=body,
        headers={**AUTH, "Content-Type": f"multipart/form-data; boundary={boundary}", **headers},
    )


def raw_exchange(
    server: Server, data: bytes, *, half_close: bool = False, wait: float = 5.0, ended: bool = False
):
    """Send raw bytes; the status of the answer (None if the server closed without one).
    ``ended``: return once the server has ended the request (``wait_until_ended``)."""
    since = server.log.stat().st_size
    with socket.create_connection(("127.0.0.1", server.port), timeout=wait) as sock:
        client_port = sock.getsockname()[1]
        sock.sendall(data)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        received = b""
        try:
            while b"\r\n\r\n" not in received:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                received += chunk
        except TimeoutError:
            pass
    if ended:
        wait_until_ended(server, client_port, since)
    if not received:
        return None, b""
    head, _, body = received.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def wait_until_ended(server: Server, client_port: int, since: int, timeout: float = 10.0) -> None:
    """Wait for the server's access-log line (past byte ``since`` of its log) of the request
    from ``client_port``: Hypercorn writes it when the request ends, answered or not, and
    hands an unanswered request's disconnect to the app right after (Quart then cancels its
    handler), so whatever that request could have stored is there by now."""
    logged = f"127.0.0.1:{client_port} ".encode()
    deadline = time.monotonic() + timeout
    with server.log.open("rb") as log:
        while True:
            log.seek(since)
            if logged in log.read():
                return
            assert time.monotonic() < deadline, f"the request from port {client_port} never ended"
            time.sleep(0.02)


def assert_healthy(server: Server) -> None:
    assert httpx.get(f"{server.url}/_status", timeout=5).status_code == 200


# -- generated requests ----------------------------------------------------------------------

CONFIG = schemathesis.Config.from_dict(
    {
        "generation": {
            "mode": "all",  # valid and invalid requests
            "max-examples": 25,
            "deterministic": True,
            "database": "none",
        },
        "phases": {"stateful": {"enabled": False}},
        # Every other built-in check runs: server errors, documented statuses, content types,
        # body schemas, headers, invalid data rejected, auth not ignored, 405 with Allow...
        # Valid data may still be refused: ids that name no document, bytes of no allowed type.
        "checks": {"positive_data_acceptance": {"enabled": False}},
        "auth": {"openapi": {"bearerAuth": {"bearer": TOKEN}}},
    }
)
schema = schemathesis.openapi.from_path(SPEC_PATH, config=CONFIG)


@schemathesis.check
def error_bodies_are_json_without_stack_traces(ctx, response, case):
    """Every 4xx/5xx (but a HEAD's, which has no body) is ``{"error": "<message>"}`` or, for
    scan-verdict, ``{"scan_verdict": "<value>"}``, or the deep health check's report; nothing
    looks like a traceback."""
    text = response.content.decode("utf-8", "replace")
    for marker in TRACEBACK_MARKERS:
        if marker in text:
            raise AssertionError(f"stack trace in the body: {text[:300]!r}")
    if response.status_code < 400 or case.method.upper() == "HEAD":
        return None
    content_type = response.headers.get("content-type", [""])[0]
    if content_type != "application/json":
        raise AssertionError(f"{response.status_code} with Content-Type {content_type!r}")
    body = json.loads(text)
    shapes = ({"error"}, {"scan_verdict"}, {"status", "checks"})
    if not (isinstance(body, dict) and set(body) in shapes):
        raise AssertionError(f"error body {body!r}")
    return None


@schema.parametrize()
@settings(deadline=None, suppress_health_check=list(HealthCheck))
def test_generated_requests_get_documented_answers(case, server: Server) -> None:
    response = case.call(base_url=server.url, timeout=10)
    case.validate_response(response)


# -- multipart ---------------------------------------------------------------------------------

MALFORMED = {
    "not multipart at all": b"this is not multipart",
    "empty": b"",
    "unterminated": multipart(DOCUMENT_PART, end=False),
    "cut in the part headers": b"--b\r\nContent-Disposition: form-da",
    "cut in the content": multipart(DOCUMENT_PART)[:-20],
    "part without a name": multipart((b'form-data; filename="d"', PDF)),
    "document without a filename": multipart((b'form-data; name="document"', PDF)),
    "non-UTF-8 part name": multipart((b'form-data; name="doc\xffument"; filename="d"', PDF)),
    "non-UTF-8 part filename": multipart((b'form-data; name="document"; filename="\xff\xfe"', PDF)),
    "other boundary": multipart(DOCUMENT_PART, boundary=b"other"),
    "no part headers": b"--b\r\n\r\n" + PDF + b"\r\n--b--\r\n",
    "header folding": b'--b\r\nContent-Disposition: form-data;\r\n name="document"\r\n\r\n'
    + PDF
    + b"\r\n--b--\r\n",
}


@pytest.mark.parametrize("body", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_multipart_is_a_400(http, unchanged, body: bytes) -> None:
    assert assert_json_error(post_multipart(http, body), 400) == NO_DOCUMENT


@pytest.mark.parametrize(
    "content_type",
    [
        "multipart/form-data",  # no boundary
        'multipart/form-data; boundary=""',
        "multipart/form-data; boundary=" + "b" * 200,
        "multipart/mixed; boundary=b",
        "application/x-www-form-urlencoded",
        "application/json",
        "text/plain",
        "application/octet-stream",
    ],
)
def test_an_upload_that_is_not_multipart_form_data_is_a_400(http, unchanged, content_type) -> None:
    body = multipart(DOCUMENT_PART)
    response = http.post(UPLOAD, content=body, headers={**AUTH, "Content-Type": content_type})
    assert assert_json_error(response, 400) == NO_DOCUMENT


TOO_LARGE_MESSAGE = "Uploaded document exceeds file size limit"
FORM_TOO_LARGE_MESSAGE = "Upload form has too many parts, or a form field that is too large"


def test_a_thousand_and_one_parts_are_a_413(http, unchanged) -> None:
    parts = [(f'form-data; name="f{i}"'.encode(), b"v") for i in range(1500)]
    response = post_multipart(http, multipart(DOCUMENT_PART, *parts))
    assert assert_json_error(response, 413) == FORM_TOO_LARGE_MESSAGE


def test_a_thousand_and_one_files_are_a_413(http, unchanged) -> None:
    response = post_multipart(http, multipart(*[DOCUMENT_PART] * 1001))
    assert assert_json_error(response, 413) == FORM_TOO_LARGE_MESSAGE


def test_a_field_over_the_form_memory_limit_is_a_413(http, unchanged) -> None:
    huge = (b'form-data; name="filename"', b"x" * 600_000)  # Quart's limit: 500 kB
    response = post_multipart(http, multipart(DOCUMENT_PART, huge))
    assert assert_json_error(response, 413) == FORM_TOO_LARGE_MESSAGE


def test_a_body_over_max_content_length_is_a_413(http, unchanged) -> None:
    document = (b'form-data; name="document"; filename="d"', PDF + b"x" * LIMIT)
    response = post_multipart(http, multipart(document))
    assert assert_json_error(response, 413) == TOO_LARGE_MESSAGE


def test_a_huge_declared_length_is_refused_before_the_body(server, unchanged) -> None:
    head = (
        f"POST {UPLOAD} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
        "Content-Type: multipart/form-data; boundary=b\r\n"
        f"Content-Length: {10**15}\r\n\r\n"
    ).encode()
    status, _ = raw_exchange(server, head + b"--b\r\n")
    assert status == 413


@pytest.mark.parametrize("half_close", [True, False], ids=["half-closed", "closed"])
def test_a_body_shorter_than_its_declared_length_stores_nothing(
    server, unchanged, half_close: bool
) -> None:
    body = multipart(DOCUMENT_PART)
    head = (
        f"POST {UPLOAD} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
        "Content-Type: multipart/form-data; boundary=b\r\n"
        f"Content-Length: {len(body) + 1000}\r\n\r\n"
    ).encode()
    status, _ = raw_exchange(server, head + body, half_close=half_close, wait=0.5, ended=True)
    assert status is None or 400 <= status < 500
    assert_healthy(server)


@pytest.mark.parametrize(
    ("path", "token"),
    [(UPLOAD, "wrong-token"), (f"/services/x{ZERO}/documents", TOKEN)],
    ids=["403", "404"],
)
def test_an_upload_refused_before_its_body_is_read_announces_the_close(
    server, unchanged, path: str, token: str
) -> None:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
        "Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 1000000\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(head + b"x" * 1000)
        answer = sock.recv(65536)
    headers = answer.partition(b"\r\n\r\n")[0].lower().split(b"\r\n")
    assert headers[0].split(b" ")[1] in (b"403", b"404")
    assert b"connection: close" in headers


# -- HTTP framing and headers ------------------------------------------------------------------

FRAMING = {
    "negative length": (b"Content-Length: -1\r\n\r\n", 400),
    "length not a number": (b"Content-Length: ten\r\n\r\n", 400),
    "two lengths": (b"Content-Length: 1\r\nContent-Length: 2\r\n\r\nab", 400),
    # RFC 9112 6.1: an unknown transfer coding is a 501 (h11's answer, not the app's)
    "unknown transfer coding": (b"Transfer-Encoding: gzip\r\n\r\n", 501),
    "bad chunk size": (b"Transfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
    "NUL in a header": (b"X-A: a\x00b\r\nContent-Length: 0\r\n\r\n", 400),
    "header without a colon": (b"Authorization\r\nContent-Length: 0\r\n\r\n", 400),
    "space before the colon": (b"Content-Length : 0\r\n\r\n", 400),
}


@pytest.mark.parametrize(("tail", "status"), FRAMING.values(), ids=FRAMING.keys())
def test_broken_http_framing_is_refused(server, unchanged, tail: bytes, status: int) -> None:
    head = f"POST {UPLOAD} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n".encode()
    answered, _ = raw_exchange(server, head + tail)
    assert answered == status  # Hypercorn's own answer (empty body): the app never sees it
    assert_healthy(server)


def test_a_header_block_over_64_kib_is_a_431(server, unchanged) -> None:
    response = httpx.post(
        f"{server.url}{UPLOAD}",
        files={"document": ("d", PDF)},
        headers={**AUTH, "X-Padding": "a" * 100_000},
    )
    assert response.status_code == 431  # Hypercorn's own answer (empty body)
    many = {f"X-Header-{i}": "a" * 90 for i in range(1000)}
    response = httpx.post(
        f"{server.url}{UPLOAD}", files={"document": ("d", PDF)}, headers={**AUTH, **many}
    )
    assert response.status_code == 431
    assert_healthy(server)


@pytest.mark.parametrize(
    "authorization",
    [
        "Bearer " + "x" * 50_000,
        "Bearer",
        "Bearer  " + TOKEN,
        "Basic " + base64.b64encode(f"user:{TOKEN}".encode()).decode(),
        TOKEN,
        f"Bearer {TOKEN}:{TOKEN}",
        f"Bearer {TOKEN[:-1]}",
        "Bearer \u00e9\u00ff",
    ],
)
def test_a_bad_bearer_token_is_refused_before_the_body(http, unchanged, authorization) -> None:
    response = http.post(
        UPLOAD,
        content=multipart(DOCUMENT_PART),
        headers={
            "Authorization": authorization.encode("latin-1"),  # type: ignore[dict-item]
            "Content-Type": "multipart/form-data; boundary=b",
        },
    )
    assert_json_error(response, 401, 403)


# -- ids -------------------------------------------------------------------------------------

ALMOST_UUIDS = [
    ZERO[1:],
    ZERO + "0",
    ZERO.replace("-", ""),
    "{" + ZERO + "}",
    "urn:uuid:" + ZERO,
    ZERO[:-1] + "g",
    ZERO + "%00",
    ZERO + "%0A",
    "%20" + ZERO,
    ZERO[:-1] + "%C3%A9",
    "%EF%BC%90" + ZERO[1:],  # a full-width zero
    "..",
    "%2e%2e",
    "..%2F..%2Fetc%2Fpasswd",
]
ALMOST_SHORT_IDS = [
    SHORT_ZERO[1:],
    SHORT_ZERO + "A",
    SHORT_ZERO + "==",
    "A" * 20 + "%2B%2D",
    "%C3%A9" * 22,
    "%00" * 22,
    "%2e%2e",
    "A" * 21 + "%FF",
]


@pytest.mark.parametrize("bad", ALMOST_UUIDS)
@pytest.mark.parametrize("position", ["service", "document"])
def test_almost_uuids_are_a_404_everywhere(http, unchanged, bad: str, position: str) -> None:
    service, document = (bad, ZERO) if position == "service" else (ZERO, bad)
    if position == "service":
        response = http.post(
            f"/services/{service}/documents", files={"document": ("d", PDF)}, headers=AUTH
        )
        assert_json_error(response, 404)
    path = f"/services/{service}/documents/{document}?key={'A' * 43}"
    for method in ("GET", "DELETE"):
        assert_json_error(http.request(method, path, headers=AUTH), 404)
    assert http.head(path).status_code == 404
    verdict = f"/services/{service}/documents/{document}/scan-verdict"
    assert_json_error(http.post(verdict, headers=AUTH), 404)


@pytest.mark.parametrize("bad", ALMOST_SHORT_IDS)
@pytest.mark.parametrize("position", ["service", "document"])
def test_almost_short_ids_are_a_404(http, unchanged, bad: str, position: str) -> None:
    service, document = (bad, SHORT_ZERO) if position == "service" else (SHORT_ZERO, bad)
    path = f"/d/{service}/{document}?key={'A' * 43}"
    assert_json_error(http.get(path), 404)
    assert http.head(path).status_code == 404


@pytest.mark.parametrize(
    "path",
    [f"/d/{SHORT_ZERO}//{SHORT_ZERO}", f"/services//{ZERO}/documents/{ZERO}"],
)
def test_a_doubled_slash_is_a_json_404_not_an_html_redirect(http, path: str) -> None:
    response = http.get(f"{path}?key={'A' * 43}")
    assert_json_error(response, 404)


# -- keys ------------------------------------------------------------------------------------


def wrong_keys(doc: dict[str, str]) -> dict[str, str]:
    key = doc["key"]
    flipped = ("B" if key[0] == "A" else "A") + key[1:]
    return {
        "empty": "",
        "one character short": key[:-1],
        "one character long": key + "A",
        "two characters long": key + "AA",
        "42 characters": "A" * 42,
        "44 characters": "A" * 44,
        "well formed, wrong": "A" * 43,
        "one character changed": flipped,
        "raw hex": doc["raw"],
        "nothing in the alphabet": "*" * 43,
        "non-ASCII": "\u00e9" * 43,
        "NUL bytes": "\x00" * 43,
        "control characters": "\r\n" * 22,
        "10,000 characters": "A" * 10_000,
    }


KEY_CASES = list(wrong_keys({"key": "A" * 43, "raw": "00" * 32}))


@pytest.mark.parametrize("case", KEY_CASES)
def test_a_wrong_key_opens_and_deletes_nothing(http, unchanged, doc, case: str) -> None:
    key = wrong_keys(doc)[case]
    direct = http.get(doc["direct"], params={"key": key})
    message = assert_json_error(direct, 400)
    assert message in ("Missing decryption key", "Invalid decryption key")
    assert http.head(doc["direct"], params={"key": key}).status_code == 400
    assert_json_error(http.get(doc["short"], params={"key": key}), 404)
    assert http.head(doc["short"], params={"key": key}).status_code == 404
    assert_json_error(http.delete(doc["direct"], params={"key": key}, headers=AUTH), 400)
    as_json = http.request("DELETE", doc["direct"], json={"key": key}, headers=AUTH)
    assert_json_error(as_json, 413 if len(key) > SMALL_BODY else 400)
    assert http.get(doc["direct"], params={"key": doc["key"]}).content == PDF


def test_repeated_query_parameters_take_the_first_value(http, unchanged, doc) -> None:
    right, wrong = doc["key"], "A" * 43
    pairs = [("key", wrong), ("key", right)]
    assert_json_error(http.get(doc["direct"], params=pairs), 400)
    assert_json_error(http.get(doc["short"], params=pairs), 404)
    assert_json_error(http.delete(doc["direct"], params=pairs, headers=AUTH), 400)
    response = http.get(doc["direct"], params=[("key", right), ("key", wrong)])
    assert response.status_code == 200
    methods = [("sending_method", "template_attach"), ("sending_method", "link")]
    assert_json_error(http.get(doc["direct"], params=[("key", right), *methods]), 404)
    names = [("key", right), ("filename", "first.pdf"), ("filename", "second.pdf")]
    response = http.get(doc["direct"], params=names)
    assert response.headers["content-disposition"] == "attachment; filename=first.pdf"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"[1, 2]", "Request body must be a JSON object"),
        (b'"key"', "Request body must be a JSON object"),
        (b"null", "Request body must be a JSON object"),
        (b"{not json", "Request body must be a JSON object"),
        (b"", "Request body must be a JSON object"),
        (b'{"key": 1}', "key must be a string"),
        (b'{"key": ["a"]}', "key must be a string"),
        (b'{"key": {"$ne": null}}', "key must be a string"),
        (b'{"key": "AAAA", "sending_method": 7}', "sending_method must be a string"),
    ],
)
def test_a_bad_json_delete_body_is_a_400(http, unchanged, doc, body: bytes, message) -> None:
    response = http.request(
        "DELETE",
        doc["direct"],
        content=body,
        headers={**AUTH, "Content-Type": "application/json"},
    )
    assert assert_json_error(response, 400) == message


@pytest.mark.parametrize(
    "body",
    [b'{"key": "\xff\xfe"}', b"[" * 4000 + b"]" * 4000],
    ids=["not UTF-8", "nested 4,000 deep"],
)
def test_an_undecodable_json_delete_body_is_a_400(server, body: bytes) -> None:
    path = f"/services/{SERVICE_ID}/documents/{ZERO}"
    response = httpx.request(
        "DELETE",
        server.url + path,
        content=body,
        headers={**AUTH, "Content-Type": "application/json"},
    )
    assert assert_json_error(response, 400) == "Request body must be a JSON object"


# -- filenames -------------------------------------------------------------------------------

HOSTILE_NAMES = {
    "CR LF header injection": "a.pdf\r\nX-Injected: yes",
    "LF only": "a\nb.pdf",
    "quotes": 'a"b".pdf',
    "backslash quote": 'a\\"; filename="evil.exe',
    "parameter injection": "a.pdf; filename*=UTF-8''evil.exe",
    "slash": "dir/a.pdf",
    "dot dot": "../../etc/passwd",
    "absolute": "/etc/passwd",
    "NUL": "a\x00b.pdf",
    "tab and DEL": "a\tb\x7f.pdf",
    "replacement characters": "\ufffd\ufffd.pdf",
    "non-ASCII": "r\u00e9sum\u00e9 \u2013 \u4e2d\u6587.pdf",
    "line separators": "a\u2028b\u2029c\u0085.pdf",
    "bidi override": "\u202egnp.exe",
    "emoji": "\U0001f4c4.pdf",
    "percent escapes": "a%0d%0ab.pdf",
    "only dots": "..",
}


def assert_safe_disposition(response: httpx.Response, name: str) -> None:
    assert response.status_code == 200
    assert "x-injected" not in response.headers
    values = response.headers.get_list("content-disposition")
    assert len(values) == 1
    value = values[0]
    value.encode("ascii")  # raises on anything that is not plain ASCII
    assert not any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value), repr(value)
    kind, options = parse_options_header(value)
    assert kind == "attachment"
    # the README's rule: control (and format, e.g. bidi override) characters become "_"
    expected = "".join("_" if unicodedata.category(ch)[0] == "C" else ch for ch in name)
    assert options == {"filename": expected}  # werkzeug decodes filename* into filename


@pytest.mark.parametrize("name", HOSTILE_NAMES.values(), ids=HOSTILE_NAMES.keys())
def test_hostile_download_filenames_give_a_safe_content_disposition(
    http, unchanged, doc, name: str
) -> None:
    params = {"key": doc["key"], "filename": name}
    for path in (doc["direct"], doc["short"]):
        response = http.get(path, params=params)
        assert response.content == PDF
        assert_safe_disposition(response, name)
        head = http.head(path, params=params)
        assert head.headers["content-disposition"] == response.headers["content-disposition"]


def test_a_non_utf8_download_filename_gives_a_safe_content_disposition(
    http, unchanged, doc
) -> None:
    query = f"key={doc['key']}&filename=a%FF%FEb%C3.pdf"
    response = http.get(f"{doc['direct']}?{query}")
    # werkzeug keeps undecodable escapes as they were sent
    assert_safe_disposition(response, "a%FF%FEb%C3.pdf")


def scan_request_for(server: Server, content: bytes) -> Any:
    digest = hashlib.sha256(content).hexdigest()
    for _ in range(100):
        for request in server.scanfiles.requests:
            if request.sha256 == digest:
                return request
        time.sleep(0.05)
    raise AssertionError("the document was never sent to scan-files")


@pytest.mark.parametrize("name", HOSTILE_NAMES.values(), ids=HOSTILE_NAMES.keys())
def test_hostile_upload_filenames_are_kept_as_data(server, http, name: str) -> None:
    """The filename is the sender's data: stored and echoed as sent, never a path or a header."""
    content = PDF + uuid.uuid4().bytes
    before = server.files()
    response = http.post(
        UPLOAD,
        files={"document": (name, content)},
        data={"filename": name, "sending_method": "attach"},
        headers=AUTH,
    )
    assert response.status_code == 201, response.text
    document = response.json()["document"]
    assert document["filename"] == name
    url = document["url"]
    assert all(0x21 <= ord(ch) < 0x7F for ch in url), url  # percent-encoded, no raw bytes
    assert parse_qs(urlsplit(url).query)["filename"] == [name]
    # the store names files by ids only: nothing outside it, nothing named after the sender
    new = server.files() - before
    assert new and all(document["id"] in path for path in new), new
    assert all(".." not in path and "passwd" not in path for path in new)
    # the scan request to scan-files carries the name without breaking its multipart
    scanned = scan_request_for(server, content)
    assert scanned.filename is not None
    assert not any(ch in scanned.filename for ch in "\r\n\x00"), repr(scanned.filename)
    # and the link gives the document back under a safe name
    link = urlsplit(url)
    download = http.get(f"{link.path}?{link.query}")
    assert download.content == content
    assert_safe_disposition(download, name)


def test_a_non_utf8_upload_filename_field_is_replaced_not_fatal(server, http) -> None:
    content = PDF + uuid.uuid4().bytes
    body = multipart(
        (b'form-data; name="document"; filename="d"', content),
        (b'form-data; name="filename"', b"name\xff\xfe\x00\r\n.pdf"),
    )
    response = post_multipart(http, body)
    assert response.status_code == 201, response.text
    assert response.json()["document"]["filename"] == "name\ufffd\ufffd\x00\r\n.pdf"
    scan_request_for(server, content)


def test_an_upload_whose_link_cannot_work_is_refused(server) -> None:
    name = "x" * 100_000 + ".pdf"
    before = server.files()
    response = httpx.post(
        server.url + UPLOAD,
        files={"document": ("d", PDF)},
        data={"filename": name},
        headers=AUTH,
    )
    if response.status_code == 201:
        link = urlsplit(response.json()["document"]["url"])
        download = httpx.get(f"{server.url}{link.path}?{link.query}")
        assert download.status_code == 200, "201 answered with a link that cannot be served"
    assert_json_error(response, 400)
    assert server.files() == before


# -- slow bodies -----------------------------------------------------------------------------


def slow_upload_head(length: int) -> bytes:
    return (
        f"POST {UPLOAD} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
        "Content-Type: multipart/form-data; boundary=b\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


def test_a_slow_body_does_not_hold_up_other_requests(server, unchanged) -> None:
    body = multipart(DOCUMENT_PART)
    since = server.log.stat().st_size
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as slow:
        slow.sendall(slow_upload_head(len(body)) + body[:10])
        started = time.monotonic()
        for _ in range(5):
            assert_healthy(server)
        assert time.monotonic() - started < 2
        verdict = httpx.post(
            f"{server.url}/services/{SERVICE_ID}/documents/{ZERO}/scan-verdict", headers=AUTH
        )
        assert_json_error(verdict, 404)  # a request with a body, on another connection
        client_port = slow.getsockname()[1]
    wait_until_ended(server, client_port, since)  # the slow upload, abandoned


def test_a_slow_body_times_out_on_the_production_server(tmp_path) -> None:
    with hostile_server(tmp_path, BODY_TIMEOUT_SECONDS="1") as server:
        body = multipart(DOCUMENT_PART)
        status, _ = raw_exchange(server, slow_upload_head(len(body)) + body[:10], wait=4)
        assert status == 408, "no answer within 4 s"
        assert not server.files()


def test_a_slow_body_times_out_with_408_and_frees_its_request(tmp_path, scanfiles) -> None:
    store = tmp_path / "docs"
    app = create_app(
        {
            "NOTIFY_ENVIRONMENT": "test",
            "AUTH_TOKENS": TOKEN,
            "LOCAL_STORE_PATH": str(store),
            "ANTIVIRUS_API_HOST": scanfiles.url,
            "ANTIVIRUS_API_KEY": scanfiles.api_key,
        }
    )
    app.config["BODY_TIMEOUT"] = 1
    with hypercorn_in_thread(app, quiet_config()) as url:
        port = int(url.rsplit(":", 1)[1])
        body = multipart(DOCUMENT_PART)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            started = time.monotonic()
            sock.sendall(slow_upload_head(len(body)) + body[:10])
            answer = b""
            while not answer.endswith(b"}\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                answer += chunk
            assert time.monotonic() - started < 4
        head, _, error = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408"), answer[:300]
        assert json.loads(error) == {"error": "Request Timeout"}
        assert httpx.get(f"{url}/_status").status_code == 200
    assert not [path for path in store.rglob("*") if path.suffix in (".data", ".json")]


def quiet_config() -> HypercornConfig:
    config = HypercornConfig()
    config.accesslog = None
    return config
