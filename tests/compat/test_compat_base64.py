"""base64 ids: the vectors of anchor contract §2.3, in both modes."""

from __future__ import annotations

from collections.abc import Callable
from uuid import UUID

import dd_compat
import pytest
from dd_compat import base64_ids, ids
from quart import Quart

ZERO = UUID(int=0)
ALL_F = UUID("ffffffff-ffff-ffff-ffff-ffffffffffff")
ONE = UUID(int=1)
KEY_0_31 = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8"

ENCODE_UUID = [
    (ZERO, "AAAAAAAAAAAAAAAAAAAAAA"),
    (ALL_F, "_____________________w"),
    (ONE, "AAAAAAAAAAAAAAAAAAAAAQ"),
    (str(ALL_F), "_____________________w"),  # strings are coerced with UUID()
]
ENCODE_BYTES = [(bytes(range(32)), KEY_0_31), (bytes(32), "A" * 43)]
LENIENT_UUID = [
    "AAAAAAAAAAAAAAAAAAAAAQ",
    "AAAAAAAAAAAAAAAAAAAAAQ=",  # padding accepted
    "AAAAAAAAAAAAAAAAAAAAAQ==",
    "AAAAAAAAAAAA!AAAAAAAAAQ",  # non-alphabet ASCII discarded
    "AAAA AAAA\nAAAAAAAAAAAAAQ",
]
BAD = ["AAAAA", "é" * 22, "AAAAAAAAAAAAAAAAAAAAA\u00e9"]  # length ≡ 1 mod 4, non-ASCII


@pytest.fixture
async def app_ctx(make_app: Callable[..., Quart]):
    app = make_app()
    async with app.app_context():
        yield app


async def test_active_implementation(mode: str, app_ctx: Quart) -> None:
    impl = ids._impl()
    if mode == "builtin":
        assert impl is base64_ids
    else:
        assert impl.__name__ == "notifications_utils.base64_uuid"
    assert dd_compat.get_state(app_ctx).base64 is impl


def test_builtin_outside_app_context() -> None:
    assert ids._impl() is base64_ids


@pytest.mark.parametrize(("value", "expected"), ENCODE_UUID)
async def test_uuid_to_base64(app_ctx: Quart, value: UUID | str, expected: str) -> None:
    assert dd_compat.uuid_to_base64(value) == expected
    assert dd_compat.base64_to_uuid(expected) == UUID(str(value))


@pytest.mark.parametrize(("value", "expected"), ENCODE_BYTES)
async def test_bytes_to_base64(app_ctx: Quart, value: bytes, expected: str) -> None:
    assert dd_compat.bytes_to_base64(value) == expected
    assert dd_compat.base64_to_bytes(expected) == value


@pytest.mark.parametrize("value", LENIENT_UUID)
async def test_lenient_decode(app_ctx: Quart, value: str) -> None:
    assert dd_compat.base64_to_uuid(value) == ONE


async def test_lenient_key_decode(app_ctx: Quart) -> None:
    assert dd_compat.base64_to_bytes(KEY_0_31 + "=") == bytes(range(32))
    assert dd_compat.base64_to_bytes("AA=A") == b"\x00\x00"
    # key length is not validated
    assert dd_compat.base64_to_bytes("AAAA") == bytes(3)


@pytest.mark.parametrize("value", BAD)
@pytest.mark.parametrize("func", ["base64_to_uuid", "base64_to_bytes"])
async def test_decode_errors_are_value_errors(app_ctx: Quart, func: str, value: str) -> None:
    with pytest.raises(ValueError):
        getattr(dd_compat, func)(value)


async def test_length_one_mod_four_message(app_ctx: Quart) -> None:
    with pytest.raises(ValueError, match="Invalid base64-encoded string"):
        dd_compat.base64_to_bytes("AAAAA")


@pytest.mark.parametrize("value", ["A" * 21, KEY_0_31])
async def test_non_uuid_length_rejected(app_ctx: Quart, value: str) -> None:
    with pytest.raises(ValueError):
        dd_compat.base64_to_uuid(value)
