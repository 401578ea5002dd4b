"""Downloads cannot starve the service: stalled readers are cut off, downloads have their own
S3 pool and a cap, and an S3 endpoint that never answers gives a 503, not a hung upload.

All on the production command with moto as a separate S3 server process.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import httpx
import pytest

from dd_api.app import create_app
from dd_api.store import Location, StoredDocument
from tests.helpers import AUTH, AWS_ENV, SERVICE_ID, hypercorn_in_thread, upload_to
from tests.test_openapi import conformance_errors

# Larger than every buffer between S3 and a stalled client (a few MiB on loopback), so a
# reader that takes nothing really holds its download open. It fits MAX_CONTENT_LENGTH.
BIG = b"%PDF-1.4\n" + bytes(range(256)) * (40 * 1024 - 16)
SMALL = b"%PDF-1.4 small"
TIMEOUT = httpx.Timeout(30.0)
TCP_ESTABLISHED = 1
SHORT_PATH = "/d/{service_id}/{document_id}"
# long enough for the checks made while stalled readers hold every slot
STALL_SECONDS = 5.0
LIMIT = 3
DIRECT_PATH = "/services/{service_id}/documents/{document_id}"


def links(url: str, document: dict) -> tuple[str, str]:
    """The short and the direct link of ``document``, on the server at ``url``."""
    short = urlsplit(document["url"])
    direct = urlsplit(document["direct_file_url"])
    return f"{url}{short.path}?{short.query}", f"{url}{direct.path}?{direct.query}"


def stalled_get(url: str) -> socket.socket:
    """A client that asks for ``url`` and then reads nothing, with a tiny receive window."""
    parts = urlsplit(url)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: the window
    sock.connect((parts.hostname, parts.port))
    request = f"GET {parts.path}?{parts.query} HTTP/1.1\r\nHost: {parts.netloc}\r\n\r\n"
    sock.sendall(request.encode())
    return sock


def established(sock: socket.socket) -> bool:
    """Whether the server has neither reset nor finished the connection (read without reading)."""
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0] == TCP_ESTABLISHED


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout} s: {what}")
        time.sleep(0.05)


def verdict(url: str, document_id: str) -> httpx.Response:
    return httpx.post(
        f"{url}/services/{SERVICE_ID}/documents/{document_id}/scan-verdict",
        data={"sending_method": "link"},
        headers=AUTH,
        timeout=TIMEOUT,
    )


@pytest.fixture
def hung_s3() -> Iterator[str]:
    """An S3 endpoint that accepts connections and never answers."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    thread.join(5)
    for sock in [*accepted, listener]:
        sock.close()


def test_stalled_readers_hold_only_download_slots_and_are_cut_off(
    serve, s3_env, moto_endpoint
) -> None:
    server = serve(
        {
            **s3_env(moto_endpoint),
            "AUTH_TOKENS": "test-token",
            "DOWNLOAD_CONCURRENCY": str(LIMIT),
            "DOWNLOAD_STALL_SECONDS": str(STALL_SECONDS),
            # fewer than the stalled downloads: shared with them, this pool would be gone
            "S3_MAX_POOL_CONNECTIONS": "2",
            # shorter than the stall: a paused S3 body must not time out meanwhile
            "S3_READ_TIMEOUT_SECONDS": "1",
        }
    )
    short, direct = links(server.url, upload_to(server.url, BIG))
    stalled = [stalled_get(short) for _ in range(LIMIT)]
    try:
        # every slot is held once a HEAD (which takes one only briefly) is refused
        wait_until(
            lambda: httpx.head(short, timeout=TIMEOUT).status_code == 503, 10, "slots all held"
        )
        for url, path in ((short, SHORT_PATH), (direct, DIRECT_PATH)):
            busy = httpx.get(url, timeout=TIMEOUT)
            assert busy.status_code == 503
            assert busy.json() == {"error": "Too many downloads in progress, try again later"}
            assert int(busy.headers["Retry-After"]) > 0
            assert conformance_errors(path, "get", busy, busy.content) == []

        small = upload_to(server.url, SMALL)
        wait_until(lambda: verdict(server.url, small["id"]).status_code == 200, 10, "clean verdict")
        deep = httpx.get(f"{server.url}/_status?deep=1", timeout=TIMEOUT)
        assert deep.status_code == 200, deep.text
        # all of the above happened while the stalled readers held every slot
        assert all(established(sock) for sock in stalled)

        wait_until(
            lambda: not any(established(sock) for sock in stalled),
            STALL_SECONDS + 10,
            "stalled connections closed by the server",
        )
        # three at once: every slot and every download-pool connection came back
        with ThreadPoolExecutor(LIMIT) as pool:
            answers = list(pool.map(lambda _: httpx.get(short, timeout=TIMEOUT), range(LIMIT)))
        assert [answer.status_code for answer in answers] == [200] * LIMIT
        assert all(answer.content == BIG for answer in answers)
    finally:
        for sock in stalled:
            sock.close()
    output = server.stop()
    assert output.count("Download cut off") == LIMIT
    assert "Error in ASGI Framework" not in output
    assert "Traceback" not in output


