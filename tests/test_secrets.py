"""No secret leaves the service where it does not belong.

Every route is driven, on its success and failure paths, background scans included (clean,
malicious, scan-files failing, scan-files refusing its key), with ``NOTIFY_LOG_LEVEL=DEBUG``
and the proxy-header check on. Then none of these may appear in any log line (the app's own
records, and everything the process writes, Hypercorn's access log included), in any response
body or header, in any request to scan-files, or in the local store's files:

- each document key, in its URL-safe base64 form, standard base64 and raw hex;
- the bearer token, and a wrong token presented;
- the scan-files key (``ANTIVIRUS_API_KEY``);
- the proxy secrets (``ROUTE_SECRET_KEY_1``/``_2``), and a wrong ``X-Custom-Forwarder``;
- ``SECRET_KEY``.

The one place a document key belongs is the upload's 201 body (``url``, ``direct_file_url``).

It runs twice: against the production command as a process (JSON log lines, as in production),
and against the app under Hypercorn in this process, where the log records themselves are
checked before any formatting or redaction (defence in depth must not be the only defence).
"""

from __future__ import annotations

import base64
import logging
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from hypercorn.config import Config as HypercornConfig

from dd_api.app import create_app
from tests.helpers import ROOT, SERVICE_ID, hypercorn_in_thread, production_server
from tests.support.scanfiles import EICAR, ScanFilesStandIn

LIMIT = 256 * 1024
PDF = b"%PDF-1.4 secrets test "
OTHER_SERVICE = "11111111-1111-1111-1111-111111111111"


@dataclass
class Secrets:
    token: str = field(default_factory=lambda: f"tok-{uuid.uuid4().hex}")
    wrong_token: str = field(default_factory=lambda: f"wrongtok-{uuid.uuid4().hex}")
    scan_key: str = field(default_factory=lambda: f"avkey-{uuid.uuid4().hex}")
    route_1: str = field(default_factory=lambda: f"route1-{uuid.uuid4().hex}")
    route_2: str = field(default_factory=lambda: f"route2-{uuid.uuid4().hex}")
    wrong_route: str = field(default_factory=lambda: f"wrongroute-{uuid.uuid4().hex}")
    secret_key: str = field(default_factory=lambda: f"secret-{uuid.uuid4().hex}")
    wrong_key: str = field(default_factory=lambda: base64_key(os.urandom(32)))
    queue_key: str = field(default_factory=lambda: base64_key(os.urandom(32)))
    keys: list[str] = field(default_factory=list)  # every document key handed out

    def env(self) -> dict[str, str]:
        return {
            "NOTIFY_ENVIRONMENT": "test",
            "NOTIFY_LOG_LEVEL": "DEBUG",
            "AUTH_TOKENS": self.token,
            "ANTIVIRUS_API_KEY": self.scan_key,
            "CHECK_PROXY_HEADER": "true",
            "ROUTE_SECRET_KEY_1": self.route_1,
            "ROUTE_SECRET_KEY_2": self.route_2,
            "SECRET_KEY": self.secret_key,
            "MAX_CONTENT_LENGTH": str(LIMIT),
            "SCAN_DEADLINE_SECONDS": "1",
            "BACKGROUND_TASK_SHUTDOWN_TIMEOUT": "3",
            "SCAN_QUEUE_KEY": self.queue_key,
            # a failing scan-files gives scan_failed within seconds, through the queue
            "SCAN_QUEUE_DELAY_SECONDS": "2",
            "SCAN_RETRY_MAX_SECONDS": "0.5",
            "PENDING_SCAN_MAX_AGE_SECONDS": "1",
        }

    def forbidden(self) -> dict[str, str]:
        """Every secret, by a name to report it by."""
        found = {
            "bearer token": self.token,
            "wrong bearer token": self.wrong_token,
            "ANTIVIRUS_API_KEY": self.scan_key,
            "ROUTE_SECRET_KEY_1": self.route_1,
            "ROUTE_SECRET_KEY_2": self.route_2,
            "wrong X-Custom-Forwarder": self.wrong_route,
            "SECRET_KEY": self.secret_key,
        }
        for form, value in key_forms(self.queue_key).items():
            found[f"SCAN_QUEUE_KEY ({form})"] = value
        for number, key in enumerate([*self.keys, self.wrong_key]):
            for form, value in key_forms(key).items():
                found[f"document key {number} ({form})"] = value
        return found


