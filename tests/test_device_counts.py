"""Device counts kept by the database (cityneuron.device_counts) against a full count, on real PostgreSQL."""

from __future__ import annotations

import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from devicerows import add_devices
from psycopg import sql

from api.queries.liveness import status_sql
from cityneuron.device_counts import prune, status_counts_sql
from cityneuron.schema import _MIGRATIONS, SCHEMA_VERSION, init_schema
from cityneuron.servers import PostgresServer
from cityneuron.settings import DatabaseSettings
from ingest.alerts.rules import RuleSet, SilentRule
from ingest.alerts.store import check_silence

SILENT_AFTER = 3.0
NOW = datetime.now(UTC)


@pytest.fixture(autouse=True)
def _fresh_now() -> None:
    """The fleet's times count back from the start of each test, not from the import of this
    module: in a long session "seen 20 s ago" would otherwise be minutes ago (silent)."""
    global NOW
    NOW = datetime.now(UTC)


def _kept(conn: psycopg.Connection, district: str | None = None) -> Counter[tuple[str, str, str]]:
    query, params = status_counts_sql(SILENT_AFTER, district)
    return Counter({(d, k, s): int(n) for d, k, s, n in conn.execute(query, params).fetchall() if n})


def _scanned(conn: psycopg.Connection) -> Counter[tuple[str, str, str]]:
    """The definition: api.queries.liveness' status of every row, counted by scanning them all."""
    status = status_sql(SILENT_AFTER, alias="a")
    query = sql.SQL(
        "SELECT d.district, d.kind, {} AS s, count(*) FROM devices d"
        " JOIN device_activity a ON a.device_id = d.device_id GROUP BY 1, 2, 3"
    ).format(status.sql)
    return Counter({(d, k, s): int(n) for d, k, s, n in conn.execute(query, status.named_params).fetchall()})


def _register(
    conn: psycopg.Connection, rows: list[tuple[str, str, str, bool | None, datetime | None]]
) -> None:
    add_devices(conn, ("device_id", "kind", "district", "online", "last_seen_at"), rows)


def _fleet() -> list[tuple[str, str, str, bool | None, datetime | None]]:
    """Poles (60 s interval: silent after 3 min) and water meters (a day: after 3 days) in every
    state, far from the thresholds; plus a kind outside the catalog (never silent)."""
    rows: list[tuple[str, str, str, bool | None, datetime | None]] = []
    for n in range(40):
        district = ("futian", "luohu")[n % 2]
        seen = (NOW - timedelta(seconds=20), NOW - timedelta(hours=2), None)[n % 3]
        online = (True, None, False, True)[n % 4]
        rows.append((f"pole-{n}", "smart_pole", district, online, seen))
        meter_seen = (NOW - timedelta(hours=20), NOW - timedelta(days=5), None)[n % 3]
        rows.append((f"wm-{n}", "water_meter", district, online, meter_seen))
    rows.append(("odd-1", "kiosk", "futian", True, NOW - timedelta(days=400)))
    return rows


def test_counts_follow_every_kind_of_change(database: DatabaseSettings) -> None:
    with psycopg.connect(database.url, autocommit=True) as conn:
        _register(conn, _fleet())
        assert _kept(conn) == _scanned(conn)
        assert _kept(conn)[("futian", "smart_pole", "silent")] > 0
        assert _kept(conn)[("futian", "kiosk", "online")] == 1
        # Ingest-style bulk update of last_seen_at (one statement for many devices), a status
        # change, an upsert, a delete: one statement-level trigger run each.
        conn.execute("UPDATE device_activity SET last_seen_at = now() WHERE device_id LIKE 'pole-1%'")
        conn.execute("UPDATE devices SET online = false WHERE device_id IN ('wm-3', 'wm-4')")
        conn.execute(
            "INSERT INTO devices (device_id, kind, district) VALUES ('pole-2', 'smart_pole',"
            " 'futian'), ('pole-new', 'smart_pole', 'luohu')"
            " ON CONFLICT (device_id) DO UPDATE SET online = true"
        )
        conn.execute("UPDATE devices SET kind = 'water_meter', district = 'luohu' WHERE device_id = 'pole-6'")
        conn.execute("UPDATE devices SET device_id = 'pole-renamed' WHERE device_id = 'pole-8'")
        conn.execute("DELETE FROM devices WHERE device_id IN ('pole-5', 'wm-7')")
        assert _kept(conn) == _scanned(conn)
        assert _kept(conn, "luohu") == Counter({k: n for k, n in _scanned(conn).items() if k[0] == "luohu"})
        # A rolled-back change leaves the counts as they were.
        with pytest.raises(psycopg.errors.DivisionByZero), conn.transaction():
            conn.execute("UPDATE devices SET online = false")
            conn.execute("SELECT 1 / 0")
        assert _kept(conn) == _scanned(conn)
        # Every pole heard from now: their old buckets fall to zero and are pruned.
        conn.execute(
            "UPDATE device_activity SET last_seen_at = now()"
            " WHERE kind = 'smart_pole' AND last_seen_at IS NOT NULL"
        )
        assert prune(conn) > 0
        assert _kept(conn) == _scanned(conn)
        conn.execute("TRUNCATE devices")
        assert not _kept(conn)


