"""Queries behind the district summary and the city overview: device states and key metrics.

Device states come from the one definition in api.queries.liveness, counted by the database as
devices change (cityneuron.device_counts). Key metrics are "now"
figures: statistics over the latest values (``latest_reading``) of the devices of a kind that
reported within ``silent_after_intervals`` times the kind's reporting interval, so a dead
sensor's last value does not linger in a district mean.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from psycopg import sql

from api.db import AsyncConn
from api.queries.liveness import DEVICE_STATUSES, silent_after
from cityneuron.catalog import KIND_BY_NAME, Metric
from cityneuron.device_counts import status_counts_sql

# What an operations screen shows per district: (kind, metric), in display order.
KEY_METRICS: tuple[tuple[str, str], ...] = (
    ("air_station", "pm25"),
    ("air_station", "pm10"),
    ("air_station", "o3"),
    ("air_station", "no2"),
    ("smart_pole", "pm25"),
    ("smart_pole", "noise_dba"),
    ("smart_pole", "temperature_c"),
    ("smart_pole", "humidity_pct"),
    ("hydrology_station", "water_level_m"),
)


def key_metric(kind: str, metric: str) -> Metric:
    return KIND_BY_NAME[kind].metric_by_name[metric]


for _kind, _metric in KEY_METRICS:
    key_metric(_kind, _metric)  # fail at import, not per request, if the catalog moves

# {district: {kind: {status: n}}}
DeviceCounts = dict[str, dict[str, dict[str, int]]]


async def device_counts(
    conn: AsyncConn, *, silent_after_intervals: float, district: str | None = None
) -> DeviceCounts:
    """Registered devices per district, kind and state (online/offline/silent/unknown).

    From the counts the database keeps as devices change (cityneuron.device_counts), not a scan of
    the registry: the same rule as api.queries.liveness, with "silent" exact to 1 % of the kind's
    reporting interval.
    """
    query, params = status_counts_sql(silent_after_intervals, district)
    cur = await conn.execute(query, params)
    counts: DeviceCounts = defaultdict(lambda: defaultdict(lambda: dict.fromkeys(DEVICE_STATUSES, 0)))
    for dist, kind, state, n in await cur.fetchall():
        counts[dist][kind][state] = int(n)
    return counts


@dataclass(frozen=True, slots=True)
class MetricStats:
    mean: float | None
    min: float | None
    max: float | None
    devices: int


# {district or None (the whole city): {(kind, metric): stats}}
KeyMetricStats = dict[str | None, dict[tuple[str, str], MetricStats]]


async def key_metric_stats(
    conn: AsyncConn, *, silent_after_intervals: float, district: str | None = None
) -> KeyMetricStats:
    """Mean, min, max and reporting devices of each key metric per district and city-wide."""
    params: dict[str, Any] = {"kinds": sorted({k for k, _ in KEY_METRICS})}
    whens: list[sql.Composable] = []
    for i, kind in enumerate(params["kinds"]):
        params[f"k{i}"] = kind
        params[f"q{i}"] = silent_after(KIND_BY_NAME[kind], silent_after_intervals).total_seconds()
        whens.append(sql.SQL("WHEN {} THEN {}").format(sql.Placeholder(f"k{i}"), sql.Placeholder(f"q{i}")))
    columns: list[sql.Composable] = []
    for i, (kind, metric) in enumerate(KEY_METRICS):
        params[f"mk{i}"], params[f"mm{i}"] = kind, metric
        value = sql.SQL("(lr.metrics->>{m})::float8").format(m=sql.Placeholder(f"mm{i}"))
        only = sql.SQL("FILTER (WHERE lr.kind = {k})").format(k=sql.Placeholder(f"mk{i}"))
        columns += [
            sql.SQL("{fn}({v}) {only}").format(fn=sql.SQL(fn), v=value, only=only)
            for fn in ("avg", "min", "max", "count")
        ]
    where = sql.SQL("")
    if district is not None:
        where = sql.SQL(" AND d.district = %(district)s")
        params["district"] = district
    query = sql.SQL(
        "SELECT d.district, {columns} FROM latest_reading lr JOIN devices d ON d.device_id = lr.device_id"
        " WHERE lr.kind = ANY(%(kinds)s)"
        " AND lr.time > now() - make_interval(secs => CASE lr.kind {whens} END){where}"
        " GROUP BY GROUPING SETS ((d.district), ())"
    ).format(columns=sql.SQL(", ").join(columns), whens=sql.SQL(" ").join(whens), where=where)
    cur = await conn.execute(query, params)
    stats: KeyMetricStats = {}
    for dist, *values in await cur.fetchall():
        per: dict[tuple[str, str], MetricStats] = {}
        for i, key in enumerate(KEY_METRICS):
            mean, low, high, n = values[4 * i : 4 * i + 4]
            per[key] = MetricStats(mean, low, high, int(n))
        stats[dist] = per
    return stats
