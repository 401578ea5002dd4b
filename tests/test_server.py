"""The production command, as a real process: hypercorn -c hypercorn.toml dd_api.asgi:app."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import httpx
import pytest

from tests.helpers import AUTH, ROOT, SERVICE_ID, free_port, production_command, upload_to

PDF = b"%PDF-1.4 " + b"x" * 100_000


def test_upload_then_download_on_the_default_store(serve) -> None:
    server = serve({"AUTH_TOKENS": "test-token"})
    body = upload_to(server.url, PDF, filename="report.pdf", sending_method="link")
    short = body["url"].replace("http://localhost:7000", server.url)
    response = httpx.get(short)
    assert response.status_code == 200
    assert response.content == PDF
    assert response.headers["content-disposition"] == "attachment; filename=report.pdf"


def test_chunked_upload_is_refused_with_411_and_nothing_stored(serve, tmp_path) -> None:
    server = serve({"AUTH_TOKENS": "test-token"})

    def chunks():
        yield b'--boundary\r\nContent-Disposition: form-data; name="document"; '
        yield b'filename="document"\r\n\r\n'
        for _ in range(20):  # 20 MiB, far over the limit
            yield b"a" * (1024 * 1024)
        yield b"\r\n--boundary--\r\n"

    response = httpx.post(
        f"{server.url}/services/{SERVICE_ID}/documents",
        content=chunks(),
        headers={**AUTH, "Content-Type": "multipart/form-data; boundary=boundary"},
    )
    assert response.status_code == 411
    assert response.json() == {"error": "Content-Length header is required"}
    assert not list((tmp_path / "docs").rglob("*.data"))


def test_head_gives_the_length_and_no_body(serve) -> None:
    server = serve({"AUTH_TOKENS": "test-token"})
    body = upload_to(server.url, PDF)
    direct = body["direct_file_url"].replace("http://", "").split("/", 1)[1]
    response = httpx.head(f"{server.url}/{direct}")
    assert response.status_code == 200
    assert response.headers["content-length"] == str(len(PDF))
    assert response.content == b""


@pytest.mark.parametrize("store", ["local", "s3"])
def test_keys_and_tokens_never_reach_the_logs(serve, ssec_env, store: str) -> None:
    # on stores that refuse a wrong key as AWS does: local, and S3 as ministack serves it
    # (moto does not check SSE-C keys, and would serve the document)
    env = {**ssec_env(store), "AUTH_TOKENS": "test-token", "NOTIFY_ENVIRONMENT": "development"}
    server = serve(env)
    body = upload_to(server.url, PDF, filename="a.pdf", sending_method="attach")
    key = body["url"].split("key=")[1].split("&")[0]
    short = body["url"].replace("http://localhost:7000", server.url)
    assert httpx.get(short).status_code == 200
    wrong = short.replace(key, "A" * 43)
    assert wrong != short
    assert httpx.get(wrong).status_code == 404  # the public link's one answer to any failure
    httpx.delete(
        f"{server.url}/services/{SERVICE_ID}/documents/{body['id']}?key={key}&sending_method=attach",
        headers=AUTH,
    )
    httpx.post(
        f"{server.url}/services/{SERVICE_ID}/documents",
        headers={"Authorization": "Bearer wrong-token-value"},
        files={"document": ("document", PDF)},
    )
    output = server.stop()
    assert "/d/" in output and "DELETE" in output  # the access log is there...
    for secret in (key, "test-token", "wrong-token-value"):
        assert secret not in output  # ...without the query strings or tokens


def test_bad_config_stops_start_up_with_the_variable_named(tmp_path) -> None:
    result = subprocess.run(
        production_command(free_port()),
        cwd=ROOT,
        env={**os.environ, "DOCUMENT_STORE": "floppy"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0
    assert "DOCUMENT_STORE" in result.stdout + result.stderr


def test_the_asgi_module_is_importable_with_no_settings(tmp_path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NOTIFY_", "AUTH_", "AWS_"))}
    code = "from dd_api.asgi import app; print(type(app).__name__)"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert result.stdout.splitlines()[-1] == "Quart", result.stderr


def test_sigterm_lets_the_running_scan_write_its_verdict(serve, scanfiles, tmp_path) -> None:
    scanfiles.delay = 1.5  # under BACKGROUND_TASK_SHUTDOWN_TIMEOUT
    server = serve({"AUTH_TOKENS": "test-token", "BACKGROUND_TASK_SHUTDOWN_TIMEOUT": "5"})
    body = upload_to(server.url, PDF)
    server.process.terminate()  # SIGTERM right after the 201, scan still running
    assert server.process.wait(20) == 0
    (meta,) = (tmp_path / "docs").rglob(f"{body['id']}.json")
    assert json.loads(meta.read_text())["tags"]["av-status"] == "clean"
