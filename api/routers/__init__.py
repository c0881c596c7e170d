"""HTTP routes, one module per resource."""

from __future__ import annotations

from typing import Any

from api.models import ErrorBody

# Documented error responses, all with the uniform error body.
ERRORS: dict[int | str, dict[str, Any]] = {
    400: {
        "model": ErrorBody,
        "description": "invalid parameter value (unknown kind, bad time, limit too large)",
    },
    404: {"model": ErrorBody, "description": "unknown device or nothing to show"},
    422: {"model": ErrorBody, "description": "missing parameter or wrong type"},
    503: {"model": ErrorBody, "description": "database unavailable or query too slow"},
}
