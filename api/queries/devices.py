"""Device registry queries: listing with filters and keyset pagination, detail with quality counters."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from psycopg import sql
from psycopg.rows import dict_row

from api.db import AsyncConn
from api.models import DataQuality, Device, DeviceDetail, Status
from api.queries.liveness import silent_after, status_sql
from cityneuron.catalog import KIND_BY_NAME

_DEVICE_COLUMNS = sql.SQL(
    "d.device_id, d.kind, d.district, d.lat, d.lon, d.installed, d.online, d.status_changed_at,"
    " a.last_seen_at AS last_seen"
)
# Every device has its activity row (cityneuron.device_activity): what its messages change.
_FROM = sql.SQL("devices d JOIN device_activity a ON a.device_id = d.device_id")
_QUALITY_COLUMNS = ("messages", "seq_max", "seq_gaps", "seq_duplicates", "seq_reordered")


@dataclass(frozen=True, slots=True)
class BoundingBox:
    """WGS 84 box, degrees; min_lon <= lon <= max_lon and min_lat <= lat <= max_lat."""

    min_lon: float
    min_lat: float
    max_lon: float
    max_lat: float


@dataclass(frozen=True, slots=True)
class DeviceFilter:
    kind: str | None = None
    district: str | None = None
    status: Status | None = None
    bbox: BoundingBox | None = None


async def list_devices(
    conn: AsyncConn,
    *,
    where: DeviceFilter,
    silent_after_intervals: float,
    after: str | None,
    limit: int,
) -> tuple[list[Device], bool]:
    """Up to ``limit`` devices matching ``where``, ordered by id after ``after``, and whether more follow."""
    status = status_sql(silent_after_intervals)
    params: dict[str, Any] = dict(status.named_params)
    conditions: list[sql.Composable] = []
    if where.kind is not None:
        conditions.append(sql.SQL("d.kind = %(kind)s"))
        params["kind"] = where.kind
    if where.district is not None:
        conditions.append(sql.SQL("d.district = %(district)s"))
        params["district"] = where.district
    if where.status is not None:
        conditions.append(sql.SQL("{} = %(status)s").format(status.sql))
        params["status"] = where.status
    if where.bbox is not None:
        conditions.append(
            sql.SQL("d.lon BETWEEN %(min_lon)s AND %(max_lon)s AND d.lat BETWEEN %(min_lat)s AND %(max_lat)s")
        )
        params.update(
            min_lon=where.bbox.min_lon,
            max_lon=where.bbox.max_lon,
            min_lat=where.bbox.min_lat,
            max_lat=where.bbox.max_lat,
        )
    if after is not None:
        conditions.append(sql.SQL("d.device_id > %(after)s"))
        params["after"] = after
    filters = sql.SQL(" WHERE ") + sql.SQL(" AND ").join(conditions) if conditions else sql.SQL("")
    query = sql.SQL(
        "SELECT {columns}, {status} AS status FROM {source}{where} ORDER BY d.device_id LIMIT %(limit)s"
    ).format(columns=_DEVICE_COLUMNS, status=status.sql, source=_FROM, where=filters)
    # One extra row tells whether there is a next page without a count.
    params["limit"] = limit + 1
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(query, params)
        rows = await cur.fetchall()
    return [Device.model_validate(r) for r in rows[:limit]], len(rows) > limit


async def get_device(
    conn: AsyncConn, device_id: str, *, silent_after_intervals: float
) -> DeviceDetail | None:
    """Registry row, status and data-quality counters of one device."""
    status = status_sql(silent_after_intervals)
    query = sql.SQL(
        "SELECT {columns}, {status} AS status, d.registered_at, d.auto_registered, d.meta, {quality}"
        " FROM {source} WHERE d.device_id = %(device_id)s"
    ).format(
        columns=_DEVICE_COLUMNS,
        status=status.sql,
        source=_FROM,
        quality=sql.SQL(", ").join(sql.SQL("a.{}").format(sql.Identifier(c)) for c in _QUALITY_COLUMNS),
    )
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(query, {**status.named_params, "device_id": device_id})
        row = await cur.fetchone()
    if row is None:
        return None
    kind = KIND_BY_NAME.get(row["kind"])
    row["quality"] = DataQuality.model_validate({c: row.pop(c) for c in _QUALITY_COLUMNS})
    row["silent_after_s"] = (
        silent_after(kind, silent_after_intervals).total_seconds() if kind is not None else None
    )
    return DeviceDetail.model_validate(row)


async def device_kind(conn: AsyncConn, device_id: str) -> str | None:
    cur = await conn.execute("SELECT kind FROM devices WHERE device_id = %s", (device_id,))
    row = await cur.fetchone()
    return str(row[0]) if row is not None else None
