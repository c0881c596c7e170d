"""Entity tags for polled views: a client that sends If-None-Match gets 304 when nothing changed.

RFC 9110 section 8.8.3 (ETag) and 13.1.2 (If-None-Match, weak comparison for GET).
"""

from __future__ import annotations

import hashlib

from fastapi import Request, Response

# Dashboards poll: a cache may keep the body but must ask again every time (RFC 9111 section 5.2.2.4).
CACHE_CONTROL = "no-cache"


def make_etag(*parts: object) -> str:
    """A strong entity tag (quoted) from the parts that identify one state of a representation."""
    digest = hashlib.blake2b("|".join(str(p) for p in parts).encode(), digest_size=12).hexdigest()
    return f'"{digest}"'


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
        if tag.removeprefix("W/") == etag:
            return True
    return False


def not_modified(etag: str) -> Response:
    """The 304 answer: no body, the same validator."""
    return Response(status_code=304, headers={"ETag": etag, "Cache-Control": CACHE_CONTROL})


def tag_response(response: Response, etag: str) -> None:
    response.headers["ETag"] = etag
    response.headers["Cache-Control"] = CACHE_CONTROL


# OpenAPI entry for a polled view answering If-None-Match.
NOT_MODIFIED: dict[int | str, dict[str, object]] = {
    304: {"description": "not modified: the ETag sent in If-None-Match is still current (no body)"},
}
