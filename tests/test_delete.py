"""DELETE /services/<id>/documents/<id>: authenticated, works for every sending method."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest

from dd_api.app import create_app
from tests.helpers import AUTH, SERVICE_ID, running, upload

PDF = b"%PDF-1.4 file contents"
DELETED = {"message": "Document deleted", "status": "ok"}


def document_path(body: dict) -> str:
    return f"/services/{SERVICE_ID}/documents/{body['id']}"


def key_of(body: dict) -> str:
    return parse_qs(urlsplit(body["direct_file_url"]).query)["key"][0]


@pytest.mark.parametrize("sending_method", ["link", "attach"])
async def test_delete_with_key_in_query(client, sending_method) -> None:
    body = await upload(client, PDF, sending_method=sending_method)
    response = await client.delete(
        f"{document_path(body)}?key={key_of(body)}&sending_method={sending_method}",
        headers=AUTH,
    )
    assert response.status_code == 200
    assert await response.get_json() == DELETED
    download = await client.get(urlsplit(body["url"]).path + "?" + urlsplit(body["url"]).query)
    assert download.status_code == 404


async def test_delete_with_json_body(client) -> None:
    body = await upload(client, PDF, sending_method="attach")
    response = await client.delete(
        document_path(body), json={"key": key_of(body), "sending_method": "attach"}, headers=AUTH
    )
    assert response.status_code == 200
    assert await response.get_json() == DELETED


async def test_template_attach_delete_needs_no_key(client) -> None:
    # exactly what notification-api sends
    body = await upload(client, PDF, sending_method="template_attach")
    response = await client.delete(
        f"{document_path(body)}?sending_method=template_attach", headers=AUTH
    )
    assert response.status_code == 200
    again = await client.delete(
        f"{document_path(body)}?sending_method=template_attach", headers=AUTH
    )
    assert again.status_code == 404


async def test_delete_without_key_is_400(client) -> None:
    body = await upload(client, PDF)
    response = await client.delete(document_path(body), headers=AUTH)
    assert response.status_code == 400
    assert await response.get_json() == {
        "error": "Missing decryption key. Key is required for all sending methods except "
        "'template_attach'."
    }


async def test_delete_of_unknown_document_is_404(client) -> None:
    response = await client.delete(
        f"/services/{SERVICE_ID}/documents/33333333-3333-3333-3333-333333333333?key={'A' * 43}",
        headers=AUTH,
    )
    assert response.status_code == 404
    assert await response.get_json() == {"error": "Document not found"}


@pytest.mark.parametrize(
    ("headers", "status"), [({}, 401), ({"Authorization": "Bearer nope"}, 403)]
)
async def test_delete_needs_a_token_and_changes_nothing_without_one(client, headers, status):
    body = await upload(client, PDF, sending_method="template_attach")
    response = await client.delete(
        f"{document_path(body)}?sending_method=template_attach", headers=headers
    )
    assert response.status_code == status
    assert "nope" not in await response.get_data(as_text=True)
    still_there = await client.get(f"{document_path(body)}?sending_method=template_attach")
    assert still_there.status_code == 200


@pytest.mark.parametrize("json_body", [["a"], "text", {"key": 5}])
async def test_malformed_json_body_is_400(client, json_body) -> None:
    body = await upload(client, PDF)
    response = await client.delete(document_path(body), json=json_body, headers=AUTH)
    assert response.status_code == 400
    assert "error" in await response.get_json()


@pytest.mark.parametrize("kind", ["local", "s3"])
async def test_wrong_key_does_not_delete(base_env, ssec_env, kind) -> None:
    app = create_app({**base_env, **ssec_env(kind)})
    async with running(app) as client:
        body = await upload(client, PDF, sending_method="attach")
        response = await client.delete(
            f"{document_path(body)}?key={'B' * 43}&sending_method=attach", headers=AUTH
        )
        assert response.status_code == 400
        assert await response.get_json() == {"error": "Invalid decryption key"}
        url = urlsplit(body["url"])
        assert (await client.get(f"{url.path}?{url.query}")).status_code == 200
