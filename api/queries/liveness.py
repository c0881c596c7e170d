"""The one definition of a device's state: online, offline, silent or unknown.

- ``offline``: the device said so (``online`` is false: its status message or last will);
- ``unknown``: nothing was ever received from it (``last_seen_at`` is null);
- ``silent``: it claims to be up but nothing arrived for ``silent_after_intervals`` times its
  kind's catalog reporting interval (a dead radio or a stuck gateway sends no last will);
- ``online``: otherwise.

:func:`status_sql` is that rule as a SQL expression over ``device_activity <alias>`` (each device's
``kind``, ``online`` and ``last_seen_at``: cityneuron.device_activity; thresholds from the catalog
as bound parameters) for any query; :func:`device_status` is the same rule in Python.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, get_args

from psycopg import sql

from cityneuron.catalog import KIND_BY_NAME, KINDS, Kind

DeviceStatus = Literal["online", "offline", "silent", "unknown"]
DEVICE_STATUSES: tuple[DeviceStatus, ...] = get_args(DeviceStatus)

# Prefix of the named parameters status_sql binds, unlikely to clash with a caller's own.
_PARAM_PREFIX = "liveness_"


@dataclass(frozen=True, slots=True)
class SqlFragment:
    """A composable SQL expression and the parameters it binds.

    ``sql`` uses named placeholders (``%(name)s``) when built with ``named=True`` (merge ``params``,
    a dict, into the query's own), positional ones otherwise (``params`` is a list, in order).
    """

    sql: sql.Composable
    params: dict[str, Any] | list[Any]

    @property
    def named_params(self) -> dict[str, Any]:
        """``params`` of a fragment built with ``named=True``."""
        if not isinstance(self.params, dict):
            raise TypeError("fragment was built with positional placeholders")
        return self.params

    @property
    def positional_params(self) -> list[Any]:
        """``params`` of a fragment built with ``named=False``."""
        if not isinstance(self.params, list):
            raise TypeError("fragment was built with named placeholders")
        return self.params


def silent_after(kind: Kind, silent_after_intervals: float) -> timedelta:
    """How long a device of ``kind`` may stay quiet before it counts as silent."""
    return timedelta(seconds=kind.interval_s * silent_after_intervals)


def device_status(
    *,
    online: bool | None,
    last_seen_at: datetime | None,
    kind: str,
    now: datetime,
    silent_after_intervals: float,
) -> DeviceStatus:
    """The state of one device from its registry row (the Python twin of :func:`status_sql`)."""
    if online is False:
        return "offline"
    if last_seen_at is None:
        return "unknown"
    catalog = KIND_BY_NAME.get(kind)
    if catalog is not None and last_seen_at < now - silent_after(catalog, silent_after_intervals):
        return "silent"
    return "online"


def status_sql(
    silent_after_intervals: float,
    *,
    alias: str = "a",
    as_of: datetime | None = None,
    named: bool = True,
) -> SqlFragment:
    """``CASE ... END`` giving the status of each row of ``device_activity <alias>``.

    ``as_of`` fixes "now" (tests, consistent snapshots); by default the transaction's ``now()``.
    A kind missing from the catalog has no interval, so such a device is never silent.
    """
    params: dict[str, Any] = {}
    order: list[Any] = []

    def bind(name: str, value: Any) -> sql.Composable:
        params[name] = value
        order.append(value)
        return sql.Placeholder(_PARAM_PREFIX + name) if named else sql.Placeholder()

    col = _columns(alias)
    # Positional placeholders are bound in creation order: create them in the order they appear.
    now = sql.SQL("{}::timestamptz").format(bind("now", as_of)) if as_of is not None else sql.SQL("now()")
    whens = sql.SQL(" ").join(
        sql.SQL("WHEN {} THEN {}").format(
            bind(f"kind_{i}", k.name),
            bind(f"quiet_s_{i}", silent_after(k, silent_after_intervals).total_seconds()),
        )
        for i, k in enumerate(KINDS)
    )
    expression = sql.SQL(
        "(CASE WHEN {online} IS FALSE THEN 'offline'"
        " WHEN {seen} IS NULL THEN 'unknown'"
        " WHEN {seen} < {now} - make_interval(secs => CASE {kind} {whens} END) THEN 'silent'"
        " ELSE 'online' END)"
    ).format(online=col["online"], seen=col["last_seen_at"], now=now, kind=col["kind"], whens=whens)
    if named:
        return SqlFragment(expression, {_PARAM_PREFIX + k: v for k, v in params.items()})
    return SqlFragment(expression, order)


def _columns(alias: str) -> Mapping[str, sql.Composable]:
    return {
        name: sql.SQL("{}.{}").format(sql.Identifier(alias), sql.Identifier(name))
        for name in ("online", "last_seen_at", "kind")
    }
