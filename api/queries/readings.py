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


_NO_JOIN = sql.SQL("")


def _latest_from(
    kind: str, district: str | None, history: sql.Composable = _NO_JOIN
) -> tuple[sql.Composable, dict[str, Any]]:
    params: dict[str, Any] = {"kind": kind}
    join: sql.Composable = sql.SQL("")
    if district is not None:
        join = sql.SQL(" JOIN devices d ON d.device_id = lr.device_id AND d.district = %(district)s")
        params["district"] = district
    source = sql.SQL("latest_reading lr{join}{history} WHERE lr.kind = %(kind)s")
    return source.format(join=join, history=history), params


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
    source, params = _latest_from(kind, district, _HISTORY_JOIN[kind])
    since_filter: sql.Composable = sql.SQL("")
    if since is not None:
        since_filter = sql.SQL(" AND lr.received_at > %(since)s")
        params["since"] = since
    query = sql.SQL("{select}, {own} FROM {source}{since} ORDER BY lr.device_id").format(
        select=_LATEST_SELECT, own=_OWN_COLUMNS[kind], source=source, since=since_filter
    )
    cur = await conn.execute(query, params)
    return [_latest(row) for row in await cur.fetchall()]


async def latest_reading(conn: AsyncConn, device_id: str) -> dict[str, Any] | None:
    """The device's latest reading as the JSON object of a ``LatestReading``: catalog units,
    metrics in catalog order, each with the time of the reading that carried it."""
    # The query depends on the kind (its readings table): one round trip when the kind is known
    # from an earlier call, two (the kind first) otherwise.
    known = _KINDS_SEEN.get(device_id)
    if known is not None:
        found = await _latest_of_kind(conn, device_id, known)
        if found is not None:
            return found
    cur = await conn.execute("SELECT kind FROM latest_reading WHERE device_id = %s", (device_id,))
    row = await cur.fetchone()
    if row is None:
        return None
    kind = str(row[0])
    if len(_KINDS_SEEN) >= _KINDS_SEEN_MAX:
        _KINDS_SEEN.clear()
    _KINDS_SEEN[device_id] = kind
    return await _latest_of_kind(conn, device_id, kind)


async def _latest_of_kind(conn: AsyncConn, device_id: str, kind: str) -> dict[str, Any] | None:
    if kind in _OWN_COLUMNS:
        query = sql.SQL(
            "{select}, {own} FROM latest_reading lr{history} WHERE lr.device_id = %s AND lr.kind = %s"
        ).format(select=_LATEST_SELECT, own=_OWN_COLUMNS[kind], history=_HISTORY_JOIN[kind])
    else:
        # A kind the catalog no longer has: no readings table to date the metrics from.
        query = sql.SQL("{select} FROM latest_reading lr WHERE lr.device_id = %s AND lr.kind = %s").format(
            select=_LATEST_SELECT
        )
    cur = await conn.execute(query, (device_id, kind))
    found = await cur.fetchone()
    return _latest(found) if found is not None else None


# device id -> kind, for latest_reading; cleared when full (a device's kind does not change, and a
# wrong entry only costs the lookup it would have cost anyway).
_KINDS_SEEN: dict[str, str] = {}
_KINDS_SEEN_MAX = 100_000
_LATEST_SELECT = sql.SQL("SELECT lr.device_id, lr.kind, lr.time, lr.received_at, lr.seq, lr.metrics")


def _own_columns(kind: Kind) -> sql.Composable:
    """Per catalog metric: the time and value of the newest stored reading that carried it.

    ``latest_reading.metrics`` keeps the newest value of each metric (a reading carrying only
    some metrics leaves the others as they were), under the time of the newest reading. Each
    metric's own time comes from the history: the reading at ``lr.time`` when it carried the
    metric (one primary-key row, the usual case), else the newest earlier reading that did (an
    index scan back from ``lr.time``, run only for such metrics).
    """
    columns: list[sql.Composable] = []
    for metric in kind.metrics:
        name = sql.Identifier(metric.name)
        earlier = sql.SQL(
            "(SELECT h.{what} FROM {table} h WHERE h.device_id = lr.device_id AND h.time < lr.time"
            " AND h.{name} IS NOT NULL ORDER BY h.time DESC LIMIT 1)"
        )
        for what, now in ((sql.SQL("time"), sql.SQL("lr.time")), (name, sql.SQL("r.{}").format(name))):
            columns.append(
                sql.SQL(
                    "CASE WHEN NOT lr.metrics ? {key} THEN NULL WHEN r.{name} IS NOT NULL THEN {now}"
                    " ELSE {earlier} END"
                ).format(
                    key=sql.Literal(metric.name),
                    name=name,
                    now=now,
                    earlier=earlier.format(what=what, table=sql.Identifier(kind.table), name=name),
                )
            )
    return sql.SQL(", ").join(columns)


_OWN_COLUMNS: dict[str, sql.Composable] = {kind.name: _own_columns(kind) for kind in KIND_BY_NAME.values()}
_HISTORY_JOIN: dict[str, sql.Composable] = {
    kind.name: sql.SQL(" LEFT JOIN {table} r ON r.device_id = lr.device_id AND r.time = lr.time").format(
        table=sql.Identifier(kind.table)
    )
    for kind in KIND_BY_NAME.values()
}
# (metric, unit) of each kind in catalog order.
_UNITS: dict[str, tuple[tuple[str, str], ...]] = {
    kind.name: tuple((m.name, m.unit) for m in kind.metrics) for kind in KIND_BY_NAME.values()
}


def _latest(row: tuple[Any, ...]) -> dict[str, Any]:
    # Plain dicts, not models: this runs for every device of a polled view (api/fastjson.py).
    device_id, kind, time, received_at, seq, raw = row[:6]
    own = row[6:]
    raw = raw or {}
    metrics: dict[str, dict[str, Any]] = {}
    for i, (name, unit) in enumerate(_UNITS.get(kind, ())):
        if name not in raw:
            continue
        if own:
            at, value = own[2 * i], own[2 * i + 1]
            # No stored reading carries it any more (retention dropped it): the kept value, undated.
            metrics[name] = {"value": raw[name] if at is None else value, "unit": unit, "time": at}
        else:
            metrics[name] = {"value": raw[name], "unit": unit, "time": None}
    if len(metrics) != len(raw):
        for name, value in raw.items():
            # A metric since removed from the catalog is still shown, without a unit or a time.
            metrics.setdefault(name, {"value": value, "unit": None, "time": None})
    return {
        "device_id": device_id,
        "kind": kind,
        "time": time,
        "received_at": received_at,
        "seq": seq,
        "metrics": metrics,
    }
