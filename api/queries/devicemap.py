"""Map feeds computed in the database: device positions as columns, states that are not online,
and density bins.

PostgreSQL builds the position columns itself (json_agg over rows in id order): the API passes the
arrays through without turning 100 k rows into Python objects and back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from psycopg import sql

from api.db import AsyncConn
from api.queries.devices import BoundingBox
from api.queries.liveness import status_sql
from cityneuron.catalog import DISTRICTS, KINDS

# Positions are sent as integers in 1/POSITION_SCALE degrees: 1e-5 deg is about 1.1 m.
POSITION_SCALE = 100_000
KIND_NAMES = [k.name for k in KINDS]
DISTRICT_SLUGS = [d.slug for d in DISTRICTS]


@dataclass(frozen=True, slots=True)
class MapFilter:
    kind: str | None = None
    bbox: BoundingBox | None = None

    def conditions(self, params: dict[str, Any]) -> list[sql.Composable]:
        found: list[sql.Composable] = []
        if self.kind is not None:
            found.append(sql.SQL("d.kind = %(kind)s"))
            params["kind"] = self.kind
        if self.bbox is not None:
            found.append(
                sql.SQL(
                    "d.lon BETWEEN %(min_lon)s AND %(max_lon)s AND d.lat BETWEEN %(min_lat)s AND %(max_lat)s"
                )
            )
            params.update(
                min_lon=self.bbox.min_lon,
                max_lon=self.bbox.max_lon,
                min_lat=self.bbox.min_lat,
                max_lat=self.bbox.max_lat,
            )
        return found


def _where(conditions: list[sql.Composable]) -> sql.Composable:
    return sql.SQL(" WHERE ") + sql.SQL(" AND ").join(conditions) if conditions else sql.SQL("")


async def registry_tag(conn: AsyncConn) -> tuple[int, str]:
    """(devices, tag): the tag moves when a device is registered or moved (its position set or
    changed: the sum of the coordinates changes with it, bar a coincidence to the last bit)."""
    cur = await conn.execute("SELECT count(*), max(registered_at), count(lat), sum(lat + lon) FROM devices")
    row = await cur.fetchone()
    assert row is not None
    count = int(row[0])
    registered = row[1].timestamp() if row[1] is not None else 0
    return count, f"{count}-{registered:.6f}-{row[2]}-{float(row[3] or 0):.6f}"


@dataclass(frozen=True, slots=True)
class PositionColumns:
    count: int
    unplaced: int
    # JSON arrays as PostgreSQL wrote them.
    ids: str
    kinds: str
    districts: str
    lats: str
    lons: str


async def positions(conn: AsyncConn, where: MapFilter, limit: int) -> PositionColumns | None:
    """Columns of the devices matching ``where`` in id order; None when more than ``limit`` match."""
    params: dict[str, Any] = {"kinds": KIND_NAMES, "districts": DISTRICT_SLUGS, "limit": limit + 1}
    conditions = where.conditions(params)
    placed = _where([*conditions, sql.SQL("d.lat IS NOT NULL AND d.lon IS NOT NULL")])
    # Count first (stopping at limit + 1): a refusal must not cost building a city's worth of JSON.
    count_query = sql.SQL("SELECT count(*) FROM (SELECT 1 FROM devices d{placed} LIMIT %(limit)s) s").format(
        placed=placed
    )
    cur = await conn.execute(count_query, params)
    counted = await cur.fetchone()
    assert counted is not None
    if counted[0] > limit:
        return None
    query = sql.SQL(
        "SELECT count(*),"
        " coalesce(json_agg(device_id)::text, '[]'),"
        " coalesce(json_agg(coalesce(array_position(%(kinds)s::text[], kind), 0) - 1)::text, '[]'),"
        " coalesce(json_agg(coalesce(array_position(%(districts)s::text[], district), 0) - 1)::text, '[]'),"
        " coalesce(json_agg(round(lat * {scale})::int)::text, '[]'),"
        " coalesce(json_agg(round(lon * {scale})::int)::text, '[]')"
        " FROM (SELECT d.device_id, d.kind, d.district, d.lat, d.lon FROM devices d{placed}"
        "       ORDER BY d.device_id LIMIT %(limit)s) s"
    ).format(scale=sql.Literal(POSITION_SCALE), placed=placed)
    cur = await conn.execute(query, params)
    row = await cur.fetchone()
    assert row is not None
    if row[0] > limit:
        return None
    unplaced_query = sql.SQL("SELECT count(*) FROM devices d{}").format(
        _where([*conditions, sql.SQL("(d.lat IS NULL OR d.lon IS NULL)")])
    )
    cur = await conn.execute(unplaced_query, params)
    unplaced = await cur.fetchone()
    assert unplaced is not None
    return PositionColumns(int(row[0]), int(unplaced[0]), row[1], row[2], row[3], row[4], row[5])


# The registry with each device's state (cityneuron.device_activity; every device has its row).
_WITH_ACTIVITY = sql.SQL("devices d JOIN device_activity a ON a.device_id = d.device_id")


async def not_online(conn: AsyncConn, silent_after_intervals: float) -> dict[str, str]:
    """Every device whose state is not ``online``, with that state."""
    found, _ = await not_online_in(conn, MapFilter(), silent_after_intervals)
    return found


async def not_online_in(
    conn: AsyncConn, where: MapFilter, silent_after_intervals: float
) -> tuple[dict[str, str], int]:
    """The devices matching ``where`` whose state is not ``online`` (with it), and how many match."""
    status = status_sql(silent_after_intervals)
    params: dict[str, Any] = dict(status.named_params)
    query = sql.SQL(
        "SELECT device_id, status FROM (SELECT d.device_id, {status} AS status FROM {source}{where}) s"
        " WHERE status <> 'online'"
        " UNION ALL SELECT NULL, count(*)::text FROM devices d{where}"
    ).format(status=status.sql, source=_WITH_ACTIVITY, where=_where(where.conditions(params)))
    cur = await conn.execute(query, params)
    found: dict[str, str] = {}
    matched = 0
    for device_id, value in await cur.fetchall():
        if device_id is None:
            matched = int(value)
        else:
            found[str(device_id)] = str(value)
    return found, matched


@dataclass(frozen=True, slots=True)
class DensityBins:
    x: list[int]
    y: list[int]
    n: list[int]
    down: list[int]


async def density(
    conn: AsyncConn, where: MapFilter, cell_deg: float, silent_after_intervals: float
) -> DensityBins:
    """Devices per cell of a cell_deg grid (and how many of them are offline or silent)."""
    status = status_sql(silent_after_intervals)
    params: dict[str, Any] = {**status.named_params, "cell": cell_deg}
    conditions = [*where.conditions(params), sql.SQL("d.lat IS NOT NULL AND d.lon IS NOT NULL")]
    query = sql.SQL(
        "SELECT floor(d.lon / %(cell)s)::int AS x, floor(d.lat / %(cell)s)::int AS y, count(*),"
        " count(*) FILTER (WHERE {status} IN ('offline', 'silent'))"
        " FROM {source}{where} GROUP BY 1, 2 ORDER BY 1, 2"
    ).format(status=status.sql, source=_WITH_ACTIVITY, where=_where(conditions))
    cur = await conn.execute(query, params)
    rows = await cur.fetchall()
    return DensityBins(
        x=[int(r[0]) for r in rows],
        y=[int(r[1]) for r in rows],
        n=[int(r[2]) for r in rows],
        down=[int(r[3]) for r in rows],
    )
