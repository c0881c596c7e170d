"""Time partitions and retention of the reading tables on plain PostgreSQL, with pg_partman.

At 1:1 the city writes about 475 M readings a day; one table per kind would grow without bound
and a DELETE of old rows would cost as much as the inserts. With pg_partman (4.7, packaged by
Debian for PostgreSQL 15 as ``postgresql-15-partman``) each ``reading_<kind>`` is a parent
partitioned by range of ``time``: partman creates partitions ahead of time (``premake``) and its
maintenance run drops whole partitions older than the retention (``DROP TABLE``, no vacuum debt).
Maintenance runs in pg_partman's own background worker (``pg_partman_bgw``, configured by the
local stack's PostgreSQL, cityneuron.servers) or from ``cityneuron db maintain`` (cron), which
also applies the retention of the dead letters and closed alerts (cityneuron.table_retention).

The extension needs a superuser to create (``CREATE SCHEMA partman; CREATE EXTENSION pg_partman
SCHEMA partman``); the stack's launcher does it, like TimescaleDB. Without it the tables stay
plain. With TimescaleDB, hypertables do the same job and partman is not used (cityneuron.schema).

A table created before partitioning (schema version 2) is converted on the next ``db init``:
renamed aside, a partitioned parent created in its place starting at its oldest reading (no
earlier than the retention, or ``_UNBOUNDED_START`` without one), the readings copied over and
the old table dropped. Readings older than the first partition land in the default partition.
"""

from __future__ import annotations

import logging
from datetime import timedelta

import psycopg
from psycopg import sql

from cityneuron.catalog import Kind
from cityneuron.settings import DatabaseSettings
from cityneuron.table_retention import Pruned, prune

log = logging.getLogger("cityneuron.schema")

# Partitions made ahead of the newest one: with 1-hour partitions, four hours of headroom.
PREMAKE = 4
# Without a retention, a converted table's partitions start at most this far back.
_UNBOUNDED_START = timedelta(days=30)


def partman_schema(conn: psycopg.Connection) -> str | None:
    """The schema pg_partman is installed in, None when it is not installed in this database."""
    row = conn.execute(
        "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace"
        " WHERE e.extname = 'pg_partman'"
    ).fetchone()
    return str(row[0]) if row else None


def is_partitioned(conn: psycopg.Connection, table: str) -> bool | None:
    """True for a partitioned parent, False for a plain table, None when it does not exist."""
    row = conn.execute(
        "SELECT c.relkind FROM pg_class c WHERE c.oid = to_regclass(%s)", (f"public.{table}",)
    ).fetchone()
    return None if row is None else row[0] == "p"


def _start_partition(conn: psycopg.Connection, table: str | None, db: DatabaseSettings) -> str:
    """Where the first partition starts, as text for partman: for a new table the retention back
    from now (readings older than it are refused anyway), or ``PREMAKE`` partitions back without
    one (an accelerated run catching up); for a converted table its oldest reading, no earlier
    than the retention (or ``_UNBOUNDED_START``)."""
    if table is None:
        row = conn.execute(
            "SELECT (now() - coalesce(%s::interval, %s * %s::interval))::text",
            (db.retention, PREMAKE, db.chunk_interval),
        ).fetchone()
        assert row is not None
        return str(row[0])
    horizon = db.retention or f"{int(_UNBOUNDED_START.total_seconds())} seconds"
    row = conn.execute(
        sql.SQL(
            "SELECT greatest(least(coalesce((SELECT min(time) FROM {}), now()), now()),"
            " now() - %s::interval)::text"
        ).format(sql.Identifier(table)),
        (horizon,),
    ).fetchone()
    assert row is not None
    return str(row[0])


def _register(conn: psycopg.Connection, schema: str, table: str, db: DatabaseSettings, start: str) -> None:
    conn.execute(
        sql.SQL(
            "SELECT {}.create_parent(p_parent_table => %s, p_control => 'time', p_type => 'native',"
            " p_interval => %s, p_premake => %s, p_start_partition => %s)"
        ).format(sql.Identifier(schema)),
        (f"public.{table}", db.chunk_interval, PREMAKE, start),
    )


