"""Retention of the dead letters and closed alerts (cityneuron.table_retention) on real PostgreSQL,
plain and with TimescaleDB: through `cityneuron db maintain` and ingest's own timer."""

from __future__ import annotations

import time
from datetime import timedelta

import psycopg
import pytest

from cityneuron.cli import main
from cityneuron.errors import ConfigError
from cityneuron.partitions import maintain
from cityneuron.settings import DatabaseSettings, Settings
from cityneuron.table_retention import prune
from ingest.service import IngestService


def _dead_letters(conn: psycopg.Connection, count: int, age: timedelta) -> None:
    conn.execute(
        "INSERT INTO dead_letter (received_at, topic, device_id, reason, detail, payload)"
        " SELECT now() - %s::interval, 'city/x/water_meter/w1/telemetry', 'w1', 'too_old', 'old', '\\x00'::bytea"
        " FROM generate_series(1, %s)",
        (age, count),
    )


def _alerts(
    conn: psycopg.Connection, count: int, opened_ago: timedelta, closed_ago: timedelta | None, prefix: str
) -> None:
    """``count`` alerts of distinct devices opened ``opened_ago`` (all at the same instant) and
    closed ``closed_ago`` (None: still open)."""
    conn.execute(
        "INSERT INTO alerts (device_id, kind, district, rule, severity, opened_at, closed_at, value)"
        " SELECT %s || g, 'smart_pole', 'futian', 'lamp_fault', 'warning', now() - %s::interval, now() - %s::interval, 1"
        " FROM generate_series(1, %s) g",
        (prefix, opened_ago, closed_ago, count),
    )


def _count(conn: psycopg.Connection, query: str) -> int:
    row = conn.execute(query).fetchone()
    assert row is not None
    return int(row[0])


def _connect(db: DatabaseSettings) -> psycopg.Connection:
    return psycopg.connect(db.url, autocommit=True)


H = timedelta(hours=1)
D = timedelta(days=1)


def test_maintain_removes_old_dead_letters_and_closed_alerts_only(any_database: DatabaseSettings) -> None:
    """Plain PostgreSQL (with pg_partman) and TimescaleDB (without): the same maintenance run."""
    db = any_database.model_copy(
        update={"dead_letter_retention": "30 days", "closed_alert_retention": "365 days"}
    )
    with _connect(db) as conn:
        # More than one batch (10,000 rows per DELETE) past the retention.
        _dead_letters(conn, 25_000, 31 * D)
        _dead_letters(conn, 7, 29 * D)
        _alerts(conn, 5, 400 * D, 366 * D, "gone")
        _alerts(conn, 3, 400 * D, 364 * D, "recent")  # opened long ago, closed within the retention
        _alerts(conn, 4, 3650 * D, None, "open")  # open ten years: never removed
    pruned = maintain(db)
    assert (pruned.dead_letters, pruned.closed_alerts) == (25_000, 5)
    with _connect(db) as conn:
        assert _count(conn, "SELECT count(*) FROM dead_letter") == 7
        assert (
            _count(conn, "SELECT count(*) FROM dead_letter WHERE received_at < now() - interval '30 days'")
            == 0
        )
        kept = conn.execute(
            "SELECT left(device_id, 4), count(*) FROM alerts GROUP BY 1 ORDER BY 1"
        ).fetchall()
        assert kept == [("open", 4), ("rece", 3)]


def test_readings_retention_caps_dead_letters_and_keeps_closed_alerts_longer(
    database: DatabaseSettings,
) -> None:
    """A too_old dead letter of readings already dropped goes with them; a closed alert stays as
    long as the readings it explains."""
    db = database.model_copy(
        update={
            "retention": "6 hours",
            "dead_letter_retention": "30 days",
            "closed_alert_retention": "1 hour",
        }
    )
    with _connect(db) as conn:
        _dead_letters(conn, 2, 7 * H)  # inside 30 days, past the readings' 6 hours
        _dead_letters(conn, 3, 5 * H)
        _alerts(conn, 4, 3 * H, 2 * H, "kept")  # past its own hour, inside the readings' 6 hours
        _alerts(conn, 1, 8 * H, 7 * H, "gone")
        pruned = prune(conn, db)
        assert (pruned.dead_letters, pruned.closed_alerts) == (2, 1)
        assert _count(conn, "SELECT count(*) FROM dead_letter") == 3
        assert _count(conn, "SELECT count(*) FROM alerts WHERE device_id LIKE 'kept%'") == 4
        assert _count(conn, "SELECT count(*) FROM alerts") == 4


