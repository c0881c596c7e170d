"""Readings behind the city views: hourly air means, latest water analyses, rain accumulations.

Every query reads raw ``reading_<kind>`` rows joined with ``devices`` over a bounded window
(24 h at most), right-closed: a reading stamped t covers the interval ending at t, so the window
ending at ``end`` holds readings with ``start < time <= end``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from psycopg import sql

from api.cityviews.air_means import HOURS_PER_DAY, POLLUTANTS
from api.cityviews.rain import WINDOWS_H, Accumulations
from api.cityviews.water_quality import PARAMETER_ORDER
from api.db import AsyncConn
from cityneuron.catalog import KIND_BY_NAME, Kind

AIR = KIND_BY_NAME["air_station"]
WATER = KIND_BY_NAME["water_quality_station"]
HYDROLOGY = KIND_BY_NAME["hydrology_station"]
RAIN_METRIC = "rain_mm"


def _require(kind: Kind, metrics: tuple[str, ...]) -> None:
    # The city views name catalog metrics; fail at import, not per request, if the catalog moves.
    missing = [m for m in metrics if m not in kind.metric_by_name]
    if missing:
        raise RuntimeError(f"catalog kind {kind.name} lacks {', '.join(missing)}")


_require(AIR, POLLUTANTS)
_require(WATER, PARAMETER_ORDER)
_require(HYDROLOGY, (RAIN_METRIC,))


def _district_filter(district: str | None, params: dict[str, Any]) -> sql.Composable:
    if district is None:
        return sql.SQL("")
    params["district"] = district
    return sql.SQL(" AND d.district = %(district)s")


@dataclass(slots=True)
class AirStationHours:
    """One air station's hourly means over 24 h, oldest first (None: no reading that hour)."""

    device_id: str
    district: str
    hours: dict[str, list[float | None]] = field(
        default_factory=lambda: {m: [None] * HOURS_PER_DAY for m in POLLUTANTS}
    )
    reporting: bool = False


async def air_hourly_means(
    conn: AsyncConn, *, end: datetime, district: str | None = None
) -> list[AirStationHours]:
    """Every air station (of ``district``) with its hourly pollutant means in (end - 24 h, end]."""
    params: dict[str, Any] = {
        "kind": AIR.name,
        "start": end - timedelta(hours=HOURS_PER_DAY),
        "end": end,
    }
    means = sql.SQL(", ").join(sql.SQL("avg(r.{m}) AS {m}").format(m=sql.Identifier(m)) for m in POLLUTANTS)
    query = sql.SQL(
        "SELECT d.device_id, d.district,"
        " floor(extract(epoch FROM (%(end)s - r.time)) / 3600)::int AS hours_ago, {means}"
        " FROM devices d LEFT JOIN {table} r"
        " ON r.device_id = d.device_id AND r.time > %(start)s AND r.time <= %(end)s"
        " WHERE d.kind = %(kind)s{district}"
        " GROUP BY d.device_id, d.district, hours_ago ORDER BY d.device_id"
    ).format(means=means, table=sql.Identifier(AIR.table), district=_district_filter(district, params))
    cur = await conn.execute(query, params)
    stations: dict[str, AirStationHours] = {}
    for device_id, dist, hours_ago, *values in await cur.fetchall():
        station = stations.setdefault(device_id, AirStationHours(device_id, dist))
        if hours_ago is None:
            continue  # the LEFT JOIN's row for a station without readings
        slot = HOURS_PER_DAY - 1 - hours_ago
        for metric, value in zip(POLLUTANTS, values, strict=True):
            station.hours[metric][slot] = value
            station.reporting = station.reporting or value is not None
    return list(stations.values())


@dataclass(frozen=True, slots=True)
class WaterAnalysis:
    device_id: str
    district: str
    water_body: str | None
    time: datetime | None
    values: dict[str, float | None]


async def latest_water_analyses(
    conn: AsyncConn, *, at: datetime, lookback: timedelta, district: str | None = None
) -> list[WaterAnalysis]:
    """Every water-quality station with its latest analysis in (at - lookback, at]."""
    params: dict[str, Any] = {"kind": WATER.name, "start": at - lookback, "at": at}
    columns = sql.SQL(", ").join(sql.SQL("r.{}").format(sql.Identifier(m)) for m in PARAMETER_ORDER)
    outer = sql.SQL(", ").join(sql.SQL("w.{}").format(sql.Identifier(m)) for m in PARAMETER_ORDER)
    query = sql.SQL(
        "SELECT d.device_id, d.district, d.meta->>'water_body', w.time, {outer}"
        " FROM devices d LEFT JOIN LATERAL ("
        "  SELECT r.time, {columns} FROM {table} r"
        "  WHERE r.device_id = d.device_id AND r.time > %(start)s AND r.time <= %(at)s"
        "  ORDER BY r.time DESC LIMIT 1"
        " ) w ON true"
        " WHERE d.kind = %(kind)s{district} ORDER BY d.device_id"
    ).format(
        outer=outer,
        columns=columns,
        table=sql.Identifier(WATER.table),
        district=_district_filter(district, params),
    )
    cur = await conn.execute(query, params)
    return [
        WaterAnalysis(
            device_id=row[0],
            district=row[1],
            water_body=row[2],
            time=row[3],
            values=dict(zip(PARAMETER_ORDER, row[4:], strict=True)),
        )
        for row in await cur.fetchall()
    ]


@dataclass(frozen=True, slots=True)
class RainStation:
    device_id: str
    district: str
    rain: Accumulations


async def rain_accumulations(
    conn: AsyncConn, *, at: datetime, district: str | None = None
) -> list[RainStation]:
    """Every hydrology station with its rain sums over the 1/3/6/12/24 h ending at ``at``.

    A sum is None when no reading carried ``rain_mm`` in that window.
    """
    params: dict[str, Any] = {
        "kind": HYDROLOGY.name,
        "at": at,
        "start": at - timedelta(hours=max(WINDOWS_H)),
    }
    sums: list[sql.Composable] = []
    for hours in WINDOWS_H:
        params[f"w{hours}"] = timedelta(hours=hours)
        sums.append(
            sql.SQL("sum(r.{m}) FILTER (WHERE r.time > %(at)s - {w})").format(
                m=sql.Identifier(RAIN_METRIC), w=sql.Placeholder(f"w{hours}")
            )
        )
    query = sql.SQL(
        "SELECT d.device_id, d.district, {sums}"
        " FROM devices d LEFT JOIN {table} r"
        " ON r.device_id = d.device_id AND r.time > %(start)s AND r.time <= %(at)s"
        " WHERE d.kind = %(kind)s{district}"
        " GROUP BY d.device_id, d.district ORDER BY d.device_id"
    ).format(
        sums=sql.SQL(", ").join(sums),
        table=sql.Identifier(HYDROLOGY.table),
        district=_district_filter(district, params),
    )
    cur = await conn.execute(query, params)
    return [
        RainStation(
            device_id=row[0],
            district=row[1],
            rain=Accumulations(**{f"h{h}": v for h, v in zip(WINDOWS_H, row[2:], strict=True)}),
        )
        for row in await cur.fetchall()
    ]
