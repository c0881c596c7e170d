"""Opaque page cursors: url-safe base64 of ``<type>:<value>``, so a cursor of one listing is
refused by another instead of silently meaning something else."""

from __future__ import annotations

import base64
import binascii
from datetime import datetime

from api.errors import BadRequest
from api.timeparse import from_epoch_us, to_epoch_us

_INVALID = "cursor is not valid: pass next_cursor from the previous page"


def encode_cursor(cursor_type: str, value: str) -> str:
    raw = f"{cursor_type}:{value}".encode()
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode_cursor(token: str, cursor_type: str) -> str:
    """The value inside ``token``; BadRequest when it is not a cursor of ``cursor_type``."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise BadRequest(_INVALID, code="bad_cursor") from None
    prefix, sep, value = raw.partition(":")
    if not sep or prefix != cursor_type or not value:
        raise BadRequest(_INVALID, code="bad_cursor")
    return value


def encode_time_key(cursor_type: str, instant: datetime, key: object) -> str:
    """Keyset cursor for listings ordered by (time DESC, key DESC): the last item's both."""
    return encode_cursor(cursor_type, f"{to_epoch_us(instant)}|{key}")


def decode_time_key(token: str, cursor_type: str) -> tuple[datetime, str]:
    """(time, key) of a cursor made by :func:`encode_time_key`; BadRequest when malformed."""
    micros, sep, key = decode_cursor(token, cursor_type).partition("|")
    try:
        instant = from_epoch_us(int(micros))
    except (ValueError, OverflowError):
        raise BadRequest(_INVALID, code="bad_cursor") from None
    if not sep or not key:
        raise BadRequest(_INVALID, code="bad_cursor")
    return instant, key
