"""The helpers dd_compat is the one home of: parse_bool/as_bool, json_error, matching_secret
and the trace header names."""

from __future__ import annotations

import hmac
from collections.abc import Callable

import dd_compat
import pytest
from dd_compat import (
    PARENT_SPAN_ID_HEADER,
    SPAN_ID_HEADER,
    TRACE_ID_HEADER,
    json_error,
    matching_secret,
    parse_bool,
)
from dd_compat.tracing import DEFAULT_HEADERS, header_names, outgoing_trace_headers
from quart import Quart


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (True, True),
        (False, False),
        ("1", True),
        ("true", True),
        (" TRUE ", True),
        ("yes", True),
        ("On", True),
        ("0", False),
        ("false", False),
        ("No", False),
        (" off\n", False),
    ],
)
def test_parse_bool(value: str | bool, expected: bool) -> None:
    assert parse_bool(value) is expected


@pytest.mark.parametrize("value", ["maybe", "", " ", "ture", "2", "-1", "none", "y"])
def test_parse_bool_rejects_junk_naming_it(value: str) -> None:
    with pytest.raises(ValueError, match=r"expected true or false") as error:
        parse_bool(value)
    assert repr(value) in str(error.value)


@pytest.mark.parametrize("value", [None, 1, 0, b"true"])
def test_parse_bool_takes_only_str_or_bool(value: object) -> None:
    with pytest.raises(ValueError, match=r"expected true or false"):
        parse_bool(value)  # type: ignore[arg-type]


async def test_json_error() -> None:
    app = Quart(__name__)
    async with app.app_context():
        response = json_error(418, "I'm a teapot; 'quoted' <b>")
    assert response.status_code == 418
    assert response.mimetype == "application/json"
    assert await response.get_json() == {"error": "I'm a teapot; 'quoted' <b>"}


def test_matching_secret() -> None:
    assert matching_secret("one", ["one", "two"]) == 0
    assert matching_secret("two", ["one", "two"]) == 1
    assert matching_secret("two", [None, "two"]) == 1
    assert matching_secret("same", ["same", "same"]) == 0  # the first match
    assert matching_secret("three", ["one", "two"]) is None
    assert matching_secret("", ["", None]) is None  # an unset secret never matches
    assert matching_secret("", ["one"]) is None
    assert matching_secret("é", ["e", "é"]) == 1  # non-ASCII: compared as UTF-8
    assert matching_secret("x", []) is None


def test_matching_secret_compares_with_every_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    compared: list[bytes] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append(b)
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    assert matching_secret("one", ["one", "two", None]) == 0
    assert compared == [b"one", b"two", b""]


def test_trace_header_names_in_one_place() -> None:
    assert (TRACE_ID_HEADER, SPAN_ID_HEADER, PARENT_SPAN_ID_HEADER) == (
        "X-B3-TraceId",
        "X-B3-SpanId",
        "X-B3-ParentSpanId",
    )
    assert header_names() == header_names({}) == header_names({"NOTIFY_TRACE_ID_HEADER": ""})
    assert header_names() == (TRACE_ID_HEADER, SPAN_ID_HEADER, PARENT_SPAN_ID_HEADER)
    assert header_names({"NOTIFY_SPAN_ID_HEADER": "X-Span"})[1] == "X-Span"
    assert dict(DEFAULT_HEADERS) == {
        "NOTIFY_TRACE_ID_HEADER": TRACE_ID_HEADER,
        "NOTIFY_SPAN_ID_HEADER": SPAN_ID_HEADER,
        "NOTIFY_PARENT_SPAN_ID_HEADER": PARENT_SPAN_ID_HEADER,
    }
    assert outgoing_trace_headers() == {}


def test_config_defaults_use_the_constants(mode: str, make_app: Callable[..., Quart]) -> None:
    app = make_app()
    assert app.config["NOTIFY_TRACE_ID_HEADER"] == TRACE_ID_HEADER
    assert app.config["NOTIFY_SPAN_ID_HEADER"] == SPAN_ID_HEADER
    assert app.config["NOTIFY_PARENT_SPAN_ID_HEADER"] == PARENT_SPAN_ID_HEADER


def test_exported() -> None:
    for name in (
        "parse_bool",
        "as_bool",
        "json_error",
        "matching_secret",
        "flush_logs",
        "TRACE_ID_HEADER",
        "SPAN_ID_HEADER",
        "PARENT_SPAN_ID_HEADER",
    ):
        assert name in dd_compat.__all__
        assert hasattr(dd_compat, name)
