"""What the connected database offers: versions and continuous aggregates."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg

from cityneuron.schema import DatabaseInfo


@dataclass(frozen=True, slots=True)
class DatabaseFeatures:
    info: DatabaseInfo
    continuous_aggregates: frozenset[str]


async def load_features(conn: psycopg.AsyncConnection[Any]) -> DatabaseFeatures:
    # The async twin of cityneuron.schema.database_info (that one takes a sync connection).
    cur = await conn.execute(
        "SELECT current_setting('server_version'),"
        " (SELECT extversion FROM pg_extension WHERE extname = 'timescaledb')"
    )
    row = await cur.fetchone()
    assert row is not None
    info = DatabaseInfo(server_version=row[0], timescaledb=row[1])
    caggs: frozenset[str] = frozenset()
    if info.has_timescaledb:
        cur = await conn.execute(
            "SELECT view_name FROM timescaledb_information.continuous_aggregates"
            " WHERE view_schema = current_schema()"
        )
        caggs = frozenset(r[0] for r in await cur.fetchall())
    return DatabaseFeatures(info, caggs)
