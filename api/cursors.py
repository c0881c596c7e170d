"""Opaque page cursors: url-safe base64 of ``<type>:<value>``, so a cursor of one listing is
refused by another instead of silently meaning something else."""

from __future__ import annotations

import base64
import binascii

from api.errors import BadRequest


def encode_cursor(cursor_type: str, value: str) -> str:
    raw = f"{cursor_type}:{value}".encode()
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode_cursor(token: str, cursor_type: str) -> str:
    """The value inside ``token``; BadRequest when it is not a cursor of ``cursor_type``."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise BadRequest(
            "cursor is not valid: pass next_cursor from the previous page", code="bad_cursor"
        ) from None
    prefix, sep, value = raw.partition(":")
    if not sep or prefix != cursor_type or not value:
        raise BadRequest("cursor is not valid: pass next_cursor from the previous page", code="bad_cursor")
    return value
