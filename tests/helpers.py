"""Constants and helpers shared by the tests."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from io import BytesIO
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
import httpx
from hypercorn.asyncio import serve
from hypercorn.config import Config as HypercornConfig
from quart import Quart
from quart.datastructures import FileStorage
from quart.testing import QuartClient
from quart.testing.utils import make_test_body_with_headers

from dd_api.queue import new_queue_key

if TYPE_CHECKING:
    from tests.support.scanfiles import ScanFilesStandIn

TOKEN = "test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SERVICE_ID = "00000000-0000-0000-0000-000000000000"
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parent.parent


def production_command(port: int) -> list[str]:
    """The README's production command, bound to a loopback port (run it from ROOT)."""
    return [
        str(BIN / "hypercorn"),
        "-c",
        "hypercorn.toml",
        "--bind",
        f"127.0.0.1:{port}",
        "dd_api.asgi:app",
    ]


def stop_process(process: subprocess.Popen[bytes], grace: float) -> None:
    """SIGTERM, then SIGKILL if ``process`` has not exited within ``grace`` seconds."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_http(url: str, process: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args} exited with {process.returncode}")
        try:
            httpx.get(url, timeout=1.0)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout} s")


def new_bucket(endpoint: str) -> str:
    name = f"dd-test-{uuid.uuid4().hex[:20]}"
    s3_client(endpoint).create_bucket(Bucket=name)
    return name


def s3_client(endpoint: str):
    return boto3.client("s3", endpoint_url=endpoint, **_boto_credentials())


def _boto_credentials() -> dict[str, str]:
    return {
        "aws_access_key_id": AWS_ENV["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": AWS_ENV["AWS_SECRET_ACCESS_KEY"],
        "region_name": AWS_ENV["AWS_DEFAULT_REGION"],
    }


class Shared:
    """One bucket and one scan queue on an S3/SQS server process, as several instances
    share them; ``env`` is what each instance needs (with ``s3_env``'s variables)."""

    def __init__(self, endpoint: str, env: dict[str, str]) -> None:
        sqs = boto3.client("sqs", endpoint_url=endpoint, **_boto_credentials())
        url = sqs.create_queue(QueueName=f"dd-scans-{uuid.uuid4().hex[:12]}")["QueueUrl"]
        self.sqs, self.queue_url = sqs, url
        self.s3, self.bucket = s3_client(endpoint), env["DOCUMENTS_BUCKET"]
        self.env = {
            **env,
            "AUTH_TOKENS": "test-token",
            "AWS_ENDPOINT_URL_SQS": endpoint,
            "SCAN_QUEUE_URL": url,
            "SCAN_QUEUE_KEY": new_queue_key(),
        }

    def status(self, body: dict) -> str | None:
        key = f"api_link/{SERVICE_ID}/{body['id']}"
        tags = self.s3.get_object_tagging(Bucket=self.bucket, Key=key)["TagSet"]
        return {tag["Key"]: tag["Value"] for tag in tags}.get("av-status")

    def all_clean(self, bodies: list[dict]) -> bool:
        return all(self.status(body) == "clean" for body in bodies)

    def queue_empty(self) -> bool:
        attributes = self.sqs.get_queue_attributes(QueueUrl=self.queue_url, AttributeNames=["All"])
        counts = attributes["Attributes"]
        return all(
            counts[name] == "0"
            for name in (
                "ApproximateNumberOfMessages",
                "ApproximateNumberOfMessagesNotVisible",
                "ApproximateNumberOfMessagesDelayed",
            )
        )


@asynccontextmanager
async def running(app: Quart) -> AsyncIterator[QuartClient]:
    """The app with its lifespan run (before/after_serving), as Hypercorn would run it."""
    async with app.test_app() as test_app:
        yield test_app.test_client()


class Server:
    """A server process: its URL, its log file (stdout and stderr), its local store and the
    variables it was given over this process's environment."""

    def __init__(
        self,
        process: subprocess.Popen,
        url: str,
        log: Path,
        *,
        store: Path | None = None,
        scanfiles: ScanFilesStandIn | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.process, self.url, self.log = process, url, log
        self.port = int(url.rsplit(":", 1)[1])
        self.store, self.scanfiles, self.env = store, scanfiles, dict(env or {})

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> str:
        stop_process(self.process, 15)
        return self.output()

    def files(self) -> set[str]:
        """Every document in the local store (not its key files, temp files or scan queue)."""
        assert self.store is not None, "a server started without a local store"
        return {
            str(path.relative_to(self.store))
            for path in self.store.rglob("*")
            if path.is_file() and path.suffix in (".data", ".json")
        }


@contextmanager
def production_server(
    directory: Path,
    scanfiles: ScanFilesStandIn,
    env: Mapping[str, str] | None = None,
    *,
    store: Path | None = None,
) -> Iterator[Server]:
    """The production command (``production_command``) as a process on a free loopback port,
    answering ``/_status`` when this yields; stopped on leaving (SIGTERM, SIGKILL after 15 s).

    It gets this process's environment with, over it, scan-files at ``scanfiles``, its local
    store at ``store`` (default: ``directory``/docs-<port>) and then ``env``, which has the
    last word; it logs to ``directory``/server-<port>.log (``Server.output``).
    """
    port = free_port()
    added = {
        "LOCAL_STORE_PATH": str(store if store is not None else directory / f"docs-{port}"),
        "ANTIVIRUS_API_HOST": scanfiles.url,
        "ANTIVIRUS_API_KEY": scanfiles.api_key,
        **(env or {}),
    }
    log = directory / f"server-{port}.log"
    with log.open("wb") as output:  # the process keeps its own copy of the descriptor
        process = subprocess.Popen(
            production_command(port),
            cwd=ROOT,
            stdout=output,
            stderr=subprocess.STDOUT,
            env={**os.environ, **added},
        )
    url, store = f"http://127.0.0.1:{port}", Path(added["LOCAL_STORE_PATH"])
    server = Server(process, url, log, store=store, scanfiles=scanfiles, env=added)
    try:
        wait_for_http(f"{server.url}/_status", process)
        yield server
    finally:
        server.stop()


@contextmanager
def hypercorn_in_thread(app: Any, config: HypercornConfig | None = None) -> Iterator[str]:
    """The app under Hypercorn in a thread of this process, for settings no environment
    variable reaches and for log records before they are formatted; yields its URL."""
    config = config or HypercornConfig()
    config.workers = 1  # serve() runs in this process anyway
    port = free_port()
    config.bind = [f"127.0.0.1:{port}"]
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    thread = threading.Thread(
        target=loop.run_until_complete, args=(serve(app, config, shutdown_trigger=stop.wait),)
    )
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                httpx.get(f"{url}/_status", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.05)
        yield url
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(20)
        loop.close()


def document(content: bytes, filename: str = "document") -> dict[str, FileStorage]:
    """The ``files=`` of an upload, as notification-api sends it (part filename ``document``)."""
    return {"document": FileStorage(BytesIO(content), filename=filename)}


async def post_form(
    client: QuartClient,
    path: str,
    *,
    files: dict[str, FileStorage] | None = None,
    form: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
):
    """POST multipart with a Content-Length, as real clients send it (the test client omits it)."""
    body, body_headers = make_test_body_with_headers(files=files or {}, form=form)
    body_headers["Content-Length"] = str(len(body))
    return await client.post(path, data=body, headers={**body_headers, **(headers or {})})


async def upload(
    client: QuartClient,
    content: bytes = b"%PDF-1.4 file contents",
    service_id: str = SERVICE_ID,
    **form: str,
) -> dict:
    response = await post_form(
        client,
        f"/services/{service_id}/documents",
        files=document(content),
        form=form,
        headers=AUTH,
    )
    assert response.status_code == 201, await response.get_data(as_text=True)
    return (await response.get_json())["document"]


def upload_to(url: str, content: bytes, **form: str) -> dict:
    """Upload ``content`` to the server at ``url`` (as notification-api does); the document."""
    response = httpx.post(
        f"{url}/services/{SERVICE_ID}/documents",
        files={"document": ("document", content)},
        data=form,
        headers=AUTH,
        timeout=30,
    )
    assert response.status_code == 201, response.text
    return response.json()["document"]
