"""Readings: the raw history of one device (paged by time) and the latest reading of devices."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from psycopg import sql

from api.db import AsyncConn
from api.models import Reading
from cityneuron.catalog import KIND_BY_NAME, Kind, Metric

_LATEST_COLUMNS = sql.SQL("lr.device_id, lr.kind, lr.time, lr.received_at, lr.seq, lr.metrics")


async def device_readings(
    conn: AsyncConn,
    *,
    kind: Kind,
    device_id: str,
    metrics: tuple[Metric, ...],
    start: datetime,
    end: datetime,
    after: datetime | None,
    limit: int,
) -> tuple[list[Reading], bool]:
    """Readings in [start, end) after ``after``, oldest first, and whether more follow.

    With one metric asked for, readings that did not carry it are skipped.
    """
    columns = [sql.Identifier(m.name) for m in metrics]
    conditions: list[sql.Composable] = [
        sql.SQL("device_id = %s"),
        sql.SQL("time >= %s"),
        sql.SQL("time < %s"),
    ]
    params: list[Any] = [device_id, start, end]
    if after is not None:
        # (device_id, time) is unique, so time alone is a sound keyset.
        conditions.append(sql.SQL("time > %s"))
        params.append(after)
    if len(metrics) == 1:
        conditions.append(sql.SQL("{} IS NOT NULL").format(columns[0]))
    query = sql.SQL(
        "SELECT time, received_at, seq, {columns} FROM {table} WHERE {where} ORDER BY time LIMIT %s"
    ).format(
        columns=sql.SQL(", ").join(columns),
        table=sql.Identifier(kind.table),
        where=sql.SQL(" AND ").join(conditions),
    )
    params.append(limit + 1)
    cur = await conn.execute(query, params)
    rows = await cur.fetchall()
    items = [
        Reading(
            time=row[0],
            received_at=row[1],
            seq=row[2],
            values={m.name: v for m, v in zip(metrics, row[3:], strict=True) if v is not None},
        )
        for row in rows[:limit]
    ]
    return items, len(rows) > limit


@dataclass(frozen=True, slots=True)
class LatestState:
    """A fingerprint of the latest readings of a filter, cheap to compute (no jsonb is read)."""

    devices: int
    received_sum_us: Decimal
    seq_sum: Decimal
    received_max: datetime | None
    db_now: datetime

    def fingerprint(self) -> str:
        # Any upsert of latest_reading changes received_at (and usually seq): the sums move.
        last = self.received_max.isoformat() if self.received_max else "-"
        return f"{self.devices}:{self.received_sum_us}:{self.seq_sum}:{last}"


def _latest_from(kind: str, district: str | None) -> tuple[sql.Composable, dict[str, Any]]:
    params: dict[str, Any] = {"kind": kind}
    join: sql.Composable = sql.SQL("")
    if district is not None:
        join = sql.SQL(" JOIN devices d ON d.device_id = lr.device_id AND d.district = %(district)s")
        params["district"] = district
    return sql.SQL("latest_reading lr{join} WHERE lr.kind = %(kind)s").format(join=join), params


async def latest_state(conn: AsyncConn, *, kind: str, district: str | None) -> LatestState:
    """Count and received_at/seq sums of the latest readings of ``kind`` (in ``district``)."""
    source, params = _latest_from(kind, district)
    query = sql.SQL(
        "SELECT count(*), coalesce(sum((extract(epoch FROM lr.received_at) * 1000000)::bigint), 0),"
        " coalesce(sum(lr.seq), 0), max(lr.received_at), statement_timestamp() FROM {source}"
    ).format(source=source)
    cur = await conn.execute(query, params)
    row = await cur.fetchone()
    assert row is not None
    return LatestState(int(row[0]), Decimal(row[1]), Decimal(row[2]), row[3], row[4])


async def latest_readings(
    conn: AsyncConn, *, kind: str, district: str | None, since: datetime | None
) -> list[dict[str, Any]]:
    """Latest reading of every device of ``kind`` (in ``district``) received after ``since``,
    each as the JSON object of a ``LatestReading``."""
    source, params = _latest_from(kind, district)
    since_filter: sql.Composable = sql.SQL("")
    if since is not None:
        since_filter = sql.SQL(" AND lr.received_at > %(since)s")
        params["since"] = since
    query = sql.SQL("SELECT {columns} FROM {source}{since} ORDER BY lr.device_id").format(
        columns=_LATEST_COLUMNS, source=source, since=since_filter
    )
    cur = await conn.execute(query, params)
    return [_latest(row) for row in await cur.fetchall()]


async def latest_reading(conn: AsyncConn, device_id: str) -> dict[str, Any] | None:
    """The device's latest reading as the JSON object of a ``LatestReading``: catalog units,
    metrics in catalog order."""
    cur = await conn.execute(_LATEST_OF_DEVICE, (device_id,))
    row = await cur.fetchone()
    return _latest(row) if row is not None else None


_LATEST_OF_DEVICE = sql.SQL("SELECT {columns} FROM latest_reading lr WHERE lr.device_id = %s").format(
    columns=_LATEST_COLUMNS
)
# (metric, unit) of each kind in catalog order.
_UNITS: dict[str, tuple[tuple[str, str], ...]] = {
    kind.name: tuple((m.name, m.unit) for m in kind.metrics) for kind in KIND_BY_NAME.values()
}


def _latest(row: tuple[Any, ...]) -> dict[str, Any]:
    # Plain dicts, not models: this runs for every device of a polled view (api/fastjson.py).
    device_id, kind, time, received_at, seq, raw = row
    raw = raw or {}
    metrics = {name: {"value": raw[name], "unit": unit} for name, unit in _UNITS.get(kind, ()) if name in raw}
    if len(metrics) != len(raw):
        for name, value in raw.items():
            # A metric since removed from the catalog is still shown, without a unit.
            metrics.setdefault(name, {"value": value, "unit": None})
    return {
        "device_id": device_id,
        "kind": kind,
        "time": time,
        "received_at": received_at,
        "seq": seq,
        "metrics": metrics,
    }
