"""JSON bodies of the hot, polled views written with orjson straight from dicts.

Returning a model makes FastAPI validate it against ``response_model`` and serialise it on every
request; for a district's 60 poles with 12 metrics each that is over a thousand model instances per
answer, most of the time the view costs. The hot routes return :class:`OrjsonResponse` instead and
keep ``response_model`` for the OpenAPI document only; tests/test_api_schemathesis.py checks the
bodies against that schema.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import orjson
from starlette.responses import Response

# RFC 3339 with "Z" for UTC, as pydantic writes datetimes; NaN and infinities become null as well.
_OPTIONS = orjson.OPT_UTC_Z | orjson.OPT_NON_STR_KEYS


def _default(value: Any) -> Any:
    # numeric columns (PostgreSQL avg/sum of integers) arrive as Decimal, which orjson leaves out.
    if isinstance(value, Decimal):
        return float(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def dumps(content: Any) -> bytes:
    """``content`` (dicts, lists, str, numbers, datetimes, Decimal) as JSON bytes."""
    return orjson.dumps(content, default=_default, option=_OPTIONS)


class OrjsonResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return dumps(content)
