"""``GET /openapi.json``: the API description, kept beside the code in ``dd_api/openapi.json``.

The file is the contract: tests/test_openapi.py checks that it describes every route of the
app, and drives every response it documents. Adding a route means adding its path there.
"""

from __future__ import annotations

import json
from importlib import resources

from quart import Blueprint, Response

blueprint = Blueprint("openapi", __name__)

SPEC_FILE = "openapi.json"


def load_spec_bytes() -> bytes:
    """The description as shipped with the package (it must be package data in a wheel)."""
    raw = resources.files("dd_api").joinpath(SPEC_FILE).read_bytes()
    json.loads(raw)  # a broken file must stop start-up, not fail on the first request
    return raw


_SPEC = load_spec_bytes()


@blueprint.get("/openapi.json")
async def openapi() -> Response:
    return Response(_SPEC, mimetype="application/json")
