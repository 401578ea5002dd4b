"""Fixtures: real S3 server processes on 127.0.0.1 (moto, and ministack where SSE-C
enforcement matters), and apps built from environment variables as in production."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from dd_api.app import create_app
from tests.helpers import (
    AWS_ENV,
    BIN,
    TOKEN,
    Server,
    free_port,
    new_bucket,
    production_server,
    running,
    stop_process,
    wait_for_http,
)

if TYPE_CHECKING:
    from tests.support.scanfiles import ScanFilesStandIn

pytest_plugins = ["tests.support.scanfiles"]  # the scan-files stand-in fixture


@pytest.fixture(scope="session")
def server_process() -> Iterator[Callable[..., str]]:
    """Start a server process on a free loopback port; stopped at the end of the session."""
    processes: list[subprocess.Popen] = []

    def start(argv: list[str], *, port: int, probe: str = "/", env: dict | None = None) -> str:
        process = subprocess.Popen(
            argv,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
        )
        processes.append(process)
        url = f"http://127.0.0.1:{port}"
        wait_for_http(url + probe, process)
        return url

    yield start
    for process in processes:
        process.terminate()  # all at once: each may take a moment to exit
    for process in processes:
        stop_process(process, 10)


@pytest.fixture(scope="session")
def moto_endpoint(server_process: Callable[..., str]) -> str:
    port = free_port()
    return server_process([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)], port=port)


@pytest.fixture(scope="session")
def ministack_endpoint(server_process: Callable[..., str]) -> str:
    # Served through hypercorn directly so it listens on loopback only; unlike moto,
    # ministack enforces SSE-C (a missing or wrong key is refused as AWS does).
    port = free_port()
    argv = [sys.executable, "-m", "hypercorn", "ministack.app:app", "--bind", f"127.0.0.1:{port}"]
    return server_process(argv, port=port)


@pytest.fixture
def s3_env(monkeypatch: pytest.MonkeyPatch) -> Callable[[str], dict[str, str]]:
    """Point the AWS SDK at ``endpoint`` (through the standard variables) with a fresh bucket."""

    def use(endpoint: str) -> dict[str, str]:
        for name, value in AWS_ENV.items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", endpoint)
        return {"DOCUMENT_STORE": "s3", "DOCUMENTS_BUCKET": new_bucket(endpoint)}

    return use


@pytest.fixture
def base_env(tmp_path: Path, scanfiles: ScanFilesStandIn) -> dict[str, str]:
    return {
        "NOTIFY_ENVIRONMENT": "test",
        "AUTH_TOKENS": f"auth-token:{TOKEN}",
        "LOCAL_STORE_PATH": str(tmp_path / "documents"),
        "SERVER_NAME": "document-download.test",
        "ANTIVIRUS_API_HOST": scanfiles.url,
        "ANTIVIRUS_API_KEY": scanfiles.api_key,
        # below the 6 s Quart's test app allows for shutdown
        "BACKGROUND_TASK_SHUTDOWN_TIMEOUT": "3",
        "SCAN_DEADLINE_SECONDS": "5",
    }


@pytest.fixture(params=["local", "s3"])
def store_env(
    request: pytest.FixtureRequest, s3_env: Callable[[str], dict[str, str]]
) -> dict[str, str]:
    """Run a test once on the local store and once on S3 (moto)."""
    if request.param == "s3":
        return s3_env(request.getfixturevalue("moto_endpoint"))
    return {"DOCUMENT_STORE": "local"}


@pytest.fixture
def ssec_env(
    request: pytest.FixtureRequest, s3_env: Callable[[str], dict[str, str]]
) -> Callable[[str], dict[str, str]]:
    """Env for a store that really enforces document keys: local or ministack."""

    def choose(kind: str) -> dict[str, str]:
        if kind == "s3":
            return s3_env(request.getfixturevalue("ministack_endpoint"))
        return {"DOCUMENT_STORE": "local"}

    return choose


@pytest.fixture
async def client(base_env: dict[str, str], store_env: dict[str, str]) -> AsyncIterator:
    app = create_app({**base_env, **store_env})
    async with running(app) as test_client:
        test_client.app = app
        yield test_client


@pytest.fixture
def serve(tmp_path: Path, scanfiles: ScanFilesStandIn) -> Iterator[Callable[..., Server]]:
    """Start the production command (``tests.helpers.production_server``) with ``env`` added;
    the servers of a test share ``scanfiles`` and the local store ``tmp_path``/docs, and are
    stopped after it."""
    with ExitStack() as servers:

        def start(env: dict[str, str] | None = None) -> Server:
            launch = production_server(tmp_path, scanfiles, env, store=tmp_path / "docs")
            return servers.enter_context(launch)

        yield start
