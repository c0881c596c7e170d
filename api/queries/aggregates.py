"""Bucketed aggregates over raw readings or, when exact, TimescaleDB continuous aggregates.

Raw path (any PostgreSQL): ``date_bin(bucket, time, 2000-01-01Z)`` over ``reading_<kind>``.
Aggregate path: the hourly/daily continuous aggregates keep count/sum/min/max per device and
bucket, so any bucket that is a whole number of their width, over a window on their boundaries,
is recomputed exactly (avg = sum of sums / sum of counts).

Percentiles (p50/p90/p95/p99) are ``percentile_cont`` over the raw readings, computed in
PostgreSQL: a percentile of a bucket cannot be recombined from per-hour count/sum/min/max, so the
continuous aggregates never serve them (TimescaleDB's approximate percentile sketches live in the
separate Toolkit extension, which this stack does not require).

Gap filling (``fill``) yields every bucket of the window for each series: with TimescaleDB's
``time_bucket_gapfill`` where its bucket origin (2000-01-03) lands on ours (2000-01-01), i.e. when
the width divides two days; with ``generate_series`` otherwise. Both give the same answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from psycopg import sql

from api.db import AsyncConn
from api.models import Agg, Fill, GroupBy
from api.timeparse import is_aligned
from cityneuron.catalog import Kind, Metric
from cityneuron.schema import CAGG_WIDTHS

# Continuous aggregate widths, coarsest first: the coarsest that fits reads the fewest rows.
_CAGG_WIDTH: dict[str, timedelta] = {"1d": timedelta(days=1), "1h": timedelta(hours=1)}
assert set(_CAGG_WIDTH) == set(CAGG_WIDTHS)

_RAW_VALUE = {
    "avg": "avg({v})",
    "min": "min({v})",
    "max": "max({v})",
    "sum": "sum({v})",
    "count": "count({v})",
    "p50": "percentile_cont(0.5) WITHIN GROUP (ORDER BY {v})",
    "p90": "percentile_cont(0.9) WITHIN GROUP (ORDER BY {v})",
    "p95": "percentile_cont(0.95) WITHIN GROUP (ORDER BY {v})",
    "p99": "percentile_cont(0.99) WITHIN GROUP (ORDER BY {v})",
}
# Aggregates the continuous aggregates cannot recompute exactly.
RAW_ONLY: frozenset[str] = frozenset(a for a in _RAW_VALUE if a.startswith("p"))
# time_bucket's default origin for timestamptz (TimescaleDB docs, time_bucket): a Monday.
_TIMESCALE_ORIGIN_OFFSET = timedelta(days=2)
_CAGG_VALUE = {
    "avg": "sum({sum}) / nullif(sum({count}), 0)::double precision",
    "min": "min({min})",
    "max": "max({max})",
    "sum": "sum({sum})",
    "count": "sum({count})::bigint",
}


@dataclass(frozen=True, slots=True)
class AggregateQuery:
    kind: Kind
    metric: Metric
    agg: Agg
    bucket: timedelta
    start: datetime
    end: datetime
    district: str | None = None
    device_id: str | None = None
    group_by: GroupBy | None = None
    fill: Fill = "none"


def cagg_name(kind: Kind, width: str) -> str:
    return f"{kind.table}_{width}"


def choose_source(query: AggregateQuery, continuous_aggregates: frozenset[str]) -> str:
    """The table to read: a continuous aggregate when it gives the same answer as raw, else raw."""
    if query.agg in RAW_ONLY:
        return query.kind.table
    for width, span in _CAGG_WIDTH.items():
        name = cagg_name(query.kind, width)
        if (
            name in continuous_aggregates
            and query.bucket % span == timedelta(0)
            and is_aligned(query.start, span)
            and is_aligned(query.end, span)
        ):
            return name
    return query.kind.table


def _group_expr(group_by: GroupBy | None) -> sql.Composable:
    if group_by == "district":
        return sql.SQL("d.district")
    if group_by == "device":
        return sql.SQL("r.device_id")
    return sql.SQL("NULL::text")


def gapfill_usable(query: AggregateQuery, has_timescaledb: bool) -> bool:
    """Whether time_bucket_gapfill gives our buckets (its origin is two days after ours)."""
    return has_timescaledb and _TIMESCALE_ORIGIN_OFFSET % query.bucket == timedelta(0)


def build_query(
    query: AggregateQuery, source: str, *, use_gapfill: bool = False
) -> tuple[sql.Composed, dict[str, Any]]:
    """SQL and parameters of ``query`` read from ``source`` (raw table or continuous aggregate).

    Rows are (bucket, group, value, count), ordered by group then bucket.
    """
    name = query.metric.name
    from_raw = source == query.kind.table
    time_col = sql.SQL("r.time" if from_raw else "r.bucket")
    if from_raw:
        column = sql.SQL("r.{}").format(sql.Identifier(name))
        value = sql.SQL(_RAW_VALUE[query.agg]).format(v=column)
        count = sql.SQL("count({})").format(column)
        having: sql.Composable = sql.SQL("")
    else:
        if query.agg in RAW_ONLY:
            raise ValueError(f"{query.agg} cannot be computed from a continuous aggregate")
        part = {
            p: sql.SQL("r.{}").format(sql.Identifier(f"{name}_{p}")) for p in ("count", "sum", "min", "max")
        }
        value = sql.SQL(_CAGG_VALUE[query.agg]).format(**part)
        count = sql.SQL("sum({})::bigint").format(part["count"])
        # Buckets where no reading carried the metric hold count 0: raw leaves them out too.
        having = sql.SQL(" HAVING sum({}) > 0").format(part["count"])
    conditions: list[sql.Composable] = [
        sql.SQL("{t} >= %(start)s").format(t=time_col),
        sql.SQL("{t} < %(end)s").format(t=time_col),
    ]
    params: dict[str, Any] = {"bucket": query.bucket, "start": query.start, "end": query.end}
    if from_raw:
        # Same rows as the aggregate's <metric>_count: readings that carried the metric.
        conditions.append(sql.SQL("{} IS NOT NULL").format(column))
    if query.device_id is not None:
        conditions.append(sql.SQL("r.device_id = %(device_id)s"))
        params["device_id"] = query.device_id
    if query.district is not None:
        # The district's devices as an array, not a join: the condition reaches into both arms
        # of a real-time continuous aggregate (materialised part and recent raw rows) and uses
        # their (device_id, time) indexes, instead of hashing the whole city's rows against
        # the district's devices.
        conditions.append(
            sql.SQL(
                "r.device_id = ANY(ARRAY(SELECT device_id FROM devices"
                " WHERE kind = %(kind)s AND district = %(district)s))"
            )
        )
        params["kind"] = query.kind.name
        params["district"] = query.district
    needs_devices = query.group_by == "district"
    join = sql.SQL(" JOIN devices d ON d.device_id = r.device_id") if needs_devices else sql.SQL("")
    gapfill = use_gapfill and query.fill != "none"
    if gapfill:
        bucket_expr = sql.SQL("time_bucket_gapfill(%(bucket)s, {t}, %(start)s, %(end)s)").format(t=time_col)
        if query.fill == "previous":
            value = sql.SQL("locf({})").format(value)
    else:
        bucket_expr = sql.SQL("date_bin(%(bucket)s, {t}, {origin})").format(t=time_col, origin=_ORIGIN)
    aggregated = sql.SQL(
        "SELECT {bucket} AS bucket, {group} AS grp, {value} AS value, {count} AS n"
        " FROM {source} r{join} WHERE {where} GROUP BY 1, 2{having}"
    ).format(
        bucket=bucket_expr,
        group=_group_expr(query.group_by),
        value=value,
        count=count,
        source=sql.Identifier(source),
        join=join,
        where=sql.SQL(" AND ").join(conditions),
        having=having,
    )
    if query.fill == "none":
        return sql.SQL("{} ORDER BY 2 NULLS FIRST, 1").format(aggregated), params
    if gapfill:
        statement = sql.SQL(
            "SELECT bucket, grp, {value}, coalesce(n, 0) FROM ({aggregated}) q ORDER BY 2 NULLS FIRST, 1"
        ).format(value=_FILLED_VALUE[query.fill], aggregated=aggregated)
        return statement, params
    return _series_filled(aggregated, query), params


_ORIGIN = sql.SQL("TIMESTAMPTZ '2000-01-01 00:00:00+00'")
_FILLED_VALUE = {
    "null": sql.SQL("value"),
    "zero": sql.SQL("coalesce(value, 0)"),
    # Carried forward already (locf, or the run trick below).
    "previous": sql.SQL("value"),
}


def _series_filled(aggregated: sql.Composable, query: AggregateQuery) -> sql.Composed:
    # Every bucket of the window for every group that has data (the one ungrouped series always).
    groups = (
        sql.SQL("SELECT DISTINCT grp FROM agg") if query.group_by else sql.SQL("SELECT NULL::text AS grp")
    )
    if query.fill == "previous":
        # run counts the values seen so far: a gap shares its run with the last value before it.
        value = sql.SQL("first_value(value) OVER (PARTITION BY grp, run ORDER BY bucket)")
    else:
        value = _FILLED_VALUE[query.fill]
    return sql.SQL(
        "WITH agg AS ({aggregated}),"
        " grid AS (SELECT generate_series(date_bin(%(bucket)s, %(start)s::timestamptz, {origin}),"
        " %(end)s::timestamptz - interval '1 microsecond', %(bucket)s) AS bucket),"
        " groups AS ({groups}),"
        " joined AS (SELECT g.bucket, s.grp, a.value, coalesce(a.n, 0) AS n,"
        " count(a.value) OVER (PARTITION BY s.grp ORDER BY g.bucket) AS run"
        " FROM grid g CROSS JOIN groups s"
        " LEFT JOIN agg a ON a.bucket = g.bucket AND a.grp IS NOT DISTINCT FROM s.grp)"
        " SELECT bucket, grp, {value}, n FROM joined ORDER BY 2 NULLS FIRST, 1"
    ).format(aggregated=aggregated, origin=_ORIGIN, groups=groups, value=value)


async def run_aggregate(
    conn: AsyncConn, query: AggregateQuery, source: str, *, use_gapfill: bool = False
) -> list[dict[str, Any]]:
    """One series per group (a single ungrouped series without group_by), buckets in time order,
    each as the JSON object of an ``AggregateSeries`` (plain dicts: a 30-day hourly chart is 720
    points per series, api/fastjson.py)."""
    statement, params = build_query(query, source, use_gapfill=use_gapfill)
    cur = await conn.execute(statement, params)
    rows = await cur.fetchall()
    if not rows and use_gapfill and query.fill != "none" and query.group_by is None:
        # time_bucket_gapfill makes no rows from no input; the ungrouped series is still owed.
        statement, params = build_query(query, source, use_gapfill=False)
        cur = await conn.execute(statement, params)
        rows = await cur.fetchall()
    series: dict[str | None, list[dict[str, Any]]] = {}
    for bucket, group, value, n in rows:
        series.setdefault(group, []).append({"time": bucket, "value": value, "count": n})
    return [{"group": group, "points": points} for group, points in series.items()]
