"""POST /services/<id>/documents: the body notification-api stores, and every refusal."""

from __future__ import annotations

import uuid
from urllib.parse import parse_qs, urlsplit

import pytest

from dd_api.app import create_app
from dd_api.config import ALLOWED_MIME_TYPES
from tests.helpers import AUTH, SERVICE_ID, document, post_form, running, upload

PDF = b"%PDF-1.4 file contents"
ZERO_KEY_B64 = "A" * 43


@pytest.fixture
def fixed_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    """The anchor suite's vectors: document id all-f, key 32 zero bytes."""
    monkeypatch.setattr("dd_api.views.upload.uuid4", lambda: uuid.UUID(int=2**128 - 1))
    monkeypatch.setattr("dd_api.views.upload.secrets.token_bytes", lambda n: bytes(n))


async def test_attach_upload_answers_the_original_body(client, fixed_ids) -> None:
    response = await post_form(
        client,
        f"/services/{SERVICE_ID}/documents",
        files=document(PDF),
        form={"filename": "custom_filename.pdf", "sending_method": "attach"},
        headers=AUTH,
    )
    assert response.status_code == 201
    assert await response.get_json() == {
        "status": "ok",
        "document": {
            "id": "ffffffff-ffff-ffff-ffff-ffffffffffff",
            "direct_file_url": (
                "http://document-download.test/services/00000000-0000-0000-0000-000000000000"
                f"/documents/ffffffff-ffff-ffff-ffff-ffffffffffff?key={ZERO_KEY_B64}"
                "&sending_method=attach"
            ),
            "url": (
                "http://localhost:7000/d/AAAAAAAAAAAAAAAAAAAAAA/_____________________w"
                f"?key={ZERO_KEY_B64}&filename=custom_filename.pdf&sending_method=attach"
            ),
            "filename": "custom_filename.pdf",
            "sending_method": "attach",
            "mime_type": "application/pdf",
            "file_size": 22,
            "file_extension": "pdf",
        },
    }
    assert response.headers["Content-Type"] == "application/json"


async def test_link_upload_without_filename(client, fixed_ids) -> None:
    body = await upload(client, PDF, sending_method="link")
    assert body["filename"] is None
    assert body["file_extension"] is None
    assert body["sending_method"] == "link"
    assert body["url"] == (
        f"http://localhost:7000/d/AAAAAAAAAAAAAAAAAAAAAA/_____________________w?key={ZERO_KEY_B64}"
    )
    assert body["direct_file_url"].endswith(f"?key={ZERO_KEY_B64}&sending_method=link")


async def test_no_sending_method_drops_it_from_both_links(client, fixed_ids) -> None:
    body = await upload(client, PDF)
    assert body["sending_method"] is None
    assert body["direct_file_url"].endswith(f"/documents/{body['id']}?key={ZERO_KEY_B64}")
    assert "sending_method" not in body["url"]


async def test_template_attach_has_no_key(client) -> None:
    body = await upload(client, PDF, sending_method="template_attach", filename="a.pdf")
    assert body["direct_file_url"].endswith("?key=&sending_method=template_attach")
    assert urlsplit(body["url"]).query == "filename=a.pdf&sending_method=template_attach"


async def test_each_upload_gets_its_own_id_and_key(client) -> None:
    first, second = await upload(client, PDF), await upload(client, PDF)
    assert first["id"] != second["id"]
    keys = [parse_qs(urlsplit(b["direct_file_url"]).query)["key"][0] for b in (first, second)]
    assert keys[0] != keys[1]
    assert all(len(key) == 43 for key in keys)


async def test_filename_is_percent_encoded_in_the_short_link(client) -> None:
    body = await upload(client, PDF, filename="ça va.pdf")
    assert body["url"].endswith("&filename=%C3%A7a%20va.pdf")


@pytest.mark.parametrize(
    ("content", "filename", "mime_type", "size", "extension"),
    [
        (PDF, "file.pdf", "application/pdf", 22, "pdf"),
        (b"Canada", "text.txt", "text/plain", 6, "txt"),
        (b"Canada", "noextension", "text/plain", 6, None),
        (b"foo,bar", "file.csv", "text/csv", 7, "csv"),
        (b"foo,bar", "FILE.CSV", "text/csv", 7, "csv"),
        (b"foo,bar", None, "text/plain", 7, None),
        (b"Canada", "my.report.v2.TXT", "text/plain", 6, "report.v2.txt"),
        (b"Canada", "file.", "text/plain", 6, ""),
    ],
)
async def test_mime_type_and_extension(client, content, filename, mime_type, size, extension):
    form = {"filename": filename} if filename else {}
    body = await upload(client, content, **form)
    assert (body["mime_type"], body["file_size"], body["file_extension"]) == (
        mime_type,
        size,
        extension,
    )


