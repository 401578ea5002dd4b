"""Small helpers with one home: dd_compat uses them, and so does dd_api.

- :func:`parse_bool`: the one strict reading of a boolean setting;
- :func:`as_bool`: a config flag (bool, 0/1, unset or a string) through :func:`parse_bool`;
- :func:`json_error`: the ``{"error": message}`` response every error leaves as;
- :func:`matching_secret`: a presented secret against several configured ones, in constant time.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from typing import Final

from quart import Response, jsonify

__all__ = ["FALSE_VALUES", "TRUE_VALUES", "as_bool", "json_error", "matching_secret", "parse_bool"]

#: The spellings :func:`parse_bool` accepts (after stripping and lower-casing).
TRUE_VALUES: Final = frozenset({"1", "true", "yes", "on"})
FALSE_VALUES: Final = frozenset({"0", "false", "no", "off"})


def parse_bool(value: str | bool) -> bool:
    """``True``/``False`` from a bool or from one of "1"/"true"/"yes"/"on" and
    "0"/"false"/"no"/"off" (case and surrounding blanks ignored).

    Anything else, the empty string included, raises ValueError naming what it got: a setting
    of "maybe" is a mistake to report, not false.
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        text = value.strip().lower()
        if text in TRUE_VALUES:
            return True
        if text in FALSE_VALUES:
            return False
    raise ValueError(f"expected true or false (1/0, yes/no, on/off); got {value!r}")


def as_bool(value: object) -> bool:
    """A config flag: a bool, 0 or 1, ``None`` or a blank string (unset: false), or a string
    :func:`parse_bool` accepts. Anything else raises ValueError."""
    if value is None:
        return False
    if isinstance(value, str):
        return False if not value.strip() else parse_bool(value)
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise ValueError(f"expected true or false (1/0, yes/no, on/off); got {value!r}")


def json_error(status: int, message: str) -> Response:
    """``{"error": message}`` with ``status``; needs an app context (it uses ``jsonify``)."""
    response = jsonify(error=message)
    response.status_code = status
    return response


def matching_secret(presented: str, secrets: Sequence[str | None]) -> int | None:
    """The index in ``secrets`` of the one ``presented`` equals, or ``None``.

    Empty and ``None`` secrets (not configured) never match. ``presented`` is compared with
    every secret, after the first match too, with :func:`hmac.compare_digest`, so the time
    taken depends neither on which secret matched nor on how much of one did. The strings
    are compared as UTF-8, so a non-ASCII value is simply a mismatch.
    """
    given = presented.encode()
    found: int | None = None
    for index, secret in enumerate(secrets):
        equal = hmac.compare_digest(given, (secret or "").encode())
        if equal and secret and found is None:
            found = index
    return found