def base64_key(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def key_forms(key: str) -> dict[str, str]:
    raw = base64.urlsafe_b64decode(key + "==")
    return {
        "base64url": key,
        "base64": base64.b64encode(raw).decode().rstrip("="),
        "hex": raw.hex(),
        "HEX": raw.hex().upper(),
    }


def leaks(text: str, secrets: Secrets) -> list[str]:
    return [name for name, value in secrets.forbidden().items() if value in text]


@dataclass
class Exchange:
    label: str
    response: httpx.Response
    allowed_key: str | None = None  # the key its 201 body may hold in url/direct_file_url


class Driver:
    """Sends every request with the proxy header unless told otherwise; keeps every answer."""

    def __init__(self, url: str, secrets: Secrets, scanfiles: ScanFilesStandIn) -> None:
        self.url, self.secrets, self.scanfiles = url, secrets, scanfiles
        self.exchanges: list[Exchange] = []
        # A connection per request: a refused upload may close its connection (see
        # test_hostile_input.py::test_an_upload_refused_before_its_body_is_read_announces_the_close)
        limits = httpx.Limits(max_keepalive_connections=0)
        self.client = httpx.Client(base_url=url, timeout=15, limits=limits)
        self.auth = {"Authorization": f"Bearer {secrets.token}"}

    def send(
        self, label: str, method: str, path: str, *, forwarder: str | None = "1", **kwargs: Any
    ) -> httpx.Response:
        headers = dict(kwargs.pop("headers", {}))
        if forwarder is not None:
            value = {"1": self.secrets.route_1, "2": self.secrets.route_2}.get(forwarder, forwarder)
            headers["X-Custom-Forwarder"] = value
        response = self.client.request(method, path, headers=headers, **kwargs)
        self.exchanges.append(Exchange(label, response))
        return response

    def expect(self, status: int, label: str, method: str, path: str, **kwargs: Any):
        response = self.send(label, method, path, **kwargs)
        assert response.status_code == status, (label, response.status_code, response.text[:300])
        return response

    def upload(self, label: str, content: bytes, **form: str) -> dict[str, Any]:
        response = self.expect(
            201,
            label,
            "POST",
            f"/services/{SERVICE_ID}/documents",
            files={"document": ("document", content)},
            data=form,
            headers=self.auth,
        )
        document = response.json()["document"]
        query = parse_qs(urlsplit(document["url"]).query)
        if "key" in query:
            key = query["key"][0]
            self.secrets.keys.append(key)
            self.exchanges[-1].allowed_key = key
            document["key"] = key
        document["direct"] = local(document["direct_file_url"])
        document["short"] = local(document["url"])
        return document

    def wait_for_verdict(self, document: dict[str, Any], status: int) -> None:
        path = f"/services/{SERVICE_ID}/documents/{document['id']}/scan-verdict"
        data = {"sending_method": document["sending_method"] or "link"}
        for _ in range(200):
            response = self.send(
                "scan-verdict (polling)", "POST", path, data=data, headers=self.auth
            )
            if response.status_code == status:
                return
            time.sleep(0.05)
        raise AssertionError(f"no {status} verdict for {document['id']}")


def local(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}" if parts.query else parts.path


def drive_every_route(driver: Driver, store: Path | None) -> None:
    secrets, scanfiles, auth = driver.secrets, driver.scanfiles, driver.auth
    bad_auth = {"Authorization": f"Bearer {secrets.wrong_token}"}
    docs = f"/services/{SERVICE_ID}/documents"

    # operations, and the proxy check on them
    driver.expect(200, "status", "GET", "/_status")
    driver.expect(200, "status, second proxy key", "GET", "/_status", forwarder="2")
    driver.expect(200, "openapi", "GET", "/openapi.json")
    # the shallow /_status is for load balancers, which send no proxy header
    driver.expect(403, "metrics, wrong proxy key", "GET", "/metrics", forwarder=secrets.wrong_route)
    driver.expect(403, "metrics, no proxy key", "GET", "/metrics", forwarder=None)
    driver.expect(200, "status, no proxy key", "GET", "/_status", forwarder=None)

    # uploads and their background scans: clean, malicious, failing, key refused, held
    clean = driver.upload("upload, link", PDF + b"clean", filename="report.pdf")
    driver.wait_for_verdict(clean, 200)
    malicious = driver.upload("upload, attach, EICAR", EICAR, sending_method="attach")
    driver.wait_for_verdict(malicious, 423)
    template = driver.upload(
        "upload, template_attach", PDF + b"t", sending_method="template_attach"
    )
    driver.wait_for_verdict(template, 200)
    scanfiles.always_fail(502)
    try:
        failed = driver.upload("upload, scan-files failing", PDF + b"failing")
        driver.wait_for_verdict(failed, 422)
    finally:
        scanfiles.stop_failing()
    scanfiles.api_key = "not-the-key-dd-api-sends"
    try:
        refused = driver.upload("upload, scan-files refusing the key", PDF + b"refused")
        driver.wait_for_verdict(refused, 422)
    finally:
        scanfiles.api_key = secrets.scan_key
    scanfiles.hold()
    try:
        held = driver.upload("upload, scan held", PDF + b"held")
        verdict = f"{docs}/{held['id']}/scan-verdict"
        driver.expect(428, "scan-verdict, in progress", "POST", verdict, headers=auth)
    finally:
        scanfiles.release()

    # refused uploads
    one = {"document": ("document", PDF)}
    driver.expect(401, "upload, no token", "POST", docs, files=one)
    driver.expect(403, "upload, wrong token", "POST", docs, files=one, headers=bad_auth)
    driver.expect(400, "upload, no document", "POST", docs, data={"x": "y"}, headers=auth)
    binary = {"document": ("d", b"\x00\x01\x02")}
    driver.expect(400, "upload, unsupported type", "POST", docs, files=binary, headers=auth)
    chunked = (part for part in (b"--b\r\n", b"x"))
    multipart = {**auth, "Content-Type": "multipart/form-data; boundary=b"}
    driver.expect(411, "upload, chunked", "POST", docs, content=chunked, headers=multipart)
    big = {"document": ("d", PDF + b"x" * LIMIT)}
    driver.expect(413, "upload, too large", "POST", docs, files=big, headers=auth)
    driver.expect(
        403,
        "upload, wrong proxy key",
        "POST",
        docs,
        files=one,
        headers=auth,
        forwarder=secrets.wrong_route,
    )

    # downloads
    key, wrong = clean["key"], secrets.wrong_key
    named = f"{clean['direct']}&filename=report.pdf"
    driver.expect(200, "download", "GET", named)
    driver.expect(200, "download, HEAD", "HEAD", named)
    driver.expect(200, "short link", "GET", clean["short"])
    driver.expect(200, "template_attach, no key", "GET", template["direct"])
    driver.expect(400, "download, wrong key", "GET", f"{docs}/{clean['id']}?key={wrong}")
    driver.expect(400, "download, no key", "GET", f"{docs}/{clean['id']}")
    driver.expect(404, "download, no such document", "GET", f"{docs}/{uuid.uuid4()}?key={key}")
    driver.expect(423, "download, malicious", "GET", malicious["direct"])
    driver.expect(404, "short link, malicious", "GET", malicious["short"])
    driver.expect(404, "short link, wrong key", "GET", clean["short"].replace(key, wrong))
    driver.expect(200, "download, failed scan", "GET", failed["direct"])
    driver.expect(403, "download, no proxy key", "GET", clean["direct"], forwarder=None)

    # scan verdicts
    verdict = f"{docs}/{clean['id']}/scan-verdict"
    driver.expect(200, "scan-verdict", "POST", verdict, headers=auth)
    driver.expect(401, "scan-verdict, no token", "POST", verdict)
    driver.expect(403, "scan-verdict, wrong token", "POST", verdict, headers=bad_auth)
    missing = f"{docs}/{uuid.uuid4()}/scan-verdict"
    driver.expect(404, "scan-verdict, no such document", "POST", missing, headers=auth)

    # deletes: keys in the query and in a JSON body, refused and accepted
    target = f"{docs}/{clean['id']}"
    driver.expect(401, "delete, no token", "DELETE", f"{target}?key={key}")
    driver.expect(403, "delete, wrong token", "DELETE", f"{target}?key={key}", headers=bad_auth)
    driver.expect(400, "delete, wrong key", "DELETE", f"{target}?key={wrong}", headers=auth)
    driver.expect(
        400, "delete, wrong key (JSON)", "DELETE", target, json={"key": wrong}, headers=auth
    )
    driver.expect(400, "delete, no key", "DELETE", target, headers=auth)
    driver.expect(200, "delete", "DELETE", f"{target}?key={key}", headers=auth)
    driver.expect(404, "delete, gone", "DELETE", f"{target}?key={key}", headers=auth)
    driver.expect(
        200,
        "delete (JSON)",
        "DELETE",
        f"{docs}/{malicious['id']}",
        json={"key": malicious["key"], "sending_method": "attach"},
        headers=auth,
    )
    driver.expect(
        200,
        "delete, template_attach",
        "DELETE",
        f"{docs}/{template['id']}?sending_method=template_attach",
        headers=auth,
    )

    # operations, once there is something to count
    driver.expect(200, "deep health check", "GET", "/_status?deep=1")
    metrics = driver.expect(200, "metrics", "GET", "/metrics")
    assert "dd_requests_total" in metrics.text

    if store is not None:  # the local store failing: 503, logged
        (store / "api_link").mkdir(parents=True, exist_ok=True)
        (store / "api_link" / OTHER_SERVICE).write_text("not a directory")
        other = f"/services/{OTHER_SERVICE}/documents"
        driver.expect(503, "upload, store failing", "POST", other, files=one, headers=auth)


def check_exchanges(driver: Driver) -> list[str]:
    problems = []
    for exchange in driver.exchanges:
        response = exchange.response
        headers = "\n".join(f"{name}: {value}" for name, value in response.headers.multi_items())
        body = response.text
        if exchange.allowed_key is not None:
            document = response.json()["document"]
            for name in ("url", "direct_file_url"):
                assert exchange.allowed_key in document[name], "the key belongs in the links"
                body = body.replace(document[name], "")
        problems += [
            f"{exchange.label}: {leak} in headers" for leak in leaks(headers, driver.secrets)
        ]
        problems += [f"{exchange.label}: {leak} in body" for leak in leaks(body, driver.secrets)]
    return problems


def check_scan_requests(driver: Driver) -> list[str]:
    """scan-files gets its own key (that is where it belongs), and nothing else secret."""
    problems = []
    for request in driver.scanfiles.requests:
        sent = "\n".join([str(request.headers), str(request.query), str(request.filename)]).replace(
            driver.secrets.scan_key, ""
        )
        problems += [f"request to scan-files: {leak}" for leak in leaks(sent, driver.secrets)]
    return problems


def check_store(store: Path, secrets: Secrets) -> list[str]:
    """The local store never writes a document key, in any form, to disk."""
    problems = []
    raws = [base64.urlsafe_b64decode(key + "==") for key in secrets.keys]
    for path in store.rglob("*"):
        if not path.is_file():
            continue
        data = path.read_bytes()
        for number, raw in enumerate(raws):
            forms = [raw, *(form.encode() for form in key_forms(secrets.keys[number]).values())]
            if any(form in data for form in forms):
                problems.append(f"document key {number} in {path.relative_to(store)}")
    return problems


def assert_no_leaks(driver: Driver, log: str, store: Path | None) -> None:
    assert len(driver.secrets.keys) >= 5
    problems = check_exchanges(driver) + check_scan_requests(driver)
    problems += [f"log: {leak}" for leak in leaks(log, driver.secrets)]
    if store is not None:
        problems += check_store(store, driver.secrets)
    assert not problems, "\n".join(problems)


@pytest.fixture(params=["local", "s3"])
def store_env(request: pytest.FixtureRequest, ssec_env) -> dict[str, str]:
    """The local store, and S3 as ministack serves it: a store that really refuses a wrong
    key (moto does not check SSE-C keys)."""
    return ssec_env(request.param)


def local_store(store_env: dict[str, str], store: Path) -> Path | None:
    """``store`` when the server keeps documents there, else None (S3)."""
    return store if store_env["DOCUMENT_STORE"] == "local" else None


# -- the production command --------------------------------------------------------------------


@pytest.mark.parametrize("debug", ["false", "true"], ids=["JSON logs", "readable logs"])
def test_no_secret_leaks_from_the_production_server(
    tmp_path: Path, store_env: dict[str, str], debug: str
) -> None:
    secrets = Secrets()
    store = tmp_path / "docs"
    env = {**secrets.env(), **store_env, "DEBUG": debug}
    with (
        ScanFilesStandIn(api_key=secrets.scan_key) as scanfiles,
        production_server(tmp_path, scanfiles, env, store=store) as server,
    ):
        driver = Driver(server.url, secrets, scanfiles)
        drive_every_route(driver, local_store(store_env, store))
    output = server.output()  # complete: the server has exited (SIGTERM) by now
    assert "'NOTIFY_LOG_LEVEL': 'DEBUG'" in output or '"NOTIFY_LOG_LEVEL": "DEBUG"' in output
    assert '"GET /d/' in output and '"DELETE /services/' in output  # the access log is there
    assert "Scan finished" in output
    assert_no_leaks(driver, output, local_store(store_env, store))


# -- the app in this process: its log records, before formatting -------------------------------


class RecordKeeper(logging.Handler):
    """Keeps every record of every logger, whatever the level its logger lets through."""

    def __init__(self) -> None:
        super().__init__(logging.NOTSET)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def text(self) -> str:
        lines = []
        for record in self.records:
            exc = logging.Formatter().formatException(record.exc_info) if record.exc_info else ""
            lines.append(f"{record.getMessage()} {record.__dict__!r} {exc}")
        return "\n".join(lines)


@pytest.fixture
def records() -> Iterator[RecordKeeper]:
    keeper = RecordKeeper()
    root = logging.getLogger()
    root.addHandler(keeper)
    try:
        yield keeper
    finally:
        root.removeHandler(keeper)


def test_no_secret_leaks_from_the_app_log_records(
    tmp_path: Path,
    store_env: dict[str, str],
    records: RecordKeeper,
    capfd: pytest.CaptureFixture[str],
) -> None:
    secrets = Secrets()
    store = tmp_path / "docs"
    with ScanFilesStandIn(api_key=secrets.scan_key) as scanfiles:
        env = {
            **secrets.env(),
            **store_env,
            "LOCAL_STORE_PATH": str(store),
            "ANTIVIRUS_API_HOST": scanfiles.url,
        }
        app = create_app(env)
        try:
            with hypercorn_in_thread(
                app, HypercornConfig.from_toml(str(ROOT / "hypercorn.toml"))
            ) as url:
                driver = Driver(url, secrets, scanfiles)
                drive_every_route(driver, local_store(store_env, store))
        finally:
            logging.getLogger("dd_api").handlers.clear()
    captured = capfd.readouterr()
    text = records.text()
    assert "Document uploaded" in text and "Scan finished" in text
    assert '"GET /d/' in captured.out  # Hypercorn's access log (its logger does not propagate)
    assert_no_leaks(
        driver,
        "\n".join([text, captured.out, captured.err]),
        local_store(store_env, store),
    )
