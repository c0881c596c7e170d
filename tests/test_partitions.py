"""Time partitions and retention of the reading tables (cityneuron.partitions) on real PostgreSQL.

Plain PostgreSQL with pg_partman (installed by the test server as on a fresh `cityneuron up`),
and TimescaleDB's retention where the extension is present.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from cityneuron.catalog import KIND_BY_NAME, KINDS
from cityneuron.cli import partition_width, with_retention_hours
from cityneuron.partitions import PREMAKE, is_partitioned, run_maintenance
from cityneuron.schema import init_schema
from cityneuron.servers import PostgresServer
from cityneuron.settings import DatabaseSettings, Settings

POLE = KIND_BY_NAME["smart_pole"]


def _new_database(server: PostgresServer, *, partman: bool = True, **settings: str) -> DatabaseSettings:
    name = f"t_{uuid.uuid4().hex[:12]}"
    url = server.create_database(name)
    if not partman:
        with psycopg.connect(
            server._superuser_conninfo().replace("dbname=postgres", f"dbname={name}")
        ) as conn:
            conn.execute("DROP EXTENSION pg_partman")
    return DatabaseSettings(url=url, **settings)


def _partitions(conn: psycopg.Connection, table: str) -> list[tuple[str, datetime | None, datetime | None]]:
    """(name, lower, upper) of each partition of ``table``; bounds None for the default one."""
    rows = conn.execute(
        "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i"
        " JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = %s::regclass ORDER BY 1",
        (table,),
    ).fetchall()
    out: list[tuple[str, datetime | None, datetime | None]] = []
    for name, bound in rows:
        if bound == "DEFAULT":
            out.append((name, None, None))
            continue
        low, high = (part.split("'")[1] for part in bound.split(" TO "))
        out.append((name, datetime.fromisoformat(low), datetime.fromisoformat(high)))
    return out


def _insert_pole(conn: psycopg.Connection, device_id: str, at: datetime) -> None:
    conn.execute(
        "INSERT INTO reading_smart_pole (time, device_id, seq, lamp_level) VALUES (%s, %s, 1, 50)",
        (at, device_id),
    )


def test_fresh_database_partitions_every_kind_ahead_of_time(postgres_plain: PostgresServer) -> None:
    db = _new_database(postgres_plain, chunk_interval="1 hour", retention="6 hours")
    info = init_schema(db)
    assert info.partman == "partman"
    now = datetime.now(UTC)
    with psycopg.connect(db.url) as conn:
        for kind in KINDS:
            assert is_partitioned(conn, kind.table), kind.table
            ranged = [p for p in _partitions(conn, kind.table) if p[1] is not None]
            # Made ahead: the newest partition ends at least PREMAKE hours from now.
            assert max(p[2] for p in ranged) >= now + timedelta(hours=PREMAKE - 1)  # type: ignore[type-var,operator]
            # Back to the retention: a reading the ingest still accepts has a partition.
            assert min(p[1] for p in ranged) <= now - timedelta(hours=5)  # type: ignore[type-var,operator]
        # Ingest's SQL on a partitioned parent: COPY, and the unique key (device, time) still holds.
        at = now.replace(microsecond=0)
        with conn.cursor().copy("COPY reading_smart_pole (time, device_id, seq) FROM STDIN") as copy:
            copy.write_row((at, "pole-x", 1))
        with pytest.raises(psycopg.errors.UniqueViolation):
            _insert_pole(conn, "pole-x", at)
        conn.rollback()
        inserted = conn.execute(
            "INSERT INTO reading_smart_pole (time, device_id) VALUES (%s, 'pole-y'), (%s, 'pole-y')"
            " ON CONFLICT (device_id, time) DO NOTHING RETURNING device_id",
            (at, at),
        ).fetchall()
        assert len(inserted) == 1
    # init again: nothing changes, nothing fails.
    init_schema(db)


def test_retention_run_drops_old_partitions_and_keeps_recent_readings(postgres_plain: PostgresServer) -> None:
    db = _new_database(postgres_plain, chunk_interval="1 hour", retention="6 hours")
    init_schema(db)
    now = datetime.now(UTC)
    old, recent = now - timedelta(hours=5, minutes=30), now - timedelta(minutes=5)
    with psycopg.connect(db.url, autocommit=True) as conn:
        _insert_pole(conn, "pole-old", old)
        _insert_pole(conn, "pole-new", recent)
        before = {p[0] for p in _partitions(conn, POLE.table)}
    # Two hours of retention from now on: the partition holding the 5.5-hour-old reading is past it.
    shorter = db.model_copy(update={"retention": "2 hours"})
    init_schema(shorter)
    with psycopg.connect(db.url, autocommit=True) as conn:
        run_maintenance(conn)
        after = _partitions(conn, POLE.table)
        kept = conn.execute("SELECT device_id FROM reading_smart_pole ORDER BY 1").fetchall()
        oldest = min(p[1] for p in after if p[1] is not None)
    assert kept == [("pole-new",)]
    assert {p[0] for p in after} < before | {p[0] for p in after}
    assert len(before - {p[0] for p in after}) >= 3  # the partitions older than two hours went
    assert oldest >= now - timedelta(hours=3)


def test_plain_tables_of_an_older_schema_are_converted_with_their_readings(
    postgres_plain: PostgresServer,
) -> None:
    """A database initialised without pg_partman (schema version 2 had plain tables) keeps every
    reading when the next `db init` finds pg_partman and partitions its tables."""
    db = _new_database(postgres_plain, partman=False, chunk_interval="1 day")
    init_schema(db)
    name = db.url.rsplit("/", 1)[1]
    now = datetime.now(UTC).replace(microsecond=0)
    times = [now - timedelta(days=d, minutes=7) for d in range(3)]
    with psycopg.connect(db.url, autocommit=True) as conn:
        assert is_partitioned(conn, POLE.table) is False
        for n, at in enumerate(times):
            _insert_pole(conn, f"pole-{n}", at)
    postgres_plain.install_partman(name)
    init_schema(db)
    with psycopg.connect(db.url) as conn:
        assert is_partitioned(conn, POLE.table)
        stored = conn.execute("SELECT time FROM reading_smart_pole ORDER BY time").fetchall()
        assert [r[0] for r in stored] == sorted(times)
        # The readings are in time partitions, not in the default one.
        in_default = conn.execute("SELECT count(*) FROM reading_smart_pole_default").fetchone()
        assert in_default == (0,)
        assert conn.execute("SELECT to_regclass('reading_smart_pole_unpartitioned')").fetchone() == (None,)
        # The unique key came along.
        with pytest.raises(psycopg.errors.UniqueViolation):
            _insert_pole(conn, "pole-0", times[0])


def test_timescaledb_gets_a_retention_policy(postgres_timescaledb: PostgresServer) -> None:
    url = postgres_timescaledb.create_database(f"t_{uuid.uuid4().hex[:12]}")
    db = DatabaseSettings(url=url, retention="6 hours", chunk_interval="1 hour")
    info = init_schema(db)
    assert info.has_timescaledb
    with psycopg.connect(url) as conn:
        jobs = conn.execute(
            "SELECT hypertable_name FROM timescaledb_information.jobs WHERE proc_name = 'policy_retention'"
        ).fetchall()
        compression = conn.execute(
            "SELECT count(*) FROM timescaledb_information.jobs WHERE proc_name = 'policy_compression'"
        ).fetchone()
    assert {j[0] for j in jobs} == {k.table for k in KINDS}
    assert compression == (len(KINDS),)


def test_a_retention_spans_at_least_four_partitions() -> None:
    """`--retention-hours`: daily partitions from 4 days, hourly from 4 hours, then 15 and 5
    minutes, so a short retention can be watched dropping partitions within the hour."""
    assert [partition_width(h) for h in (24 * 30, 96, 95, 4, 3.9, 1, 0.5, 0.1)] == [
        "1 day",
        "1 day",
        "1 hour",
        "1 hour",
        "15 minutes",
        "15 minutes",
        "5 minutes",
        "5 minutes",
    ]
    settings = with_retention_hours(Settings(), 0.25)
    assert (settings.database.retention, settings.database.chunk_interval) == ("900 seconds", "5 minutes")