def set_retention(conn: psycopg.Connection, schema: str, table: str, retention: str | None) -> None:
    """Drop (not detach) partitions older than ``retention`` at each maintenance run; None keeps all.

    ``infinite_time_partitions``: partitions keep being made ahead even when no reading arrived
    for a while (a stopped simulator), so the first reading after a pause has its partition.
    """
    conn.execute(
        sql.SQL(
            "UPDATE {}.part_config SET retention = %s, retention_keep_table = false,"
            " retention_keep_index = false, infinite_time_partitions = true WHERE parent_table = %s"
        ).format(sql.Identifier(schema)),
        (retention, f"public.{table}"),
    )


def ensure_partitioned(
    conn: psycopg.Connection, schema: str, kind: Kind, db: DatabaseSettings, create_parent: sql.Composed
) -> None:
    """Make ``reading_<kind>`` a partman-managed parent (creating it with ``create_parent``, the
    partitioned DDL), converting a plain table of an older schema in place."""
    table = kind.table
    state = is_partitioned(conn, table)
    registered = conn.execute(
        sql.SQL("SELECT 1 FROM {}.part_config WHERE parent_table = %s").format(sql.Identifier(schema)),
        (f"public.{table}",),
    ).fetchone()
    if state is True and registered:
        set_retention(conn, schema, table, db.retention)
        return
    old: str | None = None
    if state is False:
        old = f"{table}_unpartitioned"
        conn.execute(
            sql.SQL("ALTER TABLE {} RENAME TO {}").format(sql.Identifier(table), sql.Identifier(old))
        )
        # Free the constraint and index names for the new parent.
        for suffix in ("device_time", "time"):
            conn.execute(
                sql.SQL("ALTER INDEX IF EXISTS {} RENAME TO {}").format(
                    sql.Identifier(f"{table}_{suffix}"), sql.Identifier(f"{old}_{suffix}")
                )
            )
        log.info("converting %s to time partitions (pg_partman)", table)
    start = _start_partition(conn, old, db)
    if state is not True:
        conn.execute(create_parent)
    _register(conn, schema, table, db, start)
    set_retention(conn, schema, table, db.retention)
    if old is not None:
        columns = [
            r[0]
            for r in conn.execute(
                "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0"
                " AND NOT attisdropped ORDER BY attnum",
                (old,),
            ).fetchall()
        ]
        names = sql.SQL(", ").join(sql.Identifier(c) for c in columns)
        moved = conn.execute(
            sql.SQL("INSERT INTO {} ({names}) SELECT {names} FROM {}").format(
                sql.Identifier(table), sql.Identifier(old), names=names
            )
        ).rowcount
        conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(old)))
        log.info("%s: %d readings moved into partitions", table, moved)


def run_maintenance(conn: psycopg.Connection) -> None:
    """Create the partitions due ahead and drop those past the retention, for every parent.

    What pg_partman's background worker runs on its interval; ``p_analyze => false`` because a
    new, empty partition has nothing to analyse and autovacuum analyses filled ones.
    """
    schema = partman_schema(conn)
    if schema is None:
        return
    conn.execute(sql.SQL("SELECT {}.run_maintenance(p_analyze => false)").format(sql.Identifier(schema)))


def maintain(db: DatabaseSettings) -> Pruned:
    """``cityneuron db maintain``: one maintenance run, for databases without the background worker:
    partitions made ahead and dropped past the retention (pg_partman, when installed), then the
    dead letters and closed alerts past theirs (cityneuron.table_retention, with or without
    pg_partman or TimescaleDB). Returns what the latter removed."""
    with psycopg.connect(db.url, autocommit=True, connect_timeout=int(db.connect_timeout_s)) as conn:
        if partman_schema(conn) is None:
            log.info("pg_partman is not installed in this database: no partitions to maintain")
        else:
            run_maintenance(conn)
            log.info("partitions maintained")
        return prune(conn, db)
