"""Times and bucket widths in query parameters.

Instants are RFC 3339 with a time zone or epoch milliseconds; bucket widths are ``<n>s|m|h|d``.
Both raise ``ValueError`` with a message fit for the client.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# date_bin origin for every bucketed query: a UTC midnight, so hour- and day-wide buckets
# line up with TimescaleDB's time_bucket (and its continuous aggregates).
BUCKET_ORIGIN = datetime(2000, 1, 1, tzinfo=UTC)
MAX_BUCKET = timedelta(days=3660)

_EPOCH_MS = re.compile(r"^-?\d{1,15}$")
_BUCKET = re.compile(r"^(\d{1,9})(s|m|h|d)$")
_UNIT = {
    "s": timedelta(seconds=1),
    "m": timedelta(minutes=1),
    "h": timedelta(hours=1),
    "d": timedelta(days=1),
}
# An unencoded '+' in a query string arrives as a space: "…T08:00:00 08:00" meant "+08:00".
_SPACE_OFFSET = re.compile(r"^(.*\d) (\d{2}:?\d{2})$")


def parse_instant(value: str) -> datetime:
    """An aware UTC datetime from RFC 3339 (with offset or Z) or epoch milliseconds."""
    text = value.strip()
    if _EPOCH_MS.match(text):
        try:
            return EPOCH + timedelta(milliseconds=int(text))
        except OverflowError:
            raise ValueError(f"{value!r} is out of range") from None
    text = _SPACE_OFFSET.sub(r"\1+\2", text)
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"{value!r} is neither RFC 3339 (2026-01-01T08:00:00+08:00) nor epoch milliseconds"
        ) from None
    if parsed.tzinfo is None:
        raise ValueError(f"{value!r} has no time zone: add Z or an offset such as +08:00")
    return parsed.astimezone(UTC)


def parse_bucket(value: str) -> timedelta:
    """A positive bucket width from ``<n>s``, ``<n>m``, ``<n>h`` or ``<n>d`` (e.g. 15m, 1h, 1d)."""
    match = _BUCKET.match(value.strip())
    if not match:
        raise ValueError(f"bucket {value!r} must look like 30s, 5m, 15m, 1h or 1d")
    count, unit = int(match.group(1)), match.group(2)
    if count == 0:
        raise ValueError("bucket must be longer than zero")
    if count > MAX_BUCKET // _UNIT[unit]:
        raise ValueError(f"bucket {value!r} is longer than {MAX_BUCKET.days} days")
    return count * _UNIT[unit]


def is_aligned(instant: datetime, width: timedelta) -> bool:
    """Whether ``instant`` falls on a bucket boundary of ``width`` (counted from BUCKET_ORIGIN)."""
    return (instant - BUCKET_ORIGIN) % width == timedelta(0)


def to_epoch_us(instant: datetime) -> int:
    return (instant - EPOCH) // timedelta(microseconds=1)


def from_epoch_us(value: int) -> datetime:
    return EPOCH + timedelta(microseconds=value)
