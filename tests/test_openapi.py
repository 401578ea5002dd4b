"""``GET /openapi.json`` and the contract it states.

- The description is a valid OpenAPI 3.1 document and the route serves the file as is.
- Every route of the app (and each of its methods, HEAD and OPTIONS aside) is described, and
  nothing else is; the bearer scheme is declared exactly where ``require_bearer`` guards.
- Every documented (path, method, status) is produced by driving the app, and each answer
  matches its documented body schema and headers.

Adding a route: describe it in ``src/dd_api/openapi.json``, then drive each of its statuses in
``test_every_documented_response_is_produced`` (or in the 503 test when only an unavailable
store can produce it). The coverage check says what is missing.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import tomllib
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate as validate_openapi
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from dd_api.app import create_app
from dd_api.store import Location
from tests.helpers import AUTH, AWS_ENV, SERVICE_ID, document, post_form, running
from tests.support.scanfiles import EICAR

SPEC: dict[str, Any] = json.loads(resources.files("dd_api").joinpath("openapi.json").read_text())
SPEC_URI = "urn:dd-api:openapi.json"
METHODS = ("get", "put", "post", "delete", "patch", "head", "options", "trace")
IGNORED = {"HEAD", "OPTIONS"}  # added by Quart to every GET / every route
ORIGINAL_UPLOAD_KEYS = {
    "id",
    "direct_file_url",
    "url",
    "filename",
    "sending_method",
    "mime_type",
    "file_size",
    "file_extension",
}

UPLOAD = "/services/{service_id}/documents"
DOC = "/services/{service_id}/documents/{document_id}"
VERDICT = "/services/{service_id}/documents/{document_id}/scan-verdict"
SHORT = "/d/{service_id}/{document_id}"
LIMIT = 64 * 1024  # MAX_CONTENT_LENGTH of the apps driven here
PDF = b"%PDF-1.4 contract test"
WRONG_TOKEN = {"Authorization": "Bearer not-a-known-token"}
ANY_KEY = "A" * 43  # well-formed: 32 bytes in unpadded URL-safe base64
SHORT_ZERO = "AAAAAAAAAAAAAAAAAAAAAA"


def documented() -> set[tuple[str, str, int]]:
    return {
        (path, method, int(status))
        for path, item in SPEC["paths"].items()
        for method, operation in item.items()
        if method in METHODS
        for status in operation["responses"]
    }


def rule_template(rule: str) -> str:
    """``/d/<base64_uuid:service_id>/<x>`` -> ``/d/{service_id}/{x}``."""
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule)


def resolve(node: dict[str, Any], pointer: str) -> tuple[dict[str, Any], str]:
    """Follow a local ``$ref``; returns the node and its JSON pointer in the spec."""
    while "$ref" in node:
        pointer = node["$ref"].removeprefix("#")
        node = SPEC
        for part in pointer.strip("/").split("/"):
            node = node[part.replace("~1", "/").replace("~0", "~")]
    return node, pointer


def escape(part: str) -> str:
    return part.replace("~", "~0").replace("/", "~1")


REGISTRY = Registry().with_resource(
    SPEC_URI, Resource.from_contents(SPEC, default_specification=DRAFT202012)
)


def schema_at(pointer: str) -> Draft202012Validator:
    return Draft202012Validator(
        {"$ref": f"{SPEC_URI}#{pointer}"},
        registry=REGISTRY,
        format_checker=Draft202012Validator.FORMAT_CHECKER,
    )


def conformance_errors(path: str, method: str, response: Any, body: bytes) -> list[str]:
    """What in ``response`` disagrees with the description of ``path``/``method``."""
    status = response.status_code
    operation = SPEC["paths"][path][method]
    entry = operation["responses"].get(str(status))
    if entry is None:
        return [f"{status} is not documented"]
    pointer = f"/paths/{escape(path)}/{method}/responses/{status}"
    described, pointer = resolve(entry, pointer)
    errors = []
    for name, header in described.get("headers", {}).items():
        header, header_pointer = resolve(header, f"{pointer}/headers/{escape(name)}")
        value = response.headers.get(name)
        if value is None:
            if header.get("required"):
                errors.append(f"header {name} missing")
            continue
        errors += [
            f"header {name}: {error.message}"
            for error in schema_at(f"{header_pointer}/schema").iter_errors(value)
        ]
    content = described.get("content", {})
    media_type = response.headers.get("Content-Type", "").split(";")[0].strip()
    if not content:
        # (the test client keeps a HEAD answer's body; the server never sends it)
        if body and method != "head":
            errors.append(f"undocumented body {body[:80]!r}")
        return errors
    if media_type not in content and "*/*" not in content:
        return [*errors, f"Content-Type {media_type!r} is not one of {sorted(content)}"]
    if media_type == "application/json":
        instance: Any = json.loads(body)
    elif media_type.startswith("text/"):
        instance = body.decode()
    else:
        return errors  # a document: any bytes
    schema_pointer = f"{pointer}/content/{escape(media_type)}/schema"
    errors += [
        f"body {instance!r}: {error.message}"
        for error in schema_at(schema_pointer).iter_errors(instance)
    ]
    return errors


class Coverage:
    """Drives the app and records which documented (path, method, status) were produced."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.seen: set[tuple[str, str, int]] = set()
        self.errors: list[str] = []

    async def expect(
        self, status: int, method: str, template: str, response: Any
    ) -> dict[str, Any] | None:
        body = await response.get_data()
        label = f"{method.upper()} {template} -> {response.status_code} (wanted {status})"
        if response.status_code != status:
            self.errors.append(f"{label}: {body[:300]!r}")
            return None
        self.errors += [
            f"{label}: {error}" for error in conformance_errors(template, method, response, body)
        ]
        self.seen.add((template, method, status))
        is_json = response.headers.get("Content-Type", "").startswith("application/json")
        return json.loads(body) if is_json and body else None

    async def call(
        self, status: int, method: str, template: str, path: str, **kwargs: Any
    ) -> dict[str, Any] | None:
        response = await getattr(self.client, method)(path, **kwargs)
        return await self.expect(status, method, template, response)

    async def upload(
        self, status: int, content: bytes, *, path: str | None = None, **kwargs: Any
    ) -> dict[str, Any] | None:
        response = await post_form(
            self.client,
            path or f"/services/{SERVICE_ID}/documents",
            files=document(content),
            form=kwargs.pop("form", None),
            headers=kwargs.pop("headers", AUTH),
        )
        return await self.expect(status, "post", UPLOAD, response)

    def check(self, wanted: set[tuple[str, str, int]]) -> None:
        missing = sorted(wanted - self.seen)
        problems = self.errors + [f"never produced: {m.upper()} {p} -> {s}" for p, m, s in missing]
        assert not problems, "\n".join(problems)


