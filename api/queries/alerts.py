"""The ``alerts`` table the ingest fills: filtered listing with keyset pagination, counts."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg import sql
from psycopg.rows import dict_row

from api.db import AsyncConn
from api.models_ops import AlertOut, AlertState

_COLUMNS = sql.SQL(
    "id, device_id, kind, district, rule, severity, opened_at, closed_at, value, peak_value,"
    " close_value, detail, CASE WHEN closed_at IS NULL THEN 'active' ELSE 'closed' END AS state"
)


@dataclass(frozen=True, slots=True)
class AlertFilter:
    state: AlertState = "all"
    districts: tuple[str, ...] = ()
    kinds: tuple[str, ...] = ()
    devices: tuple[str, ...] = ()
    rules: tuple[str, ...] = ()
    severities: tuple[str, ...] = ()
    # Alerts open at some time in [start, end): opened before end, not closed before start.
    start: datetime | None = None
    end: datetime | None = None


def _conditions(f: AlertFilter, params: list[Any]) -> list[sql.Composable]:
    conditions: list[sql.Composable] = []
    if f.state == "active":
        conditions.append(sql.SQL("closed_at IS NULL"))
    elif f.state == "closed":
        conditions.append(sql.SQL("closed_at IS NOT NULL"))
    for column, values in (
        ("district", f.districts),
        ("kind", f.kinds),
        ("device_id", f.devices),
        ("rule", f.rules),
        ("severity", f.severities),
    ):
        if values:
            conditions.append(sql.SQL("{} = ANY(%s)").format(sql.Identifier(column)))
            params.append(list(values))
    if f.end is not None:
        conditions.append(sql.SQL("opened_at < %s"))
        params.append(f.end)
    if f.start is not None:
        conditions.append(sql.SQL("(closed_at IS NULL OR closed_at >= %s)"))
        params.append(f.start)
    return conditions


async def list_alerts(
    conn: AsyncConn, f: AlertFilter, *, before: tuple[datetime, int] | None, limit: int
) -> tuple[list[AlertOut], bool]:
    """Alerts newest first (by opened_at, id) after the keyset ``before``; and whether more follow."""
    params: list[Any] = []
    conditions = _conditions(f, params)
    if before is not None:
        conditions.append(sql.SQL("(opened_at, id) < (%s, %s)"))
        params.extend(before)
    where = sql.SQL(" WHERE ") + sql.SQL(" AND ").join(conditions) if conditions else sql.SQL("")
    params.append(limit + 1)
    query = sql.SQL("SELECT {columns} FROM alerts{where} ORDER BY opened_at DESC, id DESC LIMIT %s").format(
        columns=_COLUMNS, where=where
    )
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(query, params)
        rows = await cur.fetchall()
    return [AlertOut.model_validate(r) for r in rows[:limit]], len(rows) > limit


async def get_alert(conn: AsyncConn, alert_id: int) -> AlertOut | None:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(sql.SQL("SELECT {} FROM alerts WHERE id = %s").format(_COLUMNS), (alert_id,))
        row = await cur.fetchone()
    return AlertOut.model_validate(row) if row is not None else None


async def active_counts(conn: AsyncConn, district: str | None = None) -> dict[str, dict[str, int]]:
    """Open alerts per district and severity: ``{district: {severity: n}}``."""
    params: list[Any] = []
    where = sql.SQL("")
    if district is not None:
        where = sql.SQL(" AND district = %s")
        params.append(district)
    cur = await conn.execute(
        sql.SQL(
            "SELECT district, severity, count(*) FROM alerts WHERE closed_at IS NULL{}"
            " GROUP BY district, severity"
        ).format(where),
        params,
    )
    counts: dict[str, dict[str, int]] = {}
    for dist, severity, n in await cur.fetchall():
        counts.setdefault(dist, {})[severity] = int(n)
    return counts
