"""Entity tags for polled views: a client that sends If-None-Match gets 304 when nothing changed.

RFC 9110 section 8.8.3 (ETag) and 13.1.2 (If-None-Match, weak comparison for GET).
"""

from __future__ import annotations

import hashlib

from fastapi import Request, Response

# Dashboards poll: a cache may keep the body but must ask again every time (RFC 9111 section 5.2.2.4).
CACHE_CONTROL = "no-cache"


def make_etag(*parts: object, weak: bool = False) -> str:
    """An entity tag (quoted) from the parts that identify one state of a representation.

    Weak (``W/``) when equal tags promise equivalent content rather than identical bytes
    (RFC 9110 section 8.8.1), e.g. a view whose evaluation time moves while its figures do not.
    """
    digest = hashlib.blake2b("|".join(str(p) for p in parts).encode(), digest_size=12).hexdigest()
    return f'W/"{digest}"' if weak else f'"{digest}"'


def matches(request: Request, etag: str) -> bool:
    """Whether the request's If-None-Match names ``etag`` (or is ``*``)."""
    header = request.headers.get("if-none-match")
    if not header:
        return False
    for candidate in header.split(","):
        tag = candidate.strip()
        if tag == "*":
            return True
        # Weak comparison: W/"x" matches "x".
        if tag.removeprefix("W/") == etag.removeprefix("W/"):
            return True
    return False


def not_modified(etag: str) -> Response:
    """The 304 answer: no body, the same validator."""
    return Response(status_code=304, headers=validator_headers(etag))


def answer(request: Request, body: bytes, etag: str) -> Response:
    """The JSON ``body`` with its validator, or 304 when the request's If-None-Match names ``etag``."""
    if matches(request, etag):
        return not_modified(etag)
    return Response(body, media_type="application/json", headers=validator_headers(etag))


def validator_headers(etag: str) -> dict[str, str]:
    """Headers of an answer carrying ``etag``."""
    return {"ETag": etag, "Cache-Control": CACHE_CONTROL}


# OpenAPI entry for a polled view answering If-None-Match.
NOT_MODIFIED: dict[int | str, dict[str, object]] = {
    304: {"description": "not modified: the ETag sent in If-None-Match is still current (no body)"},
}
