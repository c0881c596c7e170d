"""Who may do what: API keys checked app-wide by method and path, rate limits, CORS, OpenAPI.

The policy depends only on the request's method and path, so routers need no change to be
protected: reads (GET/HEAD/OPTIONS) need ``read`` only when ``api.read_requires_key``; any other
method needs ``write``; everything under ``/admin`` needs ``admin``; ``/health``, ``/metrics``
and the documentation are always open. Keys come as ``Authorization: Bearer <token>`` or
``X-API-Key: <token>``, never in the URL (URLs end up in access logs).

Nothing here logs or echoes a presented token.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Annotated, Any, cast

from fastapi import Depends, FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Receive, Send
from starlette.types import Scope as AsgiScope
from starlette.websockets import WebSocketClose

from api.errors import ApiError, error_body
from api.keys import ApiKey, KeyVerifier, Scope
from api.limits import RequestLimits
from api.ratelimit import RateLimiter, retry_after_header
from api.state import ApiState
from cityneuron.settings import ApiSettings

log = logging.getLogger("cityneuron.api")

OPEN_PATHS = frozenset(
    {"/health", "/health/ready", "/metrics", "/docs", "/docs/oauth2-redirect", "/openapi.json"}
)
# Static assets (the docs' Swagger UI, screens): public files, open like /docs itself.
OPEN_PREFIXES = ("/static/", "/screen")
ADMIN_PREFIX = "/admin"
_READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_REALM = 'Bearer realm="cityneuron"'
# RFC 6455 §7.4.1: 1008 = policy violation.
_WS_POLICY_VIOLATION = 1008
# OpenAPI security scheme names.
_BEARER = "ApiKeyBearer"
_HEADER = "ApiKeyHeader"


def required_scope(method: str, path: str, read_requires_key: bool) -> Scope | None:
    """The scope a request needs, or None when it is open."""
    if path in OPEN_PATHS or path == "/" or path.startswith(OPEN_PREFIXES):
        # Docs and the screen's own files are public; the data the screen asks for follows the policy.
        return None
    if path == ADMIN_PREFIX or path.startswith(ADMIN_PREFIX + "/"):
        return Scope.ADMIN
    if method.upper() in _READ_METHODS:
        return Scope.READ if read_requires_key else None
    return Scope.WRITE


def presented_token(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The token of ``Authorization: Bearer`` or ``X-API-Key``; "" when a header is unusable."""
    api_key_header = None
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").strip().partition(" ")
            return token.strip() if scheme.lower() == "bearer" else ""
        if name == b"x-api-key":
            api_key_header = value.decode("latin-1").strip()
    return api_key_header


async def _caller_key(request: Request) -> ApiKey | None:
    return cast(ApiKey | None, getattr(request.state, "api_key", None))


# The verified key of the request (None for anonymous reads), for routes that record who acted.
CallerKey = Annotated[ApiKey | None, Depends(_caller_key)]


def key_verifier(app: FastAPI) -> KeyVerifier:
    """The application's verifier (routes that revoke keys must tell it)."""
    return cast(KeyVerifier, app.state.key_verifier)


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(code, message), status_code=status, headers=headers)


