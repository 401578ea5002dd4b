"""Downloads through /services/... and the short /d/... link."""

from __future__ import annotations

from urllib.parse import parse_qs, quote, urlencode, urlsplit

import pytest

from dd_api.app import create_app
from tests.helpers import AWS_ENV, free_port, running, upload

PDF = b"%PDF-1.4 " + bytes(range(256)) * 2400  # ~600 KiB: several 256 KiB chunks


def path_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}" if parts.query else parts.path


def key_of(url: str) -> str:
    return parse_qs(urlsplit(url).query)["key"][0]


async def test_direct_link_serves_the_document(client) -> None:
    body = await upload(client, PDF, sending_method="attach")
    response = await client.get(path_of(body["direct_file_url"]))
    assert response.status_code == 200
    assert await response.get_data() == PDF
    assert response.headers["Content-Type"] == "application/pdf"
    assert response.headers["Content-Length"] == str(len(PDF))
    assert response.headers["Cache-Control"] == "no-cache"
    assert response.headers["X-Robots-Tag"] == "noindex, nofollow"
    assert "Content-Disposition" not in response.headers


@pytest.mark.parametrize("sending_method", [None, "link", "attach", "template_attach", "other"])
async def test_short_link_works_for_every_sending_method(client, sending_method) -> None:
    form = {"sending_method": sending_method} if sending_method else {}
    body = await upload(client, PDF, **form)
    response = await client.get(path_of(body["url"]))
    assert response.status_code == 200
    assert await response.get_data() == PDF


async def test_template_attach_needs_no_key(client) -> None:
    body = await upload(client, PDF, sending_method="template_attach")
    sid, did = body["direct_file_url"].split("/services/")[1].split("/documents/")
    did = did.split("?")[0]
    response = await client.get(f"/services/{sid}/documents/{did}?sending_method=template_attach")
    assert response.status_code == 200
    assert await response.get_data() == PDF


@pytest.mark.parametrize(
    ("filename", "disposition"),
    [
        ("custom_filename.pdf", "attachment; filename=custom_filename.pdf"),
        ("my file.pdf", 'attachment; filename="my file.pdf"'),
        ("ça va.pdf", "attachment; filename=\"ca va.pdf\"; filename*=UTF-8''%C3%A7a%20va.pdf"),
        ('a"b\\c.pdf', 'attachment; filename="a\\"b\\\\c.pdf"'),
        ("a\r\nSet-Cookie: x=1.pdf", 'attachment; filename="a__Set-Cookie: x=1.pdf"'),
    ],
)
async def test_filename_gives_a_safe_content_disposition(client, filename, disposition) -> None:
    body = await upload(client, PDF)
    query = urlencode({"filename": filename}, quote_via=quote)
    response = await client.get(f"{path_of(body['direct_file_url'])}&{query}")
    assert response.status_code == 200
    assert response.headers["Content-Disposition"] == disposition
    assert "Set-Cookie" not in response.headers


async def test_csv_is_served_as_text_csv(client) -> None:
    body = await upload(client, b"foo,bar", filename="file.csv")
    response = await client.get(path_of(body["direct_file_url"]))
    assert response.headers["Content-Type"] == "text/csv; charset=utf-8"


async def test_missing_key_is_400(client) -> None:
    body = await upload(client, PDF)
    url = body["direct_file_url"].split("?")[0]
    response = await client.get(path_of(url))
    assert response.status_code == 400
    assert await response.get_json() == {"error": "Missing decryption key"}


@pytest.mark.parametrize("key", ["🔑", "AAAA", "not base64 at all!", "A" * 45])
async def test_malformed_key_is_400(client, key) -> None:
    body = await upload(client, PDF)
    url = body["direct_file_url"].split("?")[0]
    response = await client.get(f"{path_of(url)}?{urlencode({'key': key})}")
    assert response.status_code == 400
    assert await response.get_json() == {"error": "Invalid decryption key"}


async def test_short_link_failures_are_all_404_json(client) -> None:
    body = await upload(client, PDF)
    short = path_of(body["url"])
    for path in (short.split("?")[0], short.replace(key_of(body["url"]), "AAAA"), "/d/xx/yy"):
        response = await client.get(path)
        assert response.status_code == 404
        assert await response.get_json() == {"error": "Not Found"}


async def test_unknown_document_is_404(client) -> None:
    body = await upload(client, PDF)
    url = body["direct_file_url"].replace(body["id"], "22222222-2222-2222-2222-222222222222")
    response = await client.get(path_of(url))
    assert response.status_code == 404
    assert await response.get_json() == {"error": "Document not found"}


@pytest.mark.parametrize("kind", ["local", "s3"])
async def test_a_wrong_key_is_refused(base_env, ssec_env, kind) -> None:
    # local and ministack enforce the key as AWS does (moto would serve the plaintext).
    app = create_app({**base_env, **ssec_env(kind)})
    async with running(app) as client:
        body = await upload(client, PDF, sending_method="attach", filename="a.pdf")
        wrong = "B" * 43
        direct = path_of(body["direct_file_url"]).replace(key_of(body["direct_file_url"]), wrong)
        response = await client.get(direct)
        assert response.status_code == 400
        assert await response.get_json() == {"error": "Invalid decryption key"}
        short = path_of(body["url"]).replace(key_of(body["url"]), wrong)
        response = await client.get(short)
        assert response.status_code == 404
        # and the right key still opens it
        assert (await client.get(path_of(body["url"]))).status_code == 200


@pytest.mark.parametrize("kind", ["local", "s3"])
async def test_key_is_required_where_the_store_enforces_it(base_env, ssec_env, kind) -> None:
    app = create_app({**base_env, **ssec_env(kind)})
    async with running(app) as client:
        body = await upload(client, PDF, sending_method="link")
        no_key = path_of(body["direct_file_url"].split("?")[0])
        assert (await client.get(no_key)).status_code == 400
        assert (await client.get(path_of(body["url"]).split("?")[0])).status_code == 404


async def test_unreachable_store_is_a_clear_503(base_env, monkeypatch) -> None:
    for name, value in AWS_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{free_port()}")  # nobody there
    app = create_app({**base_env, "DOCUMENT_STORE": "s3"})
    async with running(app) as client:
        response = await client.get(
            "/services/00000000-0000-0000-0000-000000000000/documents/"
            f"11111111-1111-1111-1111-111111111111?key={'A' * 43}"
        )
        assert response.status_code == 503
        assert await response.get_json() == {
            "error": "Document storage is unavailable, try again later"
        }
