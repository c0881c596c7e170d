"""Raw readings of one device from its kind's wide table, paged by time."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from psycopg import sql

from api.db import AsyncConn
from api.models import Reading
from cityneuron.catalog import Kind, Metric


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
