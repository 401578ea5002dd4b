"""The proxy-header check: X-Custom-Forwarder against ROUTE_SECRET_KEY_1/_2."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import dd_compat
import pytest
from dd_compat import as_bool
from dd_compat.proxy import FORBIDDEN_MESSAGE, check_proxy_header_secret
from quart import Quart

SECRET_1 = "route-secret-one"
SECRET_2 = "route-secret-two"
WRONG = "not-the-secret-xyz"


@pytest.fixture
def make_proxied_app(make_app: Callable[..., Quart]) -> Callable[..., Quart]:
    def _make(**config: Any) -> Quart:
        config = {"ROUTE_SECRET_KEY_1": SECRET_1, "ROUTE_SECRET_KEY_2": SECRET_2, **config}
        app = make_app(**config)

        @app.get("/_status")
        async def status() -> str:
            return "ok"

        return app

    return _make


@pytest.mark.parametrize("flag", [True, "true", "True", "1"])
async def test_wrong_header_forbidden(
    mode: str, make_proxied_app: Callable[..., Quart], logs: Any, flag: object
) -> None:
    app = make_proxied_app(CHECK_PROXY_HEADER=flag)
    response = await app.test_client().get(
        "/_status", headers={"X-Custom-Forwarder": WRONG, "X-B3-TraceId": "a" * 32}
    )
    assert response.status_code == 403
    assert response.mimetype == "application/json"
    assert await response.get_json() == {"error": FORBIDDEN_MESSAGE}
    body = await response.get_data(as_text=True)
    assert WRONG not in body
    assert response.headers["X-B3-TraceId"] == "a" * 32
    warning = logs.find("Header didn't match any keys")
    assert warning["levelname"] == "WARNING" and warning["requestId"] == "a" * 32
    assert WRONG not in logs.text()


@pytest.mark.parametrize(
    ("headers", "reason"),
    [({}, "Header missing"), ({"X-Custom-Forwarder": ""}, "Header exists but is empty")],
)
async def test_missing_or_empty_header_forbidden(
    mode: str,
    make_proxied_app: Callable[..., Quart],
    logs: Any,
    headers: dict[str, str],
    reason: str,
) -> None:
    app = make_proxied_app(CHECK_PROXY_HEADER=True)
    response = await app.test_client().get("/_status", headers=headers)
    assert response.status_code == 403
    assert logs.find(reason)


async def test_fails_closed_without_secrets(
    mode: str, make_proxied_app: Callable[..., Quart], logs: Any
) -> None:
    app = make_proxied_app(CHECK_PROXY_HEADER=True, ROUTE_SECRET_KEY_1="", ROUTE_SECRET_KEY_2="")
    response = await app.test_client().get("/_status", headers={"X-Custom-Forwarder": ""})
    assert response.status_code == 403
    response = await app.test_client().get("/_status", headers={"X-Custom-Forwarder": "x"})
    assert response.status_code == 403
    assert logs.find("Secrets are not configured")


@pytest.mark.parametrize("secret", [SECRET_1, SECRET_2])
async def test_either_key_accepted(
    mode: str, make_proxied_app: Callable[..., Quart], secret: str
) -> None:
    app = make_proxied_app(CHECK_PROXY_HEADER=True)
    response = await app.test_client().get("/_status", headers={"X-Custom-Forwarder": secret})
    assert response.status_code == 200
    assert await response.get_data(as_text=True) == "ok"


@pytest.mark.parametrize("flag", [None, False, "false", "0", ""])
async def test_not_enforced(
    mode: str, make_proxied_app: Callable[..., Quart], flag: object
) -> None:
    config = {} if flag is None else {"CHECK_PROXY_HEADER": flag}
    app = make_proxied_app(**config)
    assert app.config["CHECK_PROXY_HEADER"] is False
    response = await app.test_client().get("/_status", headers={"X-Custom-Forwarder": WRONG})
    assert response.status_code == 200


async def test_checked_before_routing(mode: str, make_proxied_app: Callable[..., Quart]) -> None:
    app = make_proxied_app(CHECK_PROXY_HEADER=True)
    response = await app.test_client().get("/unknown")
    assert response.status_code == 403


async def test_runs_before_app_hooks(mode: str, make_proxied_app: Callable[..., Quart]) -> None:
    app = make_proxied_app(CHECK_PROXY_HEADER=True)
    ran: list[str] = []

    @app.before_request
    async def app_hook() -> None:
        ran.append("app hook")

    response = await app.test_client().get("/_status")
    assert response.status_code == 403
    assert ran == []


def test_check_proxy_header_secret() -> None:
    secrets = [SECRET_1, SECRET_2]
    assert check_proxy_header_secret({"X-Custom-Forwarder": SECRET_2}, secrets) == (
        True,
        "Key used: 2",
    )
    assert check_proxy_header_secret({"X-Custom-Forwarder": "é"}, secrets) == (
        False,
        "Header didn't match any keys",
    )
    assert check_proxy_header_secret({"X-Custom-Forwarder": "x"}, [None, ""]) == (
        False,
        "Secrets are not configured",
    )


def test_as_bool() -> None:
    assert [as_bool(v) for v in (True, 1, "true", "TRUE", " yes ", "on", "1")] == [True] * 7
    assert [as_bool(v) for v in (False, 0, None, "", "false", "0", "no")] == [False] * 7
    for junk in ("maybe", "ture", "2", 2, 0.0, []):
        with pytest.raises(ValueError, match="expected true or false"):
            as_bool(junk)


@pytest.mark.parametrize("key", ["CHECK_PROXY_HEADER", "DEBUG"])
def test_junk_flag_is_an_error(mode: str, make_app: Callable[..., Quart], key: str) -> None:
    with pytest.raises(ValueError, match=f"{key}: expected true or false.*'maybe'"):
        make_app(**{key: "maybe"})


async def test_forbidden_body_is_json_error(
    mode: str, make_proxied_app: Callable[..., Quart]
) -> None:
    app = make_proxied_app(CHECK_PROXY_HEADER=True)
    response = await app.test_client().get("/_status", headers={"X-Custom-Forwarder": WRONG})
    async with app.app_context():
        expected = dd_compat.json_error(403, FORBIDDEN_MESSAGE)
    assert response.status_code == expected.status_code == 403
    assert await response.get_data() == await expected.get_data()
    assert response.headers["Content-Type"] == expected.headers["Content-Type"]
