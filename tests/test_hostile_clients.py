"""What a hostile or careless client could do to a production server, and what it gets instead.

Each case runs the production command (``hypercorn -c hypercorn.toml``) with the scan-files
stand-in, on the local store and, where S3 decides the outcome, on a moto server process.
"""

from __future__ import annotations

import os
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import (
    AUTH,
    AWS_ENV,
    ROOT,
    SERVICE_ID,
    TOKEN,
    Server,
    free_port,
    new_bucket,
    production_command,
    s3_client,
)
from tests.test_hostile_input import (
    PDF,
    UPLOAD,
    assert_json_error,
    hostile_server,
    multipart,
    post_multipart,
)

PROXY_SECRET = "proxy-secret"
MAX_USER_METADATA = 2048  # bytes of names and values, UTF-8


def s3_env(endpoint: str) -> dict[str, str]:
    return {
        **AWS_ENV,
        "AWS_ENDPOINT_URL_S3": endpoint,
        "DOCUMENT_STORE": "s3",
        "DOCUMENTS_BUCKET": new_bucket(endpoint),
    }


@pytest.fixture(scope="module", params=["local", "s3"])
def server(request: pytest.FixtureRequest, tmp_path_factory) -> Iterator[Server]:
    env = s3_env(request.getfixturevalue("moto_endpoint")) if request.param == "s3" else {}
    with hostile_server(tmp_path_factory.mktemp("clients"), **env) as running:
        yield running


def stored_objects(server: Server) -> set[str]:
    """Every document the server's store holds."""
    if server.env.get("DOCUMENT_STORE") != "s3":
        return server.files()
    listing = s3_client(server.env["AWS_ENDPOINT_URL_S3"]).list_objects_v2(
        Bucket=server.env["DOCUMENTS_BUCKET"]
    )
    return {item["Key"] for item in listing.get("Contents", [])}


@pytest.fixture
def unchanged(server: Server) -> Iterator[None]:
    before = stored_objects(server)
    yield
    assert stored_objects(server) == before


# -- hostile names and oversized fields --------------------------------------------------------


def test_an_over_long_part_filename_is_a_400(server: Server, unchanged) -> None:
    scans = len(server.scanfiles.requests)
    name = "n" * (512 * 1024)  # within the server's MAX_CONTENT_LENGTH
    body = multipart((f'form-data; name="document"; filename="{name}"'.encode(), PDF))
    response = post_multipart(httpx.Client(base_url=server.url, timeout=30), body)
    assert assert_json_error(response, 400) == "Filename must be at most 255 characters"
    assert len(server.scanfiles.requests) == scans


def test_an_over_long_sending_method_is_a_400(server: Server, unchanged) -> None:
    response = httpx.post(
        server.url + UPLOAD,
        files={"document": ("d", PDF)},
        data={"sending_method": "x" * 64 * 1024},
        headers=AUTH,
    )
    assert assert_json_error(response, 400) == "sending_method must be at most 64 characters"