def test_a_slow_reader_that_keeps_reading_is_not_cut_off(serve, s3_env, moto_endpoint) -> None:
    server = serve(
        {
            **s3_env(moto_endpoint),
            "AUTH_TOKENS": "test-token",
            "DOWNLOAD_STALL_SECONDS": "1",
            # the slow client keeps dd-api from reading S3 for longer than this
            "S3_READ_TIMEOUT_SECONDS": "1",
        }
    )
    short, _ = links(server.url, upload_to(server.url, BIG))
    sock = stalled_get(short)
    received = bytearray()
    try:
        # 40 KiB/s for three stall periods: one 256 KiB chunk takes it 6 s to take, so only
        # progress counted in bytes, not in chunks, keeps it going
        slow_until = time.monotonic() + 3.0
        while time.monotonic() < slow_until:
            received += sock.recv(4096)
            time.sleep(0.1)
        sock.settimeout(30)
        while len(received.partition(b"\r\n\r\n")[2]) < len(BIG):
            chunk = sock.recv(1 << 20)
            assert chunk, "the server closed the connection"
            received += chunk
    finally:
        sock.close()
    head, _, body = bytes(received).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert body == BIG
    assert "Download cut off" not in server.stop()


def test_an_s3_endpoint_that_never_answers_gives_503(serve, hung_s3) -> None:
    server = serve(
        {
            **AWS_ENV,
            "AWS_ENDPOINT_URL_S3": hung_s3,
            "DOCUMENT_STORE": "s3",
            "DOCUMENTS_BUCKET": "dd-test-hung",
            "AUTH_TOKENS": "test-token",
            "S3_CONNECT_TIMEOUT_SECONDS": "0.5",
            "S3_READ_TIMEOUT_SECONDS": "0.5",
        }
    )
    started = time.monotonic()
    response = httpx.post(
        f"{server.url}/services/{SERVICE_ID}/documents",
        files={"document": ("document", SMALL)},
        headers=AUTH,
        timeout=httpx.Timeout(60.0),
    )
    assert response.status_code == 503
    assert response.json() == {"error": "Document storage is unavailable, try again later"}
    assert time.monotonic() - started < 45  # well before the client's own 60 s


def test_the_limit_and_the_cut_off_hold_on_the_local_store_too(serve) -> None:
    server = serve(
        {
            "AUTH_TOKENS": "test-token",
            "DOWNLOAD_CONCURRENCY": "1",
            "DOWNLOAD_STALL_SECONDS": "3",
            # behind a load balancer: the proxy middleware must not hide the connection
            "TRUSTED_PROXY_HOPS": "1",
        }
    )
    short, direct = links(server.url, upload_to(server.url, BIG))
    sock = stalled_get(short)
    try:
        wait_until(lambda: httpx.head(direct, timeout=TIMEOUT).status_code == 503, 10, "slot held")
        busy = httpx.get(direct, timeout=TIMEOUT)
        assert busy.status_code == 503
        assert busy.headers["Retry-After"]
        assert established(sock)  # refused while the stalled reader held the only slot
        wait_until(lambda: not established(sock), 13, "stalled connection closed by the server")
        answer = httpx.get(short, timeout=TIMEOUT)
        assert answer.status_code == 200
        assert answer.content == BIG
    finally:
        sock.close()
    assert "Download cut off" in server.stop()


class _TagsOnHold:
    """The app's store, with tag reads held until released and document closes recorded."""

    def __init__(self, store: object) -> None:
        self._store = store
        self.hold = threading.Event()
        self.opened = threading.Event()
        self.closed = threading.Event()

    def __getattr__(self, name: str) -> object:
        return getattr(self._store, name)

    async def get_tags(self, location: Location) -> dict[str, str]:
        while self.hold.is_set():
            await asyncio.sleep(0.02)
        return await self._store.get_tags(location)

    async def get(self, location: Location, key: bytes | None) -> StoredDocument:
        document = await self._store.get(location, key)

        def release() -> None:
            document.close()
            self.closed.set()

        self.opened.set()
        return StoredDocument(
            mimetype=document.mimetype, size=document.size, chunks=document, release=release
        )


def test_a_download_abandoned_mid_request_closes_its_document_and_slot(base_env) -> None:
    app = create_app({**base_env, "DOCUMENT_STORE": "local", "DOWNLOAD_CONCURRENCY": "1"})
    with hypercorn_in_thread(app) as url:
        short, _ = links(url, upload_to(url, SMALL))
        store = _TagsOnHold(app.extensions["dd_api"].store)
        app.extensions["dd_api"].store = store
        store.hold.set()
        client = stalled_get(short)
        assert store.opened.wait(10)
        # the client leaves while the tags are still being read: Quart cancels the request
        client.close()
        assert store.closed.wait(10), "the abandoned download's document was never closed"
        store.hold.clear()
        answer = httpx.get(short, timeout=TIMEOUT)  # and its slot came back
        assert answer.status_code == 200
        assert answer.content == SMALL
