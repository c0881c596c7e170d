"""The same faults through the broker and ingest, and straight into the database (--direct),
store the same readings and refuse the same ones (docs/faults.md).

Spikes push values far outside their catalog ranges (pole humidity at hundreds of %, a
manhole battery at minus tens of volts): the ingest dead-letters those metrics as
``out_of_range`` and stores the rest of the reading. A direct load used to store them as they
were.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import orjson
import psycopg
from polling import wait_until
from psycopg import sql
from test_sim_backfill import _expected

from cityneuron import contract
from cityneuron.catalog import KIND_BY_NAME
from cityneuron.servers import PostgresServer
from cityneuron.settings import DatabaseSettings, Settings
from ingest.service import IngestService
from simulator.backfill import backfill_broker
from simulator.city import build_city
from simulator.direct import backfill_direct

# Every device of these kinds is inside a spike episode the whole time; half its reports are hit.
_FAULTS = """
[rates.smart_pole]
spikes = 24.0
[rates.manhole_cover]
spikes = 24.0
[rates.water_meter]
spikes = 24.0
[spikes]
window = "1h"
duration = ["1h", "1h"]
probability = 0.5
spike_factor = [6.0, 10.0]
"""
_KINDS = ("smart_pole", "manhole_cover", "water_meter")
_HOUR_MS = 3_600_000
_TS_IN_DETAIL = re.compile(r"ts (\d+): ")

Key = tuple[str, int]  # device id, reading time (ms)


def _rows(url: str, kind: str) -> dict[Key, tuple[Any, ...]]:
    metrics = KIND_BY_NAME[kind].metric_names
    query = sql.SQL("SELECT device_id, (extract(epoch FROM time) * 1000)::bigint, {} FROM {}").format(
        sql.SQL(", ").join(map(sql.Identifier, metrics)), sql.Identifier(KIND_BY_NAME[kind].table)
    )
    with psycopg.connect(url) as conn:
        return {(row[0], int(row[1])): tuple(row[2:]) for row in conn.execute(query)}


def _dead_letters(url: str) -> dict[Key, set[tuple[str, str, str, str, bytes]]]:
    """(topic, device, reason, detail, payload) by the (device, reading time) they refuse."""
    out: dict[Key, set[tuple[str, str, str, str, bytes]]] = {}
    with psycopg.connect(url) as conn:
        for topic, device, reason, detail, payload in conn.execute(
            "SELECT topic, device_id, reason, detail, payload FROM dead_letter"
        ):
            match = _TS_IN_DETAIL.search(detail)
            assert match is not None, detail
            out.setdefault((device, int(match[1])), set()).add(
                (topic, device, reason, detail, bytes(payload))
            )
    return out


def _count(url: str, query: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(query).fetchone()
    assert row is not None
    return int(row[0])


def test_direct_and_broker_store_and_refuse_the_same(
    settings: Settings, postgres_plain: PostgresServer, tmp_path: Path
) -> None:
    faults_file = tmp_path / "spikes.toml"
    faults_file.write_text(_FAULTS)
    options = {"scale": 0.2, "seed": 5, "faults_file": faults_file}
    settings = settings.model_copy(update={"simulator": settings.simulator.model_copy(update=options)})
    to_ms = (contract.now_ms() // 60_000) * 60_000 - _HOUR_MS
    from_ms = to_ms - _HOUR_MS
    city = build_city("small", 0.2, 5)
    expected = _expected(city, from_ms, to_ms)

    direct_db = DatabaseSettings(url=postgres_plain.create_database("direct_parity"))
    summary = backfill_direct(settings.model_copy(update={"database": direct_db}), from_ms, to_ms)
    direct_letters = _dead_letters(direct_db.url)
    assert summary.refused == sum(len(v) for v in direct_letters.values()) > 100
    direct_rows = {kind: _rows(direct_db.url, kind) for kind in _KINDS}
    # Nothing outside the catalog ranges reached the database (the defect).
    for kind, rows in direct_rows.items():
        for values in rows.values():
            for metric, value in zip(KIND_BY_NAME[kind].metrics, values, strict=True):
                assert value is None or metric.low <= value <= metric.high, (kind, metric.name, value)
    assert {reason for letters in direct_letters.values() for _, _, reason, _, _ in letters} == {
        "out_of_range"
    }
    # A refused metric leaves the rest of its reading stored (NULL in its place), and a meter's
    # frozen readings are refused one by one, as items of their upload.
    assert set(direct_letters) & set(direct_rows["smart_pole"])
    details = [detail for letters in direct_letters.values() for _, _, _, detail, _ in letters]
    assert any(detail.startswith("reading ") for detail in details)
    # A second load writes nothing twice, dead letters included.
    again = backfill_direct(settings.model_copy(update={"database": direct_db}), from_ms, to_ms)
    assert again.stored == 0 and again.refused == 0
    assert _dead_letters(direct_db.url) == direct_letters

    url = settings.database.url
    stored_readings = sum(len(r) for r in direct_rows.values())
    with IngestService(settings) as ingest:
        assert ingest.wait_ready(30)
        published = backfill_broker(settings, from_ms, to_ms)
        assert published.errors == 0
        wait_until(
            lambda: (
                sum(len(_rows(url, kind).keys() & expected[kind]) for kind in _KINDS) >= stored_readings
                and _count(url, "SELECT count(*) FROM dead_letter") >= summary.refused
            ),
            120,
            "the broker path's rows and dead letters",
        )
    broker_letters = _dead_letters(url)
    for kind in _KINDS:
        in_range = expected[kind]
        broker_rows = {key: values for key, values in _rows(url, kind).items() if key in in_range}
        assert set(direct_rows[kind]) <= in_range, kind
        assert broker_rows == direct_rows[kind], kind
        table = city.tables[kind]
        devices = {table.device_id(row) for row in range(len(table))}
        broker_refused = {
            key: letters for key, letters in broker_letters.items() if key in in_range and key[0] in devices
        }
        direct_refused = {key: letters for key, letters in direct_letters.items() if key[0] in devices}
        assert broker_refused == direct_refused, kind


def test_screen_refuses_as_the_ingest_does() -> None:
    """Whole readings with nothing valid are not stored; unknown metrics (a firmware rollout)
    and out-of-range ones become the ingest's dead letters; valid readings pass untouched."""
    import numpy as np

    from cityneuron.settings import IngestSettings
    from simulator.directcheck import screen
    from simulator.drivers import Drivers
    from simulator.kinds import build_models

    city = build_city("small", 0.05, 3)
    model = build_models(city, Drivers(city.seed))["manhole_cover"]
    rows = np.arange(3, dtype=np.int64)
    times = np.full(3, 1_741_665_600_000, dtype=np.int64)
    seq = np.arange(3, dtype=np.int64) + 10
    values = model.step(rows, times)
    for metric in model.kind.metrics:  # reading 0: nothing valid
        values[metric.name][0] = metric.high * 10 + 10
    values["battery_v"][1] = -29.3  # reading 1: one metric out of range
    values["co2_ppm"] = np.array([np.nan, np.nan, 415.0])  # reading 2: a metric the catalog lacks
    rounded = {m.name: np.round(values[m.name], model.decimals.get(m.name, 2)) for m in model.kind.metrics}
    before = {name: column.copy() for name, column in rounded.items()}
    screened = screen(model, IngestSettings(), rows, times, times, seq, values, rounded, 1)
    assert screened.keep.tolist() == [False, True, True]
    assert np.isnan(rounded["battery_v"][1])
    for name, column in rounded.items():
        if name != "battery_v":
            assert column[1] == before[name][1], name
        assert column[2] == before[name][2], name
    letters = {(letter.device_id, letter.reason): letter for letter in screened.dead_letters}
    table = model.table
    assert set(letters) == {
        (table.device_id(0), "out_of_range"),
        (table.device_id(1), "out_of_range"),
        (table.device_id(2), "unknown_metric"),
    }
    whole = letters[(table.device_id(0), "out_of_range")]
    assert whole.payload == contract.encode_reading(
        int(times[0]), orjson.loads(whole.payload)["m"], int(seq[0])
    )
    part = orjson.loads(letters[(table.device_id(1), "out_of_range")].payload)
    assert part == {"ts": int(times[1]), "seq": 11, "m": {"battery_v": -29.3}}
    assert letters[(table.device_id(1), "out_of_range")].detail.startswith(f"ts {times[1]}: battery_v=-29.3")
