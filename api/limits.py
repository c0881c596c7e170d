"""Request limits as a pure ASGI middleware: body size, and no NUL bytes in the URL.

A declared ``Content-Length`` above the limit is answered 413 before any of the body is read.
Without one (chunked upload) the body is counted as it streams in and the request is cut off
with 413 at the first chunk that goes over.

A NUL byte (raw or ``%00``) in the path or query is answered 400 here, for every route: no
parameter can legitimately hold one, and PostgreSQL text refuses it (a 500 deep in a query).
"""

from __future__ import annotations

import contextlib
import logging

from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import error_body

log = logging.getLogger("cityneuron.api")


class _BodyTooLarge(HTTPException):
    # An HTTPException so FastAPI's body reader re-raises it instead of turning it into a 400.
    def __init__(self) -> None:
        super().__init__(status_code=413)


def too_large_response(max_bytes: int) -> JSONResponse:
    return JSONResponse(
        error_body("payload_too_large", f"request body larger than {max_bytes} bytes"),
        status_code=413,
        headers={"Connection": "close"},
    )


class RequestLimits:
    """Refuse request bodies larger than ``max_bytes`` with 413 and NUL bytes in URLs with 400."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if _has_nul(scope):
            await JSONResponse(
                error_body("invalid_character", "NUL bytes are not allowed in the path or query"),
                status_code=400,
            )(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await too_large_response(self.max_bytes)(scope, receive, send)
            return
        received = 0
        overflowed = False
        app_started = False

        async def counting_receive() -> Message:
            nonlocal received, overflowed
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    overflowed = True
                    raise _BodyTooLarge()
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal app_started
            # Once over the limit, whatever the app makes of the cut-off body is replaced by the 413.
            if overflowed and not app_started:
                return
            if message["type"] == "http.response.start":
                app_started = True
            await send(message)

        with contextlib.suppress(_BodyTooLarge):
            await self.app(scope, counting_receive, guarded_send)
        if overflowed and not app_started:
            log.info("%s %s: body over %d bytes refused", scope["method"], scope["path"], self.max_bytes)
            await too_large_response(self.max_bytes)(scope, receive, send)


def _has_nul(scope: Scope) -> bool:
    query: bytes = scope.get("query_string", b"")
    return "\x00" in scope["path"] or b"\x00" in query or b"%00" in query


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
