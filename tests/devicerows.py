"""Registering devices in a test database with their state, as the registry and ingest would.

A device's registry facts and ``online`` go into ``devices`` (whose trigger creates its
``device_activity`` row); what its messages change (``last_seen_at``, counters) goes into that
activity row, as ingest writes it.
"""

from __future__ import annotations

from collections.abc import Sequence

import psycopg
from psycopg import sql

from cityneuron.device_activity import COUNTER_COLUMNS


def add_devices(conn: psycopg.Connection, columns: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Insert ``rows`` (values in the order of ``columns``, which must include ``device_id``)."""
    registry = [i for i, c in enumerate(columns) if c not in COUNTER_COLUMNS]
    activity = [i for i, c in enumerate(columns) if c in COUNTER_COLUMNS]
    key = columns.index("device_id")
    with conn.cursor() as cur:
        cur.executemany(
            sql.SQL("INSERT INTO devices ({}) VALUES ({})").format(
                sql.SQL(", ").join(sql.Identifier(columns[i]) for i in registry),
                sql.SQL(", ").join(sql.Placeholder() for _ in registry),
            ),
            [[row[i] for i in registry] for row in rows],
        )
        if activity:
            cur.executemany(
                sql.SQL("UPDATE device_activity SET {} WHERE device_id = %s").format(
                    sql.SQL(", ").join(
                        sql.SQL("{} = {}").format(sql.Identifier(columns[i]), sql.Placeholder())
                        for i in activity
                    )
                ),
                [[*(row[i] for i in activity), row[key]] for row in rows],
            )