def query(url: str) -> dict[str, str]:
    return {name: values[0] for name, values in parse_qs(urlsplit(url).query).items()}


def local_path(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}" if parts.query else parts.path


# -- the description itself ------------------------------------------------------------------


def test_the_description_is_valid_openapi_3_1() -> None:
    assert SPEC["openapi"].startswith("3.1.")
    validate_openapi(SPEC)


def test_every_route_and_method_is_described_and_nothing_else(tmp_path) -> None:
    app = create_app({"NOTIFY_ENVIRONMENT": "test", "LOCAL_STORE_PATH": str(tmp_path)})
    routes: dict[str, set[str]] = {}
    for rule in app.url_map.iter_rules():
        routes.setdefault(rule_template(rule.rule), set()).update(
            method.lower() for method in rule.methods or ()
        )
    described = {
        path: {method for method in item if method in METHODS}
        for path, item in SPEC["paths"].items()
    }
    ignored = {method.lower() for method in IGNORED}
    assert {path: methods - ignored for path, methods in described.items()} == {
        path: methods - ignored for path, methods in routes.items()
    }
    for path, methods in described.items():  # a described HEAD must exist too
        assert methods <= routes[path], path


def test_bearer_auth_is_described_exactly_where_it_is_enforced(tmp_path) -> None:
    app = create_app({"NOTIFY_ENVIRONMENT": "test", "LOCAL_STORE_PATH": str(tmp_path)})
    scheme = SPEC["components"]["securitySchemes"]["bearerAuth"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    assert "security" not in SPEC  # no global requirement: downloads are public
    for rule in app.url_map.iter_rules():
        view = app.view_functions[rule.endpoint]
        guarded = view.__code__.co_qualname == "require_bearer.<locals>.wrapper"
        for method in (rule.methods or set()) - IGNORED:
            operation = SPEC["paths"][rule_template(rule.rule)][method.lower()]
            declared = operation.get("security") == [{"bearerAuth": []}]
            assert declared == guarded, f"{method} {rule.rule}"
            if guarded:
                assert {"401", "403"} <= set(operation["responses"]), f"{method} {rule.rule}"


def test_the_upload_answer_lists_exactly_the_original_keys() -> None:
    body = SPEC["components"]["schemas"]["UploadResponse"]
    assert set(body["properties"]) == set(body["required"]) == {"status", "document"}
    assert body["additionalProperties"] is False
    created = SPEC["paths"][UPLOAD]["post"]["responses"]["201"]["content"]["application/json"]
    assert created["schema"] == {"$ref": "#/components/schemas/UploadResponse"}
    uploaded = SPEC["components"]["schemas"]["UploadedDocument"]
    assert set(uploaded["properties"]) == set(uploaded["required"]) == ORIGINAL_UPLOAD_KEYS
    assert uploaded["additionalProperties"] is False


def test_the_description_is_package_data() -> None:
    pyproject = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())
    package_data = pyproject["tool"]["setuptools"].get("package-data", {})
    assert "openapi.json" in package_data.get("dd_api", [])


