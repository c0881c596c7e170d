"""Backfill: history through the broker and ingest, or COPYed straight into the database;
progress reports and the summary's shape."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest
from polling import wait_until
from psycopg import sql

from cityneuron import contract
from cityneuron.catalog import KINDS
from cityneuron.cli import main
from cityneuron.settings import DatabaseSettings, Settings
from ingest.service import IngestService
from simulator.backfill import backfill_broker, parse_time_ms
from simulator.city import City, build_city
from simulator.direct import backfill_direct
from simulator.drivers import Drivers
from simulator.faultlog import read_fault_log
from simulator.kinds import KindModel, build_models
from simulator.messages import telemetry_messages
from simulator.progress import ProgressReporter, ProgressSnapshot, format_summary
from simulator.scenario import load_scenario
from simulator.schedule import KindSchedule, build_schedules

_HOUR_MS = 3_600_000


def _report_readings(schedule: KindSchedule, rows: np.ndarray, slot_ms: np.ndarray) -> set[tuple[int, int]]:
    """(table row, reading time) of every reading the reports carry."""
    if schedule.frozen_readings:
        frozen = schedule.frozen_times(slot_ms)
        return set(zip(np.repeat(rows, frozen.shape[1]).tolist(), frozen.ravel().tolist(), strict=True))
    return set(zip(rows.tolist(), slot_ms.tolist(), strict=True))


def _expected(city: City, from_ms: int, to_ms: int) -> dict[str, set[tuple[str, int]]]:
    """(device id, reading time) of the reports with a slot in [from_ms, to_ms), by kind."""
    out: dict[str, set[tuple[str, int]]] = {}
    for name, schedule in build_schedules(city.tables).items():
        due = schedule.due(from_ms - 1, to_ms - 1)
        table = city.tables[name]
        out[name] = {(table.device_id(r), t) for r, t in _report_readings(schedule, due.rows, due.slot_ms)}
    return out


def _stored(url: str) -> dict[str, set[tuple[str, int]]]:
    out: dict[str, set[tuple[str, int]]] = {}
    with psycopg.connect(url) as conn:
        for kind in KINDS:
            rows = conn.execute(
                sql.SQL("SELECT device_id, (extract(epoch FROM time) * 1000)::bigint FROM {}").format(
                    sql.Identifier(kind.table)
                )
            ).fetchall()
            out[kind.name] = {(d, int(t)) for d, t in rows}
    return out


def _count(url: str, query: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(query).fetchone()
    assert row is not None
    return int(row[0])


def test_broker_backfill_stores_every_reading_of_the_range_once(settings: Settings) -> None:
    settings = settings.model_copy(
        update={"simulator": settings.simulator.model_copy(update={"scale": 0.2, "seed": 11})}
    )
    options = settings.simulator
    city = build_city(options.preset, options.scale, options.seed)
    to_ms = (contract.now_ms() // 60_000) * 60_000 - _HOUR_MS
    from_ms = to_ms - 15 * 60_000
    expected = _expected(city, from_ms, to_ms)
    # The run starts with each device's latest report before the range, as a live run does.
    before: dict[str, set[tuple[str, int]]] = {}
    for name, schedule in build_schedules(city.tables).items():
        latest = schedule.latest(from_ms - 1)
        table = city.tables[name]
        before[name] = {
            (table.device_id(r), t) for r, t in _report_readings(schedule, latest.rows, latest.slot_ms)
        }
    total = sum(len(expected[k] | before[k]) for k in expected)
    with IngestService(settings) as ingest:
        assert ingest.wait_ready(30)
        summary = backfill_broker(settings, from_ms, to_ms)
        assert summary.errors == 0
        # Each reading published exactly once: no reading in two messages, none left out.
        assert summary.readings == total
        wait_until(
            lambda: sum(len(s) for s in _stored(settings.database.url).values()) >= total,
            90,
            f"{total} readings in the database",
        )
    stored = _stored(settings.database.url)
    for name, readings in expected.items():
        assert readings <= stored[name], name
        assert stored[name] - readings == before[name] - readings, name
    assert sum(len(expected[k]) for k in expected) > 1000
    assert _count(settings.database.url, "SELECT count(*) FROM dead_letter") == 0
    assert _count(settings.database.url, "SELECT count(*) FROM devices") == city.devices


def test_direct_backfill_writes_the_range_and_is_idempotent(any_database: DatabaseSettings) -> None:
    settings = Settings(database=any_database, simulator={"scale": 0.2, "seed": 5})  # type: ignore[arg-type]
    city = build_city("small", 0.2, 5)
    to_ms = parse_time_ms("2025-03-10T06:00:00Z")
    from_ms = to_ms - 3 * _HOUR_MS
    expected = _expected(city, from_ms, to_ms)
    first = backfill_direct(settings, from_ms, to_ms)
    assert first.devices == city.devices == first.registered
    assert first.readings == first.stored == sum(len(v) for v in expected.values())
    assert _stored(any_database.url) == expected
    url = any_database.url
    with_reports = sum(1 for v in expected.values() for _ in {d for d, _ in v})
    assert _count(url, "SELECT count(*) FROM latest_reading") == with_reports
    assert _count(url, "SELECT count(*) FROM devices WHERE lat IS NOT NULL AND online") == city.devices
    # What went in is what the device would have sent on the wire.
    models = build_models(city, Drivers(city.seed))
    schedules = build_schedules(city.tables)
    with psycopg.connect(url) as conn:
        for kind in KINDS:
            due = schedules[kind.name].due(from_ms - 1, to_ms - 1)
            if not len(due):
                continue
            message = next(iter(telemetry_messages(models[kind.name], schedules[kind.name], due)))
            item = contract.decode_telemetry(message.payload)[-1]
            reading = contract.decode_reading(item)
            device_id = contract.parse_topic(message.topic).device_id
            row = conn.execute(
                sql.SQL("SELECT seq, {} FROM {} WHERE device_id = %s AND time = %s").format(
                    sql.SQL(", ").join(sql.Identifier(n) for n in kind.metric_names),
                    sql.Identifier(kind.table),
                ),
                (device_id, contract.ms_to_datetime(reading.ts_ms)),
            ).fetchone()
            assert row is not None, kind.name
            assert row[0] == reading.seq
            stored = {n: v for n, v in zip(kind.metric_names, row[1:], strict=True) if v is not None}
            assert stored == pytest.approx(reading.metrics), kind.name
    # Running it again changes nothing.
    second = backfill_direct(settings, from_ms, to_ms)
    assert second.registered == 0 and second.stored == 0
    assert second.readings == first.readings
    assert _stored(url) == expected


def test_cli_direct_registry_and_backfill(
    database: DatabaseSettings, capsys: pytest.CaptureFixture[str]
) -> None:
    common = ["--preset", "small", "--scale", "0.1", "--database-url", database.url, "--json"]
    assert main(["--log-level", "WARNING", "sim", "--direct", *common]) == 0
    registry = json.loads(capsys.readouterr().out)
    assert registry["devices"] == registry["registered"] == build_city("small", 0.1).devices
    argv = [
        "sim",
        "--direct",
        "--backfill-from",
        "2025-01-01T00:00:00Z",
        "--backfill-to",
        "2025-01-01T01:00Z",
    ]
    assert main(["--log-level", "WARNING", *argv, *common]) == 0
    out, err = capsys.readouterr()
    summary = json.loads(out)
    assert set(summary) == {"devices", "registered", "reports", "readings", "stored", "refused", "elapsed_s"}
    assert summary["registered"] == 0 and summary["stored"] == summary["readings"] > 0
    # Progress went to stderr as JSON lines, never to stdout.
    for line in err.splitlines():
        assert set(json.loads(line)["progress"]) == set(ProgressSnapshot.__dataclass_fields__)


_DIRECT_FAULTS = """
[rates.smart_pole]
stuck_at = 2.0
spikes = 2.0
dropout = 2.0
duplicate = 2.0
clock_skew = 2.0
[stuck_at]
window = "6h"
duration = ["1h", "2h"]
metrics = ["noise_dba"]
[spikes]
window = "6h"
duration = ["1h", "2h"]
probability = 0.5
metrics = ["temperature_c"]
[dropout]
window = "6h"
duration = ["30m", "1h"]
[duplicate]
window = "6h"
duration = ["1h", "2h"]
[clock_skew]
window = "6h"
duration = ["1h", "2h"]
"""


def _rows(url: str, kind: str) -> dict[str, list[tuple[int, dict[str, float | None]]]]:
    """Stored readings of ``kind`` by device: (time ms, metrics) in time order."""
    metrics = KINDS[[k.name for k in KINDS].index(kind)].metric_names
    query = sql.SQL(
        "SELECT device_id, (extract(epoch FROM time) * 1000)::bigint, {} FROM {} ORDER BY 1, 2"
    ).format(sql.SQL(", ").join(sql.Identifier(m) for m in metrics), sql.Identifier(f"reading_{kind}"))
    out: dict[str, list[tuple[int, dict[str, float | None]]]] = {}
    with psycopg.connect(url) as conn:
        for device, t, *values in conn.execute(query).fetchall():
            out.setdefault(device, []).append((int(t), dict(zip(metrics, values, strict=True))))
    return out


def _truth(model: KindModel, row: int, times: list[int]) -> dict[str, np.ndarray]:
    """The model's values of one device at ``times``, rounded as stored (NaN: no such sensor)."""
    values = model.step(np.full(len(times), row, dtype=np.int64), np.array(times, dtype=np.int64))
    return {m: np.round(v, model.decimals.get(m, 2)) for m, v in values.items()}