async def test_unsupported_type_is_refused_with_the_original_message(client) -> None:
    response = await post_form(
        client,
        f"/services/{SERVICE_ID}/documents",
        files=document(b"\x00pdf file contents\n"),
        headers=AUTH,
    )
    assert response.status_code == 400
    assert await response.get_json() == {
        "error": "Unsupported document type 'application/octet-stream'. "
        f"Supported types are: {list(ALLOWED_MIME_TYPES)}"
    }
    assert "['application/pdf', 'application/CDFV2'," in (await response.get_json())["error"]


OTHER_SERVICE = "11111111-1111-1111-1111-111111111111"


@pytest.mark.parametrize(
    ("extra", "status"),
    [
        (f"{SERVICE_ID}:application/octet-stream", 201),
        (f"{SERVICE_ID}:application/octet-stream,{OTHER_SERVICE}:image/gif", 201),
        (f"{OTHER_SERVICE}:image/gif, {SERVICE_ID}:application/octet-stream", 201),
        (f"{SERVICE_ID}:application/json", 400),
        (f"{OTHER_SERVICE}:application/octet-stream", 400),
        ("", 400),
    ],
)
async def test_extra_mime_types_per_service(base_env, extra, status) -> None:
    app = create_app({**base_env, "EXTRA_MIME_TYPES": extra})
    async with running(app) as client:
        response = await post_form(
            client,
            f"/services/{SERVICE_ID}/documents",
            files=document(b"\x00pdf file contents\n"),
            headers=AUTH,
        )
    assert response.status_code == status


async def test_extra_mime_types_is_a_list_not_a_substring(base_env) -> None:
    # The original accepted any EXTRA_MIME_TYPES string containing "<sid>:<mime>".
    extra = f"x{SERVICE_ID}:application/octet-stream"
    with pytest.raises(ValueError, match="EXTRA_MIME_TYPES"):
        create_app({**base_env, "EXTRA_MIME_TYPES": extra})


async def test_ten_mebibytes_plus_one_byte_is_accepted(client) -> None:
    content = b"a" * (10 * 1024 * 1024 + 1)
    body = await upload(client, content, filename="big.txt")
    assert body["file_size"] == len(content)


async def test_eleven_mebibytes_is_refused(client) -> None:
    response = await post_form(
        client,
        f"/services/{SERVICE_ID}/documents",
        files=document(b"a" * (11 * 1024 * 1024)),
        headers=AUTH,
    )
    assert response.status_code == 413
    assert await response.get_json() == {"error": "Uploaded document exceeds file size limit"}


async def test_missing_document_part(client) -> None:
    response = await post_form(
        client, f"/services/{SERVICE_ID}/documents", form={"filename": "a.pdf"}, headers=AUTH
    )
    assert response.status_code == 400
    assert await response.get_json() == {"error": "No document upload"}


@pytest.mark.parametrize("header", [None, "Basic dXNlcjpwYXNz", "Bearer", "Bearer ", "test-token"])
async def test_upload_without_a_bearer_token_is_401(client, header) -> None:
    headers = {"Authorization": header} if header else {}
    response = await post_form(
        client, f"/services/{SERVICE_ID}/documents", files=document(PDF), headers=headers
    )
    assert response.status_code == 401
    assert await response.get_json() == {"error": "Unauthorized; bearer token must be provided"}


async def test_unknown_token_is_403_and_not_echoed(client) -> None:
    response = await post_form(
        client,
        f"/services/{SERVICE_ID}/documents",
        files=document(PDF),
        headers={"Authorization": "Bearer not-a-real-token-1234"},
    )
    assert response.status_code == 403
    assert await response.get_json() == {"error": "Forbidden; invalid bearer token provided"}
    assert "not-a-real-token-1234" not in await response.get_data(as_text=True)


async def test_every_configured_token_is_accepted(client) -> None:
    for token in ("auth-token", "test-token"):
        response = await post_form(
            client,
            f"/services/{SERVICE_ID}/documents",
            files=document(PDF),
            headers={"Authorization": f"Bearer {token}"},
        )
        assert response.status_code == 201


async def test_bad_service_id_is_a_json_404(client) -> None:
    response = await client.post(
        "/services/not-a-uuid/documents", files=document(PDF), headers=AUTH
    )
    assert response.status_code == 404
    assert await response.get_json() == {"error": "Not Found"}