async def test_the_route_serves_the_file(tmp_path) -> None:
    app = create_app({"NOTIFY_ENVIRONMENT": "test", "LOCAL_STORE_PATH": str(tmp_path)})
    response = await app.test_client().get("/openapi.json")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    assert json.loads(await response.get_data()) == SPEC


def test_every_error_answer_is_described_as_json_with_an_error_message() -> None:
    for path, method, status in documented():
        if status < 400 or method == "head":
            continue
        entry, _ = resolve(SPEC["paths"][path][method]["responses"][str(status)], "")
        assert list(entry.get("content", {})) == ["application/json"], (path, method, status)
        schema = entry["content"]["application/json"]["schema"]
        refs = json.dumps(schema)
        shapes = ("Error", "ScanVerdict", "HealthReport")
        assert any(f"#/components/schemas/{shape}" in refs for shape in shapes), refs


# -- every documented answer, produced -------------------------------------------------------


async def wait_for_verdict(cov: Coverage, document_id: str, *, until: int) -> None:
    """Poll scan-verdict (not recorded) until the background scan has written a verdict."""
    path = f"/services/{SERVICE_ID}/documents/{document_id}/scan-verdict"
    for _ in range(200):
        response = await cov.client.post(path, headers=AUTH)
        if response.status_code == until:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"scan of {document_id} never answered {until}")