def test_direct_backfill_applies_the_scenario_and_the_faults(
    database: DatabaseSettings, tmp_path: Path
) -> None:
    scenario_file, faults_file, fault_log = (
        tmp_path / "storm.toml",
        tmp_path / "faults.toml",
        tmp_path / "log.jsonl",
    )
    scenario_file.write_text(
        '[[event]]\ntype = "rainstorm"\nstart = "+30m"\nduration = "2h"\ndistricts = ["futian"]\n'
        "rain_peak_mmh = 80.0\n"
    )
    faults_file.write_text(_DIRECT_FAULTS)
    options = {"scale": 0.5, "seed": 5, "scenario_file": scenario_file, "faults_file": faults_file}
    settings = Settings(database=database, simulator={**options, "fault_log": fault_log})  # type: ignore[arg-type]
    from_ms = parse_time_ms("2025-03-10T00:00:00Z")
    to_ms = from_ms + 3 * _HOUR_MS
    backfill_direct(settings, from_ms, to_ms)
    city = build_city("small", 0.5, 5)
    log = read_fault_log(fault_log)
    by_type: dict[str, list[dict[str, Any]]] = {}
    for record in log:
        by_type.setdefault(record["type"], []).append(record)
    # Wire-only faults are not stored, so they are not logged either.
    assert set(by_type) == {"scenario.rainstorm", "stuck_at", "spikes", "dropout"}
    assert [r["district"] for r in by_type["scenario.rainstorm"]] == ["futian"]
    url = database.url

    # The rainstorm: rain and rivers rise in Futian only.
    scenario = load_scenario(scenario_file, from_ms - 1)
    calm = build_models(city, Drivers(city.seed))["hydrology_station"]
    hydro = city.tables["hydrology_station"]
    stored = _rows(url, "hydrology_station")
    for row in range(len(hydro)):
        readings = stored[hydro.device_id(row)]
        times = [t for t, _ in readings]
        truth = _truth(calm, row, times)
        rain = np.array([m["rain_mm"] for _, m in readings], dtype=float)
        level = np.array([m["water_level_m"] for _, m in readings], dtype=float)
        if hydro.district_slug(row) == "futian":
            assert rain.sum() > truth["rain_mm"].sum() + 90  # about 100 mm in 2 h at an 80 mm/h peak
            assert level.max() > truth["water_level_m"].max()
        else:
            assert np.array_equal(rain, truth["rain_mm"]) and np.array_equal(level, truth["water_level_m"])

    # The poles: missing inside dropouts, values altered only inside the logged value faults.
    poles = city.tables["smart_pole"]
    model = build_models(city, Drivers(city.seed, scenario.weather))["smart_pole"]
    schedule = build_schedules(city.tables)["smart_pole"]
    due = schedule.due(from_ms - 1, to_ms - 1)
    episodes: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for fault in ("stuck_at", "spikes", "dropout"):
        for record in by_type[fault]:
            episodes.setdefault((record["device_id"], fault), []).append(record)

    def inside(device: str, fault: str, t: int) -> dict[str, Any] | None:
        return next((r for r in episodes.get((device, fault), []) if r["start_ms"] <= t < r["end_ms"]), None)

    expected = {
        (poles.device_id(r), t)
        for r, t in zip(due.rows.tolist(), due.slot_ms.tolist(), strict=True)
        if inside(poles.device_id(r), "dropout", t) is None
    }
    stored = _rows(url, "smart_pole")
    assert {(d, t) for d, readings in stored.items() for t, _ in readings} == expected
    assert len(expected) < len(due)
    row_of = {poles.device_id(r): r for r in range(len(poles))}
    stuck_seen: set[str] = set()
    spiked: set[str] = set()
    # A spike beyond the catalog range is refused as the ingest refuses it (dead-lettered).
    with psycopg.connect(url) as conn:
        refused = {
            (device, int(detail.split()[1].rstrip(":")))
            for device, detail in conn.execute(
                "SELECT device_id, detail FROM dead_letter WHERE reason = 'out_of_range'"
            )
        }
    for device, readings in stored.items():
        times = [t for t, _ in readings]
        truth = _truth(model, row_of[device], times)
        for i, (t, metrics) in enumerate(readings):
            for name, value in metrics.items():
                true = float(truth[name][i])
                if value is None and name == "temperature_c" and (device, t) in refused:
                    assert inside(device, "spikes", t) is not None, (device, t)
                    spiked.add(device)
                elif value is None:
                    assert np.isnan(true), (device, name)
                elif name == "noise_dba" and (stuck := inside(device, "stuck_at", t)) is not None:
                    assert value == pytest.approx(stuck["params"]["value"], abs=0.051)
                    stuck_seen.add(device)
                elif name == "temperature_c" and value != true:
                    spike = inside(device, "spikes", t)
                    assert spike is not None, (device, t)
                    assert abs(value - true) >= 3 * 0.01 * (50 - -10) - 0.01
                    spiked.add(device)
                else:
                    assert value == true, (device, name, t)
    assert stuck_seen == {r["device_id"] for r in by_type["stuck_at"]}
    assert spiked == {r["device_id"] for r in by_type["spikes"]}


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_progress_reports_rates_and_json_shape() -> None:
    stream = io.StringIO()
    clock = _Clock()
    progress = ProgressReporter(3050, stream=stream, json_lines=True, log_interval_s=30.0, clock=clock)
    progress.update(10, 10, 0, 1_700_000_000_000, 0.0)
    assert stream.getvalue() == ""  # nothing before the first interval
    clock.now += 30.0
    progress.update(3000, 6000, 2, 1_700_000_030_000, 1.25)
    record = json.loads(stream.getvalue())["progress"]
    assert record == {
        "devices": 3050,
        "messages": 3000,
        "readings": 6000,
        "errors": 2,
        "msgs_per_s": 100.0,
        "readings_per_s": 200.0,
        "lag_s": 1.2,
        "simulated_time": "2023-11-14T22:13:50Z",
        "elapsed_s": 30.0,
    }
    progress.close()
    line = format_summary({"devices": 3050, "messages": 3000, "elapsed_s": 30.0})
    assert "messages=3,000" in line and "(100 msgs/s)" in line


def test_progress_redraws_in_place_on_a_terminal() -> None:
    class _Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = _Terminal()
    clock = _Clock()
    progress = ProgressReporter(10, stream=stream, clock=clock)
    for step in range(1, 4):
        clock.now += 1.0
        progress.update(step * 10, step * 10, 0, 1_700_000_000_000, 0.0)
    progress.close()
    text = stream.getvalue()
    assert text.count("\r") == 3 and text.endswith("\n") and text.count("\n") == 1
    assert "30 msgs" in text and "10 devices" in text
