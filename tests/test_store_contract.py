"""One behaviour for every store: local (encrypted files), S3 on moto, S3 on ministack."""

from __future__ import annotations

import asyncio
import io
import os
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from dd_api.store import (
    DocumentKeyMismatch,
    DocumentNotFound,
    Location,
    StoreError,
)
from dd_api.store.local import LocalStore
from dd_api.store.s3 import S3Store
from tests.helpers import s3_client

SERVICE = uuid.UUID(int=0)


@pytest.fixture(params=["local", "moto", "ministack"])
async def store(request, tmp_path, s3_env) -> AsyncIterator:
    if request.param == "local":
        store = LocalStore(tmp_path / "store")
    else:
        endpoint = request.getfixturevalue(f"{request.param}_endpoint")
        # a pool of 2: a download that leaks its connection would hang the third read
        store = S3Store(s3_env(endpoint)["DOCUMENTS_BUCKET"], max_pool_connections=2)
        store.endpoint = endpoint
    store.kind = request.param
    await store.open()
    yield store
    await store.close()


def enforces_keys(store) -> bool:
    return store.kind != "moto"  # moto serves SSE-C objects without checking the key


def location(sending_method: str | None = "link") -> Location:
    return Location(SERVICE, uuid.uuid4(), sending_method)


async def put(store, content: bytes, sending_method: str | None = "link", **tags: str):
    where = location(sending_method)
    key = os.urandom(32) if where.needs_key else None
    await store.put(
        where,
        io.BytesIO(content),
        size=len(content),
        mimetype="application/pdf",
        key=key,
        tags=tags or {"av-status": "in_progress"},
    )
    return where, key


async def read_all(store, where: Location, key: bytes | None) -> bytes:
    document = await store.get(where, key)
    try:
        return b"".join([chunk async for chunk in document])
    finally:
        await document.aclose()


@pytest.mark.parametrize("size", [0, 1, 64 * 1024, 64 * 1024 + 1, 300 * 1024])
async def test_round_trip(store, size) -> None:
    content = os.urandom(size)
    where, key = await put(store, content)
    document = await store.get(where, key)
    assert (document.mimetype, document.size) == ("application/pdf", size)
    assert b"".join([chunk async for chunk in document]) == content
    await document.aclose()


@pytest.mark.parametrize("sending_method", ["attach", "template_attach", None, "other"])
async def test_every_sending_method(store, sending_method) -> None:
    where, key = await put(store, b"hello", sending_method)
    assert await read_all(store, where, key) == b"hello"


async def test_tags_are_written_with_the_document_and_replaced_whole(store) -> None:
    where, _ = await put(store, b"x", **{"av-status": "in_progress", "extra": "1"})
    assert await store.get_tags(where) == {"av-status": "in_progress", "extra": "1"}
    await store.put_tags(where, {"av-status": "clean", "av-scanner": "clamav"})
    assert await store.get_tags(where) == {"av-status": "clean", "av-scanner": "clamav"}
    await store.put_tags(where, {})
    assert await store.get_tags(where) == {}


async def test_last_modified_is_timezone_aware_and_recent(store) -> None:
    where, _ = await put(store, b"x")
    modified = await store.last_modified(where)
    assert modified.tzinfo is not None
    assert abs(datetime.now(UTC) - modified) < timedelta(minutes=5)


async def test_missing_documents(store) -> None:
    where = location()
    with pytest.raises(DocumentNotFound):
        await store.get(where, os.urandom(32))
    with pytest.raises(DocumentNotFound):
        await store.get_tags(where)
    with pytest.raises(DocumentNotFound):
        await store.last_modified(where)
    with pytest.raises(DocumentNotFound):
        await store.put_tags(where, {"a": "b"})
    with pytest.raises(DocumentNotFound):
        await store.delete(where, os.urandom(32))


async def test_delete(store) -> None:
    where, key = await put(store, b"bye")
    await store.delete(where, key)
    with pytest.raises(DocumentNotFound):
        await store.get(where, key)


async def test_wrong_or_missing_key_is_refused(store) -> None:
    if not enforces_keys(store):
        pytest.skip("moto does not enforce SSE-C; covered on local and ministack")
    where, key = await put(store, b"secret")
    for wrong in (os.urandom(32), None):
        with pytest.raises(DocumentKeyMismatch):
            await store.get(where, wrong)
        with pytest.raises(DocumentKeyMismatch):
            await store.delete(where, wrong)
    assert await read_all(store, where, key) == b"secret"


