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
from datetime import datetime
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
    conn: AsyncConn,
    *,
    silent_after_intervals: float,
    district: str | None = None,
    at: datetime | None = None,
) -> KeyMetricStats:
    """Mean, min, max and reporting devices of each key metric per district and city-wide.

    A district appears when at least one of its devices of a key kind reported in time (as with
    a filtering WHERE); the city-wide entry (None) always. ``at`` fixes "now" (tests, measuring
    an old database); by default the transaction's ``now()``.
    """
    params: dict[str, Any] = {}
    now = sql.SQL("now()")
    if at is not None:
        params["at"] = at
        now = sql.SQL("%(at)s::timestamptz")
    if district is not None:
        params["district"] = district
    query = _key_metric_query(silent_after_intervals, now, district is not None)
    # Measured at 1:1: the query is estimated above jit_above_cost, and compiling its expressions
    # took ~100 ms per call, more than it saves on 45 k rows. Parallel workers cut the city query's
    # time by a tenth for half as much CPU again, and made the district one slower: on a machine
    # the city keeps busy, CPU is what a render must not take from ingest.
    async with conn.transaction():
        await conn.execute("SET LOCAL jit = off; SET LOCAL max_parallel_workers_per_gather = 0")
        cur = await conn.execute(query, params)
        rows = await cur.fetchall()
    stats: KeyMetricStats = {}
    for dist, live, *values in rows:
        if dist is not None and not live:
            continue
        per: dict[tuple[str, str], MetricStats] = {}
        for i, key in enumerate(KEY_METRICS):
            mean, low, high, n = values[4 * i : 4 * i + 4]
            per[key] = MetricStats(mean, low, high, int(n))
        stats[dist] = per
    return stats


def _key_metric_query(silent_after_intervals: float, now: sql.Composable, by_district: bool) -> sql.Composed:
    """One branch per key kind, each reading only that kind's latest values and devices.

    Why this shape (measured at 1:1, 17 M devices, 45 k poles):
    - kind on both sides of the join: devices of a kind are found by (kind, district, device_id)
      instead of probing the 17 M-row primary key once per latest value; latest_reading.kind is
      always the device's registered kind (ingest dead-letters a topic naming another kind, and no
      path changes a device's kind);
    - each metric is taken out of the jsonb once per row, not once per aggregate (4x fewer);
    - the liveness test sits in the values, not in WHERE: the planner then sees every device of
      the kind (an estimate it gets right) instead of guessing how many reported in the last
      minutes from statistics older than that, which led it to one index probe per device;
    - catalog constants (kinds, metrics, thresholds) are literals: a prepared statement's generic
      plan would not know that a kind has 100 devices and another 45 k.
    """
    kinds = sorted({k for k, _ in KEY_METRICS})
    branches: list[sql.Composable] = []
    for kind in kinds:
        quiet_s = silent_after(KIND_BY_NAME[kind], silent_after_intervals).total_seconds()
        live = sql.SQL("lr.time > {now} - make_interval(secs => {quiet})").format(
            now=now, quiet=sql.Literal(quiet_s)
        )
        values = [
            sql.SQL("CASE WHEN {live} THEN (lr.metrics->>{m})::float8 END").format(
                live=live, m=sql.Literal(m)
            )
            if k == kind
            else sql.SQL("NULL::float8")
            for k, m in KEY_METRICS
        ]
        branches.append(
            sql.SQL(
                "SELECT d.district, {live} OR NULL, {values}"
                " FROM latest_reading lr JOIN devices d ON d.device_id = lr.device_id"
                " WHERE lr.kind = {kind} AND d.kind = {kind}{district}"
            ).format(
                live=live,
                values=sql.SQL(", ").join(values),
                kind=sql.Literal(kind),
                district=sql.SQL(" AND d.district = %(district)s") if by_district else sql.SQL(""),
            )
        )
    names = [sql.Identifier(f"v{i}") for i in range(len(KEY_METRICS))]
    aggregates = [
        sql.SQL("{fn}({v})").format(fn=sql.SQL(fn), v=v)
        for v in names
        for fn in ("avg", "min", "max", "count")
    ]
    return sql.SQL(
        "SELECT m.district, count(m.live), {aggregates} FROM ({branches}) AS m(district, live, {names})"
        " GROUP BY GROUPING SETS ((m.district), ())"
    ).format(
        aggregates=sql.SQL(", ").join(aggregates),
        branches=sql.SQL(" UNION ALL ").join(branches),
        names=sql.SQL(", ").join(names),
    )