async def test_every_documented_response_is_produced(base_env, store_env, scanfiles) -> None:
    """Each documented (path, method, status) but the 503s, on the local store and on S3."""
    env = {**base_env, **store_env, "MAX_CONTENT_LENGTH": str(LIMIT)}
    app = create_app(env)
    async with running(app) as client:
        cov = Coverage(client)
        store = app.extensions["dd_api"].store
        service = SERVICE_ID
        missing = uuid.uuid4()

        await cov.call(200, "get", "/_status", "/_status")
        await cov.call(200, "get", "/_status", "/_status?deep=1")
        await cov.call(200, "get", "/openapi.json", "/openapi.json")
        await cov.call(200, "get", "/metrics", "/metrics")

        # upload
        created = await cov.upload(201, PDF, form={"filename": "Report.v2.PDF"})
        assert created is not None
        doc = created["document"]
        key = query(doc["url"])["key"]
        await cov.upload(201, PDF, form={"sending_method": "template_attach"})
        await cov.upload(400, b"\x00\x01\x02\x03binary")  # unsupported type
        response = await post_form(client, f"/services/{service}/documents", headers=AUTH)
        await cov.expect(400, "post", UPLOAD, response)  # no document part
        await cov.upload(401, PDF, headers={})
        await cov.upload(403, PDF, headers=WRONG_TOKEN)
        await cov.upload(404, PDF, path="/services/not-a-uuid/documents")
        await cov.call(
            411,
            "post",
            UPLOAD,
            f"/services/{service}/documents",
            data=b"--b\r\n",
            headers={**AUTH, "Content-Type": "multipart/form-data; boundary=b"},
        )
        await cov.upload(413, b"%PDF-1.4 " + b"x" * LIMIT)

        # the scan's verdict
        await wait_for_verdict(cov, doc["id"], until=200)
        verdict = f"/services/{service}/documents/{doc['id']}/scan-verdict"
        await cov.call(200, "post", VERDICT, verdict, headers=AUTH)
        await cov.call(401, "post", VERDICT, verdict)
        await cov.call(403, "post", VERDICT, verdict, headers=WRONG_TOKEN)
        await cov.call(
            404,
            "post",
            VERDICT,
            f"/services/{service}/documents/{missing}/scan-verdict",
            headers=AUTH,
        )
        await cov.call(
            413,
            "post",
            VERDICT,
            verdict,
            data=b"sending_method=" + b"x" * LIMIT,
            headers={
                **AUTH,
                "Content-Type": "application/x-www-form-urlencoded",
                "Content-Length": str(LIMIT + 15),
            },
        )
        chunked = {**AUTH, "Transfer-Encoding": "chunked"}  # the test client sends no length
        await cov.call(411, "post", VERDICT, verdict, data=b"sending_method=link", headers=chunked)
        location = Location(uuid.UUID(service), uuid.UUID(doc["id"]), None)
        await store.put_tags(location, {"av-status": "UNSUPPORTED"})
        await cov.call(422, "post", VERDICT, verdict, headers=AUTH)
        await store.put_tags(location, {"av-status": "in_progress"})
        await cov.call(428, "post", VERDICT, verdict, headers=AUTH)

        eicar = await cov.upload(201, EICAR, form={"filename": "eicar.txt"})
        assert eicar is not None
        bad = eicar["document"]
        await wait_for_verdict(cov, bad["id"], until=423)
        await cov.call(
            423,
            "post",
            VERDICT,
            f"/services/{service}/documents/{bad['id']}/scan-verdict",
            headers=AUTH,
        )

        # downloads
        direct = local_path(doc["direct_file_url"]) + "&filename=Report.v2.PDF"
        for method in ("get", "head"):
            await cov.call(200, method, DOC, direct)
            await cov.call(400, method, DOC, f"/services/{service}/documents/{doc['id']}")
            await cov.call(404, method, DOC, f"/services/{service}/documents/{missing}?key={key}")
            await cov.call(423, method, DOC, local_path(bad["direct_file_url"]))
            await cov.call(200, method, SHORT, local_path(doc["url"]))
            await cov.call(404, method, SHORT, f"/d/{SHORT_ZERO}/{SHORT_ZERO}?key={ANY_KEY}")

        # delete
        target = f"/services/{service}/documents/{doc['id']}"
        await cov.call(400, "delete", DOC, target, headers=AUTH)
        await cov.call(401, "delete", DOC, f"{target}?key={key}")
        await cov.call(403, "delete", DOC, f"{target}?key={key}", headers=WRONG_TOKEN)
        await cov.call(
            404, "delete", DOC, f"/services/{service}/documents/{missing}?key={key}", headers=AUTH
        )
        await cov.call(
            413,
            "delete",
            DOC,
            target,
            data=b'{"key": "' + b"A" * LIMIT + b'"}',
            headers={**AUTH, "Content-Type": "application/json", "Content-Length": str(LIMIT + 11)},
        )
        await cov.call(411, "delete", DOC, target, data=b'{"key": "k"}', headers=chunked)
        await cov.call(200, "delete", DOC, target, json={"key": key}, headers=AUTH)
        await cov.call(404, "get", DOC, local_path(doc["direct_file_url"]))

    # a document older than SCAN_TIMEOUT_SECONDS (1 s here) whose scan never finished
    stale_app = create_app({**env, "SCAN_TIMEOUT_SECONDS": "1"})
    async with running(stale_app) as client:
        cov.client = client
        created = await cov.upload(201, PDF)
        assert created is not None
        stale = created["document"]["id"]
        await wait_for_verdict(cov, stale, until=200)
        location = Location(uuid.UUID(SERVICE_ID), uuid.UUID(stale), None)
        await stale_app.extensions["dd_api"].store.put_tags(location, {"av-status": "in_progress"})
        await asyncio.sleep(1.2)
        path = f"/services/{SERVICE_ID}/documents/{stale}/scan-verdict"
        await cov.call(408, "post", VERDICT, path, headers=AUTH)

    cov.check({entry for entry in documented() if entry[2] != 503})