class AccessControl:
    """Pure ASGI middleware: rate limit the caller, then check its key against the policy."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        routes: Callable[[], list[BaseRoute]],
        verifier: KeyVerifier,
        limiter: RateLimiter,
        read_requires_key: bool,
    ) -> None:
        self.app = app
        self._routes = routes
        self._verifier = verifier
        self._limiter = limiter
        self._read_requires_key = read_requires_key

    async def __call__(self, scope: AsgiScope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        response = await self._check(scope)
        if response is None:
            await self.app(scope, receive, send)
        elif scope["type"] == "websocket":
            # Refused before the handshake completes: the server answers it with HTTP 403.
            await WebSocketClose(code=_WS_POLICY_VIOLATION, reason=_ws_reason(response))(scope, receive, send)
        else:
            await response(scope, receive, send)

    async def _check(self, scope: AsgiScope) -> JSONResponse | None:
        # A WebSocket handshake is a GET: it needs what reads need.
        method: str = scope.get("method", "GET")
        path = _route_path(scope)
        needed = required_scope(method, path, self._read_requires_key)
        # An unknown route or method is left to the router (404/405); it reveals nothing that
        # /openapi.json does not.
        if needed is not None and not self._routed(scope):
            needed = None
        token = presented_token(scope["headers"])
        client = scope.get("client")
        address = f"ip:{client[0] if client else 'unknown'}"
        # Key lookups have their own bucket per address, taken before the database is asked:
        # made-up tokens are throttled before they cost a query, while a real key (one lookup
        # per cache time) never runs short even when its address is busy.
        if (
            token
            and self._verifier.needs_lookup(token)
            and (limited := self._rate_limited(f"lookup:{address}")) is not None
        ):
            return limited
        key: ApiKey | None = None
        if token:
            try:
                key = await self._verify(scope, token)
            except ApiError as exc:
                if needed is not None:
                    return _error(exc.status_code, exc.code, exc.message)
                # An open route is served anonymously even when keys cannot be checked.
        caller = f"key:{key.key_id}" if key is not None else address
        if (limited := self._rate_limited(caller)) is not None:
            return limited
        if needed is not None:
            denied = _denial(needed, token, key)
            if denied is not None:
                log.debug("%s %s refused: %s", method, path, denied.status_code)
                return denied
        if key is not None:
            scope.setdefault("state", {})["api_key"] = key
        return None

    def _rate_limited(self, caller: str) -> JSONResponse | None:
        wait_s = self._limiter.acquire(caller)
        if wait_s <= 0:
            return None
        retry_after = retry_after_header(wait_s)
        return _error(
            429,
            "too_many_requests",
            f"rate limit exceeded; retry after {retry_after} s",
            {"Retry-After": retry_after},
        )

    async def _verify(self, scope: AsgiScope, token: str) -> ApiKey | None:
        state = cast(ApiState, scope["app"].state.api)
        return await self._verifier.verify(state.pool, state.settings.database.connect_timeout_s, token)

    def _routed(self, scope: AsgiScope) -> bool:
        return any(route.matches(scope)[0] is Match.FULL for route in self._routes())


def _denial(needed: Scope, token: str | None, key: ApiKey | None) -> JSONResponse | None:
    if token is None:
        return _error(
            401,
            "missing_api_key",
            f"this request needs an API key with scope {needed.value!r}:"
            " send 'Authorization: Bearer <token>' or 'X-API-Key: <token>'",
            {"WWW-Authenticate": _REALM},
        )
    if key is None:
        return _error(
            401,
            "invalid_api_key",
            "the API key is malformed, unknown or revoked",
            {"WWW-Authenticate": f'{_REALM}, error="invalid_token"'},
        )
    if not key.allows(needed):
        # RFC 6750 §3.1: insufficient_scope with the scope that would do.
        return _error(
            403,
            "insufficient_scope",
            f"API key {key.key_id} lacks scope {needed.value!r}",
            {"WWW-Authenticate": f'{_REALM}, error="insufficient_scope", scope="{needed.value}"'},
        )
    return None


def _ws_reason(response: JSONResponse) -> str:
    body = json.loads(bytes(response.body))
    return str(body["error"]["code"])


def _route_path(scope: AsgiScope) -> str:
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


# --- installation -------------------------------------------------------------------------------


def _cors_origins(origins: list[str]) -> list[str]:
    explicit = [o.rstrip("/") for o in origins if o.strip() and o.strip() != "*"]
    if len(explicit) != len(origins):
        log.warning("api.cors_origins: '*' and empty entries ignored; list the dashboard origins")
    return explicit


def install_security(app: FastAPI, api: ApiSettings, verifier: KeyVerifier | None = None) -> None:
    """Add key checks, rate limits, the body size limit and CORS to ``app``, and document them.

    Middleware order, outermost first: CORS (so refusals carry CORS headers and preflights are
    answered), access control, body size limit, the app.
    """
    verifier = verifier or KeyVerifier()
    app.state.key_verifier = verifier
    app.add_middleware(RequestLimits, max_bytes=api.max_request_bytes)
    app.add_middleware(
        AccessControl,
        routes=lambda: app.router.routes,
        verifier=verifier,
        limiter=RateLimiter(api.rate_limit_per_s, api.rate_limit_burst),
        read_requires_key=api.read_requires_key,
    )
    origins = _cors_origins(api.cors_origins)
    if origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=origins,
            # Keys travel in headers, not cookies: no credentials, so no ambient authority.
            allow_credentials=False,
            allow_methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"],
            allow_headers=["Authorization", "X-API-Key", "Content-Type"],
            expose_headers=["Retry-After"],
            max_age=600,
        )
    _document_security(app, api.read_requires_key)


def _document_security(app: FastAPI, read_requires_key: bool) -> None:
    build = app.openapi

    def openapi() -> dict[str, Any]:
        schema = build()
        components = schema.setdefault("components", {})
        if "securitySchemes" in components:
            return schema
        components["securitySchemes"] = {
            _BEARER: {
                "type": "http",
                "scheme": "bearer",
                "bearerFormat": "cn_<key_id>_<secret>",
                "description": "API key as a bearer token",
            },
            _HEADER: {"type": "apiKey", "in": "header", "name": "X-API-Key", "description": "API key"},
        }
        for path, operations in schema.get("paths", {}).items():
            for method, operation in operations.items():
                if not isinstance(operation, dict) or "responses" not in operation:
                    continue
                _document_operation(operation, required_scope(method, path, read_requires_key))
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _document_operation(operation: dict[str, Any], needed: Scope | None) -> None:
    error = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}}
    responses = operation["responses"]
    responses.setdefault("429", {"description": "rate limit exceeded; see Retry-After", **error})
    if "requestBody" in operation:
        responses.setdefault("413", {"description": "request body too large", **error})
    if needed is None:
        return
    operation["security"] = [{_BEARER: []}, {_HEADER: []}]
    operation["x-required-scope"] = needed.value
    responses.setdefault("401", {"description": "no API key, or an unknown or revoked one", **error})
    responses.setdefault("403", {"description": f"the API key lacks scope '{needed.value}'", **error})
