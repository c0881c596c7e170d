"""Bucketed aggregates over raw readings or, when exact, TimescaleDB continuous aggregates.

Raw path (any PostgreSQL): ``date_bin(bucket, time, 2000-01-01Z)`` over ``reading_<kind>``.
Aggregate path: the hourly/daily continuous aggregates keep count/sum/min/max per device and
bucket, so any bucket that is a whole number of their width, over a window on their boundaries,
is recomputed exactly (avg = sum of sums / sum of counts).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from psycopg import sql

from api.db import AsyncConn
from api.models import Agg, AggregatePoint, AggregateSeries, GroupBy
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
}
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


def cagg_name(kind: Kind, width: str) -> str:
    return f"{kind.table}_{width}"


def choose_source(query: AggregateQuery, continuous_aggregates: frozenset[str]) -> str:
    """The table to read: a continuous aggregate when it gives the same answer as raw, else raw."""
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


def build_query(query: AggregateQuery, source: str) -> tuple[sql.Composed, dict[str, Any]]:
    """SQL and parameters of ``query`` read from ``source`` (raw table or continuous aggregate)."""
    name = query.metric.name
    from_raw = source == query.kind.table
    time_col = sql.SQL("r.time" if from_raw else "r.bucket")
    if from_raw:
        column = sql.SQL("r.{}").format(sql.Identifier(name))
        value = sql.SQL(_RAW_VALUE[query.agg]).format(v=column)
        count = sql.SQL("count({})").format(column)
        having: sql.Composable = sql.SQL("")
    else:
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
        conditions.append(sql.SQL("d.district = %(district)s"))
        params["district"] = query.district
    needs_devices = query.district is not None or query.group_by == "district"
    join = sql.SQL(" JOIN devices d ON d.device_id = r.device_id") if needs_devices else sql.SQL("")
    statement = sql.SQL(
        "SELECT date_bin(%(bucket)s, {t}, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS bucket,"
        " {group} AS grp, {value} AS value, {count} AS n"
        " FROM {source} r{join} WHERE {where}"
        " GROUP BY 1, 2{having} ORDER BY 2 NULLS FIRST, 1"
    ).format(
        t=time_col,
        group=_group_expr(query.group_by),
        value=value,
        count=count,
        source=sql.Identifier(source),
        join=join,
        where=sql.SQL(" AND ").join(conditions),
        having=having,
    )
    return statement, params


async def run_aggregate(conn: AsyncConn, query: AggregateQuery, source: str) -> list[AggregateSeries]:
    """One series per group (a single ungrouped series without group_by), buckets in time order."""
    statement, params = build_query(query, source)
    cur = await conn.execute(statement, params)
    series: dict[str | None, list[AggregatePoint]] = {}
    for bucket, group, value, n in await cur.fetchall():
        series.setdefault(group, []).append(AggregatePoint(time=bucket, value=value, count=n))
    return [AggregateSeries(group=group, points=points) for group, points in series.items()]
