"""`cityneuron load` next to a live city: its own devices leave the city's untouched, a brief
ingest stall within --settle-timeout is not loss, and an unreachable broker or database exits
with the documented status. Real Mosquitto, real ingest, real PostgreSQL."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from cityneuron.catalog import KINDS
from cityneuron.cli import main
from cityneuron.servers import free_port
from cityneuron.settings import Settings
from ingest.service import IngestService
from simulator.city import build_city
from simulator.load.cli import EXIT_UNREACHABLE

_QUALITY = "device_id, messages, seq_max, seq_gaps, seq_duplicates, seq_reordered, last_seen_at"


@pytest.fixture
def ingest(settings: Settings) -> Iterator[IngestService]:
    with IngestService(settings) as service:
        assert service.wait_ready(30)
        yield service


def _load(settings: Settings, *extra: str) -> list[str]:
    return [
        "load",
        "--mqtt-url",
        f"mqtt://127.0.0.1:{settings.mqtt.port}",
        "--database-url",
        settings.database.url,
        "--min-rate-fraction",
        "0",  # the rate gate has its own test (test_load.py); a busy machine must not fail these
        "--json",
        *extra,
    ]


def _wait_until(predicate: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def _city_quality(url: str) -> dict[str, tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            f"SELECT {_QUALITY}, l.time, l.seq FROM device_activity a LEFT JOIN latest_reading l USING (device_id)"
            " WHERE NOT device_id LIKE 'load-%' ORDER BY device_id"
        ).fetchall()
    return {row[0]: row[1:] for row in rows}


def test_load_uses_devices_of_its_own_and_leaves_the_city_untouched(
    settings: Settings, ingest: IngestService, capsys: pytest.CaptureFixture[str]
) -> None:
    url = settings.database.url
    city_ids = {d for table in build_city("small", seed=42) for d in table.device_ids()}
    # A live city: every device has reported once (seq counters, latest values, quality).
    assert main(["sim", "--once", "--mqtt-port", str(settings.mqtt.port), "--preset", "small"]) == 0
    capsys.readouterr()

    def city_stored() -> bool:
        with psycopg.connect(url) as conn:
            row = conn.execute("SELECT count(*) FROM latest_reading").fetchone()
        return row is not None and row[0] == len(city_ids)

    _wait_until(city_stored, 60, "the city's first reports")
    before = _city_quality(url)
    assert set(before) == city_ids

    # Every kind of the city, so every readings table is exercised; the rate is not the point.
    status = main(
        _load(
            settings,
            "--rate",
            "300",
            "--duration",
            "3",
            "--settle-timeout",
            "30",
        )
    )
    report = json.loads(capsys.readouterr().out)
    assert status == 0, report
    rec = report["reconciliation"]
    assert rec["stored"] == rec["expected"] > 200 and rec["missing"] == 0
    # Not one of the city's devices moved: no reading, no seq gap, no new latest value.
    assert _city_quality(url) == before
    with psycopg.connect(url) as conn:
        # The load's devices were removed with everything they left once the report was made.
        assert conn.execute("SELECT count(*) FROM devices WHERE device_id LIKE 'load-%'").fetchone() == (0,)
        for kind in KINDS:
            count = conn.execute(
                sql.SQL("SELECT count(*) FROM {} WHERE device_id LIKE 'load-%%'").format(
                    sql.Identifier(kind.table)
                )
            ).fetchone()
            assert count == (0,), kind.name


def test_load_keep_devices_shows_them_under_their_own_ids(
    settings: Settings, ingest: IngestService, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(
        _load(
            settings,
            "--rate",
            "200",
            "--duration",
            "1",
            "--devices",
            "20",
            "--keep-devices",
            "--settle-timeout",
            "30",
        )
    )
    report = json.loads(capsys.readouterr().out)
    assert status == 0, report
    with psycopg.connect(settings.database.url) as conn:
        rows = conn.execute(
            "SELECT device_id, meta, messages FROM devices JOIN device_activity USING (device_id) ORDER BY device_id"
        ).fetchall()
    assert len(rows) == 20
    assert all(d.startswith("load-") and meta == {"load_test": True} and n > 0 for d, meta, n in rows)


def _stall_ingest(url: str, hold_s: float, locked: threading.Event) -> None:
    """Hold every readings table in EXCLUSIVE mode: the ingest's COPY waits, readers do not."""
    with psycopg.connect(url) as conn, conn.transaction():
        for kind in KINDS:
            conn.execute(sql.SQL("LOCK TABLE {} IN EXCLUSIVE MODE").format(sql.Identifier(kind.table)))
        locked.set()
        time.sleep(hold_s)


def test_settle_timeout_outlasts_a_brief_ingest_stall(
    settings: Settings, ingest: IngestService, capsys: pytest.CaptureFixture[str]
) -> None:
    # The ingest stores nothing for about 12 s after the publishing ends; --settle-timeout 40
    # must wait for it (it used to give up after 5 s without progress and report loss).
    locked = threading.Event()
    stall = threading.Thread(target=_stall_ingest, args=(settings.database.url, 14.0, locked))
    stall.start()
    try:
        assert locked.wait(10)
        status = main(
            _load(settings, "--rate", "100", "--duration", "1", "--devices", "20", "--settle-timeout", "40")
        )
    finally:
        stall.join()
    report = json.loads(capsys.readouterr().out)
    rec = report["reconciliation"]
    assert status == 0, report
    assert rec["stored"] == rec["expected"] == 100 and rec["missing"] == 0
    assert rec["settle_s"] >= 6, rec


def test_settle_timeout_bounds_the_wait(
    settings: Settings, ingest: IngestService, capsys: pytest.CaptureFixture[str]
) -> None:
    # Dropped readings never arrive: the run gives up after --settle-timeout, not before.
    started = time.monotonic()
    status = main(
        _load(
            settings,
            "--rate",
            "100",
            "--duration",
            "1",
            "--devices",
            "20",
            "--inject-drop-every",
            "10",
            "--settle-timeout",
            "8",
        )
    )
    report = json.loads(capsys.readouterr().out)
    assert status != 0 and report["reconciliation"]["missing"] == 10
    assert 8 <= report["reconciliation"]["settle_s"] < 8 + 3
    assert time.monotonic() - started < 60


@pytest.mark.parametrize("processes", ["1", "2"])
def test_unreachable_broker_exits_with_the_documented_status(
    settings: Settings, processes: str, capsys: pytest.CaptureFixture[str]
) -> None:
    args = _load(settings, "--duration", "1", "--processes", processes)
    args[args.index("--mqtt-url") + 1] = f"mqtt://127.0.0.1:{free_port()}"
    assert main(args) == EXIT_UNREACHABLE
    err = capsys.readouterr().err
    assert err.startswith("cityneuron load: cannot connect") and "refused" in err.lower()
    assert len(err.strip().splitlines()) == 1


def test_unreachable_database_exits_with_the_documented_status(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    args = _load(settings, "--duration", "1")
    args[args.index("--database-url") + 1] = f"postgresql://nobody@127.0.0.1:{free_port()}/none"
    assert main(args) == EXIT_UNREACHABLE
    err = capsys.readouterr().err
    assert err.startswith("cityneuron load: cannot connect") and len(err.strip().splitlines()) == 1