# -- 503: a store that answers, but not as S3 should ----------------------------------------


class FakeS3(ThreadingHTTPServer):
    """Answers every request with one S3 error (405: not retried by the SDK)."""

    status = 405
    code = "MethodNotAllowed"


class _FakeS3Handler(BaseHTTPRequestHandler):
    server: FakeS3
    protocol_version = "HTTP/1.1"  # answers "Expect: 100-continue", as S3 does

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        body = (
            f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{self.server.code}</Code>'
            f"<Message>refused</Message></Error>"
        ).encode()
        self.send_response(self.server.status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(0 if self.command == "HEAD" else len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _answer

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def fake_s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeS3]:
    server = FakeS3(("127.0.0.1", 0), _FakeS3Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    for name, value in AWS_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{server.server_port}")
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


async def test_every_documented_503_is_produced(base_env, fake_s3) -> None:
    env = {**base_env, "DOCUMENT_STORE": "s3", "DOCUMENTS_BUCKET": "refusing-bucket"}
    async with running(create_app(env)) as client:
        cov = Coverage(client)
        ids = f"{SERVICE_ID}/documents/{uuid.uuid4()}"
        await cov.upload(503, PDF)
        await cov.call(503, "get", "/_status", "/_status?deep=1")
        for method in ("get", "head"):
            await cov.call(503, method, DOC, f"/services/{ids}?key={ANY_KEY}")
            await cov.call(503, method, SHORT, f"/d/{SHORT_ZERO}/{SHORT_ZERO}?key={ANY_KEY}")
        await cov.call(503, "delete", DOC, f"/services/{ids}?key={ANY_KEY}", headers=AUTH)
        await cov.call(503, "post", VERDICT, f"/services/{ids}/scan-verdict", headers=AUTH)
    cov.check({entry for entry in documented() if entry[2] == 503})


async def test_a_store_refusing_the_write_is_503_not_a_key_error(base_env, fake_s3) -> None:
    # What a bucket that blocks SSE-C, or a missing s3:PutObject permission, answers.
    fake_s3.status, fake_s3.code = 403, "AccessDenied"
    env = {**base_env, "DOCUMENT_STORE": "s3", "DOCUMENTS_BUCKET": "refusing-bucket"}
    async with running(create_app(env)) as client:
        cov = Coverage(client)
        await cov.upload(503, PDF)
        await cov.call(503, "get", "/_status", "/_status?deep=1")
    cov.check(set())
