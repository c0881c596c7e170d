"""Device registry queries: listing with keyset pagination, detail, latest reading."""

from __future__ import annotations

from typing import Any

from psycopg import sql
from psycopg.rows import dict_row

from api.db import AsyncConn
from api.models import Device, DeviceDetail, LatestReading, MetricValue
from cityneuron.catalog import KIND_BY_NAME

_DEVICE_COLUMNS = sql.SQL(
    "d.device_id, d.kind, d.district, d.lat, d.lon, d.installed, d.online, d.status_changed_at,"
    " lr.received_at AS last_seen"
)


async def list_devices(
    conn: AsyncConn, *, kind: str | None, district: str | None, after: str | None, limit: int
) -> tuple[list[Device], bool]:
    """Up to ``limit`` devices ordered by id after ``after``, and whether more follow."""
    conditions: list[sql.Composable] = []
    params: list[Any] = []
    if kind is not None:
        conditions.append(sql.SQL("d.kind = %s"))
        params.append(kind)
    if district is not None:
        conditions.append(sql.SQL("d.district = %s"))
        params.append(district)
    if after is not None:
        conditions.append(sql.SQL("d.device_id > %s"))
        params.append(after)
    where = sql.SQL(" WHERE ") + sql.SQL(" AND ").join(conditions) if conditions else sql.SQL("")
    query = sql.SQL(
        "SELECT {columns} FROM devices d LEFT JOIN latest_reading lr ON lr.device_id = d.device_id"
        "{where} ORDER BY d.device_id LIMIT %s"
    ).format(columns=_DEVICE_COLUMNS, where=where)
    # One extra row tells whether there is a next page without a count.
    params.append(limit + 1)
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(query, params)
        rows = await cur.fetchall()
    return [Device.model_validate(r) for r in rows[:limit]], len(rows) > limit


async def get_device(conn: AsyncConn, device_id: str) -> DeviceDetail | None:
    query = sql.SQL(
        "SELECT {columns}, d.registered_at, d.auto_registered, d.meta"
        " FROM devices d LEFT JOIN latest_reading lr ON lr.device_id = d.device_id"
        " WHERE d.device_id = %s"
    ).format(columns=_DEVICE_COLUMNS)
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(query, (device_id,))
        row = await cur.fetchone()
    return DeviceDetail.model_validate(row) if row is not None else None


async def device_kind(conn: AsyncConn, device_id: str) -> str | None:
    cur = await conn.execute("SELECT kind FROM devices WHERE device_id = %s", (device_id,))
    row = await cur.fetchone()
    return str(row[0]) if row is not None else None


async def latest_reading(conn: AsyncConn, device_id: str) -> LatestReading | None:
    """The device's latest reading with catalog units, metrics in catalog order."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "SELECT device_id, kind, time, received_at, seq, metrics FROM latest_reading WHERE device_id = %s",
            (device_id,),
        )
        row = await cur.fetchone()
    if row is None:
        return None
    raw: dict[str, Any] = row["metrics"] or {}
    kind = KIND_BY_NAME.get(row["kind"])
    metrics: dict[str, MetricValue] = {}
    if kind is not None:
        for metric in kind.metrics:
            if metric.name in raw:
                metrics[metric.name] = MetricValue(value=raw[metric.name], unit=metric.unit)
    for name, value in raw.items():
        # A metric since removed from the catalog is still shown, without a unit.
        metrics.setdefault(name, MetricValue(value=value, unit=None))
    return LatestReading(
        device_id=row["device_id"],
        kind=row["kind"],
        time=row["time"],
        received_at=row["received_at"],
        seq=row["seq"],
        metrics=metrics,
    )