def test_a_urlencoded_upload_is_refused_before_it_is_parsed(server: Server, unchanged) -> None:
    # Millions of fields would parse for seconds on the event loop: the answer must come
    # before the body is even sent.
    head = (
        f"POST {UPLOAD} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
        "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 1000000\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(head + b"f0=v&f1=v")
        answer = sock.recv(65536)
    assert answer.split(b" ")[1] == b"400", answer
    assert b"connection: close" in answer.lower()  # the body was never read


@pytest.mark.parametrize("action", ["scan-verdict", "delete"])
def test_verdict_and_delete_refuse_large_bodies(server: Server, unchanged, action) -> None:
    path = f"/services/{SERVICE_ID}/documents/{uuid.uuid4()}"
    if action == "scan-verdict":
        request = {"method": "POST", "url": f"{server.url}{path}/scan-verdict"}
        request["data"] = {"sending_method": "link", "padding": "x" * 20_000}
    else:
        request = {"method": "DELETE", "url": server.url + path}
        request["json"] = {"key": "k", "sending_method": "link", "padding": "x" * 20_000}
    response = httpx.request(**request, headers=AUTH)
    assert "at most" in assert_json_error(response, 413)


def test_a_chunked_verdict_body_is_a_411(server: Server) -> None:
    path = f"/services/{SERVICE_ID}/documents/{uuid.uuid4()}/scan-verdict"
    chunks = iter([b"sending_method=link"])
    response = httpx.post(
        server.url + path,
        content=chunks,
        headers={**AUTH, "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert assert_json_error(response, 411) == "Content-Length header is required"


def test_no_object_carries_user_metadata_near_s3s_limit(moto_endpoint, tmp_path) -> None:
    # AWS refuses more than 2 KiB of user metadata on an object; moto and ministack do not,
    # so the worst case the API accepts is measured on what was written.
    env = s3_env(moto_endpoint)
    with hostile_server(tmp_path, **env) as server:
        response = httpx.post(
            server.url + UPLOAD,
            files={"document": ("\u2019" * 255, PDF)},
            data={"filename": "\u2019" * 255, "sending_method": "\U0001f600" * 64},
            headers=AUTH,
        )
        assert response.status_code == 201, response.text
        s3 = s3_client(moto_endpoint)
        listing = s3.list_objects_v2(Bucket=env["DOCUMENTS_BUCKET"])
        keys = [item["Key"] for item in listing["Contents"]]
        assert keys
        for key in keys:
            metadata = s3.head_object(Bucket=env["DOCUMENTS_BUCKET"], Key=key)["Metadata"]
            size = sum(len(name.encode()) + len(value.encode()) for name, value in metadata.items())
            assert size <= MAX_USER_METADATA, (key, size)


@pytest.fixture
def full_tmpdir(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs: a real ENOSPC for whatever is spooled there."""
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_tmpdir_while_spooling_is_a_503(tmp_path, full_tmpdir) -> None:
    with hostile_server(tmp_path, TMPDIR=str(full_tmpdir)) as server:
        before = server.files()
        response = httpx.post(
            server.url + UPLOAD,
            files={"document": ("d", PDF + b"\0" * (900 * 1024))},  # fits MAX_CONTENT_LENGTH
            headers=AUTH,
        )
        assert assert_json_error(response, 503).startswith("Document storage is unavailable")
        assert server.files() == before
        # space again: the same upload goes through
        small = httpx.post(server.url + UPLOAD, files={"document": ("d", PDF)}, headers=AUTH)
        assert small.status_code == 201


# -- metrics -----------------------------------------------------------------------------------


def series(url: str) -> set[tuple[str, tuple]]:
    text = httpx.get(f"{url}/metrics").text
    return {
        (sample.name, tuple(sorted(sample.labels.items())))
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_made_up_methods_and_paths_do_not_grow_metrics(server: Server) -> None:
    def noise(start: int) -> None:
        with httpx.Client(base_url=server.url) as http:
            for n in range(start, start + 30):
                http.request(f"M{n}X", f"/nowhere/{n}")
                http.request(f"M{n}Y", UPLOAD)

    noise(0)
    series(server.url)  # the scrape itself is a series too
    first = series(server.url)
    noise(1000)
    assert series(server.url) == first
    requests = {dict(labels)["method"] for name, labels in first if name == "dd_requests_total"}
    assert not any(method.startswith("M") for method in requests), requests
    assert "other" in requests


# -- standards and operators -------------------------------------------------------------------


def test_the_bearer_scheme_is_case_insensitive(server: Server) -> None:
    for scheme in ("bearer", "BEARER", "BeArEr"):
        response = httpx.post(
            server.url + UPLOAD,
            files={"document": ("d", PDF)},
            headers={"Authorization": f"{scheme} {TOKEN}"},
        )
        assert response.status_code == 201, (scheme, response.text)


def exchange(sock: socket.socket, request: bytes) -> bytes:
    """One request on ``sock``; the head of its answer (the body is read and dropped)."""
    sock.sendall(request)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, "the server closed the connection"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1])
        for line in head.lower().split(b"\r\n")
        if line.startswith(b"content-length:")
    )
    while len(rest) < length:
        rest += sock.recv(65536)
    return head.lower()


def test_a_read_body_keeps_the_connection_open_on_a_4xx(server: Server) -> None:
    # notification-api polls scan-verdict and gets 428s while a scan runs
    server.scanfiles.hold()
    try:
        upload = httpx.post(server.url + UPLOAD, files={"document": ("d", PDF)}, headers=AUTH)
        document_id = upload.json()["document"]["id"]
        body = b"sending_method=link"
        request = (
            f"POST /services/{SERVICE_ID}/documents/{document_id}/scan-verdict HTTP/1.1\r\n"
            f"Host: x\r\nAuthorization: Bearer {TOKEN}\r\n"
            "Content-Type: application/x-www-form-urlencoded\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            for _ in range(3):  # the same connection serves every poll
                head = exchange(sock, request)
                assert head.startswith(b"http/1.1 428"), head
                assert b"connection: close" not in head
    finally:
        server.scanfiles.release()


def test_content_length_with_transfer_encoding_always_closes(server: Server) -> None:
    request = (
        b"GET /_status HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        head = exchange(sock, request)
    assert head.startswith(b"http/1.1 200"), head
    assert b"connection: close" in head


def test_the_proxy_check_spares_only_the_shallow_health_check(tmp_path) -> None:
    env = {"CHECK_PROXY_HEADER": "true", "ROUTE_SECRET_KEY_1": PROXY_SECRET}
    with hostile_server(tmp_path, **env) as server:
        assert httpx.get(f"{server.url}/_status").status_code == 200
        for path in ("/_status?deep=1", "/_status?deep=true", "/metrics", "/openapi.json"):
            assert httpx.get(server.url + path).status_code == 403, path
        proxied = {"X-Custom-Forwarder": PROXY_SECRET}
        assert httpx.get(f"{server.url}/metrics", headers=proxied).status_code == 200


@pytest.mark.parametrize(("hops", "scheme"), [("0", "http"), ("1", "https")])
def test_direct_file_url_takes_its_scheme_from_trusted_proxies_only(
    tmp_path, hops: str, scheme: str
) -> None:
    with hostile_server(tmp_path, TRUSTED_PROXY_HOPS=hops) as server:
        response = httpx.post(
            server.url + UPLOAD,
            files={"document": ("d", PDF)},
            headers={**AUTH, "X-Forwarded-Proto": "https"},
        )
        assert response.status_code == 201
        assert response.json()["document"]["direct_file_url"].startswith(f"{scheme}://")


def test_scratch_without_auth_tokens_does_not_start(tmp_path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "AUTH_TOKENS"}
    env.update(NOTIFY_ENVIRONMENT="scratch", LOCAL_STORE_PATH=str(tmp_path / "docs"))
    done = subprocess.run(
        production_command(free_port()), cwd=ROOT, env=env, capture_output=True, timeout=60
    )
    assert done.returncode != 0
    assert b"AUTH_TOKENS" in done.stdout + done.stderr