def test_no_retention_for_dead_letters_means_the_readings_one(database: DatabaseSettings) -> None:
    db = database.model_copy(
        update={"retention": "2 hours", "dead_letter_retention": None, "closed_alert_retention": None}
    )
    with _connect(db) as conn:
        _dead_letters(conn, 2, 3 * H)
        _dead_letters(conn, 1, 1 * H)
        _alerts(conn, 2, 3650 * D, 3000 * D, "old")  # closed alerts without a retention: kept
        pruned = prune(conn, db)
        assert (pruned.dead_letters, pruned.closed_alerts, pruned.closed_alert_cutoff) == (2, 0, None)
        assert _count(conn, "SELECT count(*) FROM dead_letter") == 1
        assert _count(conn, "SELECT count(*) FROM alerts") == 2


def test_batches_walk_past_old_open_alerts_and_equal_times(database: DatabaseSettings) -> None:
    """Many small batches: closed alerts behind more open ones than a batch holds, all opened at
    the same instant, are still found; dead letters in many batches all go."""
    db = database.model_copy(update={"dead_letter_retention": "1 day", "closed_alert_retention": "1 day"})
    with _connect(db) as conn:
        _dead_letters(conn, 1_050, 2 * D)
        _alerts(conn, 120, 10 * D, None, "open")
        _alerts(conn, 130, 10 * D, 5 * D, "shut")  # the same opened_at as the open ones
        _alerts(conn, 30, 20 * D, None, "older")
        _alerts(conn, 10, 2 * H, H, "new")
        pruned = prune(conn, db, batch_rows=25)
        assert (pruned.dead_letters, pruned.closed_alerts) == (1_050, 130)
        assert _count(conn, "SELECT count(*) FROM dead_letter") == 0
        assert _count(conn, "SELECT count(*) FROM alerts WHERE closed_at IS NULL") == 150
        assert _count(conn, "SELECT count(*) FROM alerts WHERE closed_at IS NOT NULL") == 10


def test_db_maintain_prints_what_it_removed(
    database: DatabaseSettings, capsys: pytest.CaptureFixture[str]
) -> None:
    with _connect(database) as conn:
        _dead_letters(conn, 3, 40 * D)
        _alerts(conn, 2, 500 * D, 400 * D, "gone")
    assert main(["db", "maintain", "--database-url", database.url]) == 0
    out = capsys.readouterr().out
    assert "dead letters: 3 removed (received before " in out
    assert "closed alerts: 2 removed (closed before " in out


def test_a_retention_that_is_no_interval_is_a_config_error(database: DatabaseSettings) -> None:
    with _connect(database) as conn:
        for bad in ("thirty days", "-1 day"):
            with pytest.raises(ConfigError, match="dead_letter_retention"):
                prune(conn, database.model_copy(update={"dead_letter_retention": bad}))


def test_ingest_expires_dead_letters_and_closed_alerts_on_its_own(settings: Settings) -> None:
    """No cron needed: a running ingest applies the table retention every interval."""
    settings = settings.model_copy(
        update={"ingest": settings.ingest.model_copy(update={"table_retention_interval_s": 0.2})}
    )
    db = settings.database
    with _connect(db) as conn:
        _dead_letters(conn, 4, 31 * D)
        _dead_letters(conn, 1, H)
        _alerts(conn, 2, 400 * D, 366 * D, "gone")
        _alerts(conn, 1, 400 * D, None, "open")
    with IngestService(settings) as service, _connect(db) as conn:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if (
                _count(conn, "SELECT count(*) FROM dead_letter") == 1
                and _count(conn, "SELECT count(*) FROM alerts") == 1
            ):
                break
            time.sleep(0.1)
        assert _count(conn, "SELECT count(*) FROM dead_letter") == 1
        assert conn.execute("SELECT device_id FROM alerts").fetchall() == [("open1",)]
        text = service.metrics.registry.get_sample_value(
            "cityneuron_ingest_rows_expired_total", {"table": "dead_letter"}
        )
        assert text == 4