@pytest.mark.parametrize("old_version", [2, 4])
def test_migration_keeps_the_devices_already_registered(
    postgres_plain: PostgresServer, old_version: int
) -> None:
    """A database of schema version 2 (devices, no counts) or 4 (counts, state in devices):
    `db init` moves each device's state to device_activity and counts them."""
    database = DatabaseSettings(url=postgres_plain.create_database(f"t_{uuid.uuid4().hex[:12]}"))
    fleet = _fleet()
    with psycopg.connect(database.url, autocommit=True) as conn:
        conn.execute("CREATE TABLE schema_version (version integer PRIMARY KEY, applied_at timestamptz)")
        for version in range(1, old_version + 1):
            for statement in _MIGRATIONS[version]:
                conn.execute(statement)
            conn.execute("INSERT INTO schema_version VALUES (%s, now())", (version,))
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO devices (device_id, kind, district, online, last_seen_at, messages)"
                " VALUES (%s, %s, %s, %s, %s, 7)",
                fleet,
            )
    init_schema(database)
    with psycopg.connect(database.url, autocommit=True) as conn:
        assert conn.execute("SELECT max(version) FROM schema_version").fetchone() == (SCHEMA_VERSION,)
        assert sum(_kept(conn).values()) == len(fleet)
        assert _kept(conn) == _scanned(conn)
        moved = conn.execute(
            "SELECT device_id, kind, district, online, last_seen_at FROM device_activity WHERE messages = 7"
        ).fetchall()
        assert sorted(moved) == sorted(fleet)


def _silent_poles() -> set[str]:
    """The fleet's poles that are silent: heard from over 3 minutes ago, not said to be down."""
    return {
        r[0]
        for r in _fleet()
        if r[1] == "smart_pole" and r[3] is not False and r[4] and r[4] < NOW - timedelta(minutes=3)
    }


def test_silence_check_opens_and_closes_without_a_full_scan(database: DatabaseSettings) -> None:
    rules = RuleSet.of((), SilentRule())
    with psycopg.connect(database.url, autocommit=True) as conn:
        _register(conn, _fleet())
        silent_poles = _silent_poles()
        first = check_silence(conn, rules, SILENT_AFTER)
        opened = {t.device_id for t in first.transitions if t.state == "open"}
        assert {d for d in opened if d.startswith("pole-")} == silent_poles
        assert first.silent_by_kind["smart_pole"] == len(silent_poles)
        # Nothing new: the next check (from the previous thresholds) changes nothing.
        again = check_silence(conn, rules, SILENT_AFTER, first.checked_to)
        assert again.transitions == []
        # One pole speaks again, another falls silent just now (within the window above the
        # previous threshold): one closing, one opening.
        back, quiet = sorted(silent_poles)[0], "pole-0"
        conn.execute("UPDATE device_activity SET last_seen_at = now() WHERE device_id = %s", (back,))
        conn.execute(
            "UPDATE device_activity SET last_seen_at = now() - interval '4 minutes' WHERE device_id = %s",
            (quiet,),
        )
        third = check_silence(conn, rules, SILENT_AFTER, again.checked_to)
        assert {(t.state, t.device_id) for t in third.transitions} == {("closed", back), ("open", quiet)}
        assert third.silent_by_kind["smart_pole"] == len(silent_poles)


def test_silence_is_judged_only_over_the_time_ingest_listened(database: DatabaseSettings) -> None:
    """After a restart, a kind's devices are not called silent before ingest has listened for the
    kind's whole silence span; the first check after it opens every device still silent."""
    rules = RuleSet.of((), SilentRule())
    with psycopg.connect(database.url, autocommit=True) as conn:
        _register(conn, _fleet())
        silent_poles = _silent_poles()
        assert silent_poles
        just_started = check_silence(conn, rules, SILENT_AFTER, None, heard_since=NOW)
        assert just_started.transitions == []
        assert "smart_pole" not in just_started.checked_to  # the kind is still to be looked at whole
        assert just_started.silent_by_kind["smart_pole"] == len(silent_poles)  # the counts still say so
        # Listening for longer than a pole's 3 minutes: the poles are judged, from the beginning.
        later = check_silence(conn, rules, SILENT_AFTER, just_started.checked_to, NOW - timedelta(minutes=4))
        opened = {t.device_id for t in later.transitions if t.state == "open"}
        assert {d for d in opened if d.startswith("pole-")} == silent_poles
        assert "smart_pole" in later.checked_to
        assert not any(d.startswith("wm-") for d in opened)  # water meters: 3 days not yet listened
