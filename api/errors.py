"""API errors and the handlers that give every error response one JSON shape.

Every 4xx/5xx body is ``{"error": {"code": "...", "message": "..."}}``: our own errors, FastAPI's
request validation, Starlette's HTTP errors (404 route, 405) and unexpected failures alike.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from cityneuron.errors import CityNeuronError

log = logging.getLogger("cityneuron.api")


class ApiError(CityNeuronError):
    """An error answered to the client with ``status_code`` and a stable ``code``."""

    status_code = 400
    code = "bad_request"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class BadRequest(ApiError):
    status_code = 400
    code = "bad_request"


class NotFound(ApiError):
    status_code = 404
    code = "not_found"


class DatabaseUnavailable(ApiError):
    status_code = 503
    code = "database_unavailable"


def device_not_found(device_id: str) -> NotFound:
    return NotFound(f"unknown device {device_id!r}", code="device_not_found")


def error_body(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    415: "unsupported_media_type",
    429: "too_many_requests",
}


def _location(loc: Sequence[Any]) -> str:
    # ("query", "limit") -> "query parameter 'limit'"; ("path", "device_id") -> "path parameter ..."
    if len(loc) >= 2 and loc[0] in ("query", "path", "header", "cookie"):
        return f"{loc[0]} parameter {'.'.join(str(p) for p in loc[1:])!r}"
    return ".".join(str(p) for p in loc) or "request"


def validation_message(exc: RequestValidationError) -> str:
    parts = [f"{_location(err.get('loc', ()))}: {err.get('msg', 'invalid')}" for err in exc.errors()]
    return "; ".join(parts) or "invalid request"


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    if exc.status_code >= 500:
        log.warning("%s %s -> %d %s", request.method, request.url.path, exc.status_code, exc.message)
    return JSONResponse(error_body(exc.code, exc.message), status_code=exc.status_code)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return JSONResponse(error_body("invalid_parameter", validation_message(exc)), status_code=422)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _STATUS_CODES.get(exc.status_code, "error" if exc.status_code < 500 else "server_error")
    message = str(exc.detail) if exc.detail else code.replace("_", " ")
    if exc.status_code == 404 and exc.detail == "Not Found":
        message = f"no route {request.url.path!r}; see /docs"
    return JSONResponse(error_body(code, message), status_code=exc.status_code, headers=exc.headers)


async def _overflow(request: Request, exc: Exception) -> JSONResponse:
    # Date arithmetic on an instant the client chose at the edge of year 1 or 9999 (a window
    # reaching back 24 h from 0001-01-01): the request, not the server, is out of range.
    return JSONResponse(
        error_body("value_out_of_range", f"a parameter value is out of range: {exc}"), status_code=400
    )


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    return JSONResponse(error_body("internal_error", "internal server error"), status_code=500)


def install_error_handlers(app: FastAPI) -> None:
    """Route every error through the uniform JSON body."""
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(OverflowError, _overflow)
    app.add_exception_handler(Exception, _unexpected_error)