async def test_abandoned_downloads_release_what_they_hold(store) -> None:
    # Larger than any socket buffer, so the connection cannot have finished on its own.
    size = 8 * 1024 * 1024
    where, key = await put(store, os.urandom(size))
    async with asyncio.timeout(30):  # with a leak, the third get waits for a pool slot forever
        for _ in range(4):
            document = await store.get(where, key)
            await anext(document)
            await document.aclose()
        assert len(await read_all(store, where, key)) == size


async def test_reads_fall_back_to_the_legacy_key(store) -> None:
    if store.kind == "local":
        pytest.skip("legacy keys exist only in the S3 buckets of the original service")
    for sending_method, legacy_prefix in (("link", ""), ("attach", "tmp/")):
        where = location(sending_method)
        key = os.urandom(32)
        s3_client(store.endpoint).put_object(
            Bucket=store.bucket,
            Key=f"{legacy_prefix}{where.service_id}/{where.document_id}",
            Body=b"old upload",
            ContentType="text/plain",
            SSECustomerKey=key,
            SSECustomerAlgorithm="AES256",
            Tagging="av-status=clean",
        )
        assert await read_all(store, where, key) == b"old upload"
        assert await store.get_tags(where) == {"av-status": "clean"}
        await store.last_modified(where)
        await store.delete(where, key)
        with pytest.raises(DocumentNotFound):
            await store.get_tags(where)


async def test_template_attach_has_no_legacy_fallback(store) -> None:
    if store.kind == "local":
        pytest.skip("legacy keys exist only in S3")
    where = location("template_attach")
    s3_client(store.endpoint).put_object(
        Bucket=store.bucket, Key=f"{where.service_id}/{where.document_id}", Body=b"x"
    )
    with pytest.raises(DocumentNotFound):
        await store.get(where, None)


# -- local store specifics ------------------------------------------------------


async def test_local_store_never_writes_the_key_or_the_plaintext(tmp_path) -> None:
    store = LocalStore(tmp_path)
    await store.open()
    content = b"a very recognisable plaintext " * 100
    _, key = await put(store, content)
    for path in tmp_path.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert key not in data
            assert key.hex().encode() not in data
            assert b"recognisable" not in data


async def test_local_store_detects_tampering_and_truncation(tmp_path) -> None:
    store = LocalStore(tmp_path)
    await store.open()
    content = os.urandom(200 * 1024)
    where, key = await put(store, content)
    data_file = next(tmp_path.rglob("*.data"))
    original = data_file.read_bytes()

    data_file.write_bytes(original[:-100])
    with pytest.raises(StoreError):
        await read_all(store, where, key)

    tampered = bytearray(original)
    tampered[-50] ^= 1
    data_file.write_bytes(bytes(tampered))
    with pytest.raises(StoreError):
        await read_all(store, where, key)


async def test_local_store_paths_stay_inside_the_root(tmp_path) -> None:
    store = LocalStore(tmp_path / "root")
    await store.open()
    with pytest.raises(StoreError):
        store._path("../outside")
    with pytest.raises(StoreError):
        store._path("/etc/passwd")


async def test_local_store_key_survives_a_restart(tmp_path) -> None:
    store = LocalStore(tmp_path)
    await store.open()
    where, _ = await put(store, b"template", "template_attach")
    again = LocalStore(tmp_path)
    await again.open()
    assert await read_all(again, where, None) == b"template"
    assert (tmp_path / ".store-key").stat().st_mode & 0o077 == 0


async def test_local_store_removes_temp_files_a_crash_left(tmp_path) -> None:
    store = LocalStore(tmp_path)
    await store.open()
    where, _ = await put(store, b"kept", "template_attach")
    folder = store._data_path(where.key).parent
    stale, fresh = folder / ".tmp-crashed", folder / ".tmp-writing-now"
    for path in (stale, fresh):
        path.write_bytes(b"half a document")
    an_hour_ago = datetime.now(UTC).timestamp() - 3600
    os.utime(stale, (an_hour_ago, an_hour_ago))
    again = LocalStore(tmp_path)
    await again.open()
    assert not stale.exists()
    assert fresh.exists()  # may belong to a live writer sharing the directory
    assert await read_all(again, where, None) == b"kept"
