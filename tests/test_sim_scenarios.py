"""Scenarios: weather events change values only where they happen, outages and reconnect storms
flip devices offline and back, firmware rollouts add an unknown metric, bad files are refused
with the place named, and a scenario run publishes through a real broker."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from cityneuron.catalog import DISTRICT_BY_SLUG, KIND_BY_NAME
from cityneuron.contract import (
    check_metrics,
    decode_reading,
    decode_status,
    decode_telemetry,
    now_ms,
    parse_topic,
)
from cityneuron.errors import Reason
from cityneuron.servers import MosquittoBroker
from cityneuron.settings import MqttSettings, Settings, SimulatorSettings
from simulator import build_city, clock
from simulator.city import City
from simulator.drivers import Drivers
from simulator.effects import Batch, Effects, EffectsSpec
from simulator.errors import ScenarioError, SimulatorError
from simulator.faultlog import read_fault_log
from simulator.kinds import KindModel, build_models
from simulator.runner import run
from simulator.scenario import MAINS_POWERED, Scenario, load_scenario
from simulator.schedule import build_schedules

# Tuesday 2025-03-11 12:00 Shenzhen time.
T0 = 1_741_665_600_000
SCENARIOS = Path(__file__).resolve().parents[1] / "simulator" / "scenarios"


@pytest.fixture(scope="module")
def city() -> City:
    return build_city("small", 0.1, seed=5)


@pytest.fixture(scope="module")
def stations() -> City:
    """Enough stations for one of each kind in every district."""
    return build_city("small", 0.5, seed=5)


def _scenario(tmp_path: Path, text: str, name: str = "scenario.toml") -> Scenario:
    path = tmp_path / name
    path.write_text(text)
    return load_scenario(path, T0)


def _models(city: City, scenario: Scenario | None) -> dict[str, KindModel]:
    return build_models(city, Drivers(city.seed, scenario.weather if scenario else None))


def _at(model: KindModel, t_ms: int) -> dict[str, np.ndarray]:
    rows = np.arange(len(model.table), dtype=np.int64)
    return model.step(rows, np.full(len(rows), t_ms, dtype=np.int64))


def _drive(city: City, scenario: Scenario, hours: float, kinds: tuple[str, ...]) -> list[Batch]:
    models = _models(city, scenario)
    schedules = {k: s for k, s in build_schedules(city.tables).items() if k in kinds}
    effects = Effects(city, models, schedules, EffectsSpec(scenario))
    batches = [Batch(k, effects.statuses(k, T0), status=True) for k in kinds]
    after, end = T0, T0 + int(hours * clock.MS_PER_H)
    while after < end:
        until = min(end, after + 10 * clock.MS_PER_MIN)
        batches += [b for b in effects.window(after, until) if b.kind in kinds]
        after = until
    return batches


# --- weather --------------------------------------------------------------------------------


def test_rainstorm_changes_rain_rivers_and_manholes_only_in_its_district(
    stations: City, tmp_path: Path
) -> None:
    city = stations
    storm = _scenario(
        tmp_path,
        '[[event]]\ntype = "rainstorm"\nstart = "+1h"\nduration = "3h"\ndistricts = ["futian"]\n'
        "rain_peak_mmh = 90\n",
    )
    wet, dry = _models(city, storm), _models(city, None)
    futian = DISTRICT_BY_SLUG["futian"]
    checks = {
        "hydrology_station": ("rain_mm", "water_level_m"),
        "manhole_cover": ("water_level_cm",),
        "air_station": ("rain_mm",),
    }
    for name, metrics in checks.items():
        in_district = np.array(
            [city.tables[name].district_slug(r) == futian.slug for r in range(len(city.tables[name]))]
        )
        assert in_district.any() and (~in_district).any()
        for metric in metrics:
            raised = np.zeros(len(in_district), dtype=bool)
            for hours in (1.5, 2.5, 3.5, 5.0, 8.0):
                t = T0 + int(hours * clock.MS_PER_H)
                a, b = _at(wet[name], t)[metric], _at(dry[name], t)[metric]
                assert np.array_equal(a[~in_district], b[~in_district]), (name, metric, hours)
                assert np.all(a[in_district] >= b[in_district] - 1e-9), (name, metric, hours)
                raised |= a > b + 1e-6
            assert raised[in_district].all(), (name, metric)
    # Before the storm nothing differs anywhere; the river responds with a lag.
    for name in checks:
        for metric, column in _at(wet[name], T0 + 30 * clock.MS_PER_MIN).items():
            assert np.array_equal(column, _at(dry[name], T0 + 30 * clock.MS_PER_MIN)[metric], equal_nan=True)
    # A 90 mm/h peak is a 暴雨 rainstorm hour at the gauges (>= 16 mm/h, DOMAIN.md section 6).
    peak = T0 + int(2.5 * clock.MS_PER_H)
    rain = _at(wet["air_station"], peak)["rain_mm"]
    futian_air = np.array([city.tables["air_station"].district_slug(r) == "futian" for r in range(len(rain))])
    assert np.all(rain[futian_air] >= 16.0)


def test_typhoon_winds_and_pollution_episode_stay_in_their_districts(stations: City, tmp_path: Path) -> None:
    city = stations
    scenario = _scenario(
        tmp_path,
        '[[event]]\ntype = "typhoon"\nstart = "+0s"\nduration = "12h"\ndistricts = ["dapeng"]\noutage = false\n\n'
        '[[event]]\ntype = "pollution_episode"\nstart = "+0s"\nduration = "2d"\ndistricts = ["guangming"]\n'
        "pm25_peak_ugm3 = 140\n",
    )
    event, pollution = scenario.events
    assert event.offline_ms is None and pollution.end_ms - pollution.start_ms == 2 * clock.MS_PER_DAY
    storm, calm = _models(city, scenario), _models(city, None)
    air = city.tables["air_station"]
    slugs = np.array([air.district_slug(r) for r in range(len(air))])
    mid = T0 + 6 * clock.MS_PER_H
    wind = _at(storm["air_station"], mid)["wind_speed_ms"] - _at(calm["air_station"], mid)["wind_speed_ms"]
    assert np.all(wind[slugs == "dapeng"] > 20) and np.all(wind[slugs != "dapeng"] == 0)
    drop = _at(calm["air_station"], mid)["pressure_hpa"] - _at(storm["air_station"], mid)["pressure_hpa"]
    assert np.all(drop[slugs == "dapeng"] > 25) and np.all(drop[slugs != "dapeng"] == 0)
    # PM2.5 climbs over the days towards the peak, only in Guangming.
    levels = []
    for hours in (2, 24, 46):
        t = T0 + hours * clock.MS_PER_H
        pm, base = _at(storm["air_station"], t)["pm25"], _at(calm["air_station"], t)["pm25"]
        elsewhere = ~np.isin(slugs, ["guangming", "dapeng"])  # the typhoon's rain and wind clean Dapeng
        assert np.array_equal(pm[elsewhere], base[elsewhere])
        levels.append(pm[slugs == "guangming"].mean())
    assert levels[0] < levels[1] < levels[2] and levels[2] > 100


# --- outages, reconnect storms, firmware --------------------------------------------------


def _statuses(batches: list[Batch]) -> list[tuple[str, str, bool, int]]:
    out = []
    for b in batches:
        if b.status:
            for m in b.messages:
                status = decode_status(m.payload)
                out.append((b.kind, parse_topic(m.topic).device_id, status.online, status.ts_ms))
    return out


def _telemetry(batches: list[Batch]) -> list[tuple[str, str, list[Any]]]:
    return [
        (b.kind, parse_topic(m.topic).device_id, [decode_reading(i) for i in decode_telemetry(m.payload)])
        for b in batches
        if not b.status
        for m in b.messages
    ]


def test_typhoon_outage_takes_mains_devices_offline_and_back(city: City, tmp_path: Path) -> None:
    scenario = _scenario(
        tmp_path,
        '[[event]]\ntype = "typhoon"\nstart = "+30m"\nduration = "3h"\ndistricts = ["luohu"]\n'
        'outage_start = "30m"\noutage_duration = "1h"\n',
    )
    (typhoon,) = scenario.events
    cut, restored = typhoon.offline_ms or (0, 0)
    assert (cut, restored) == (T0 + clock.MS_PER_H, T0 + 2 * clock.MS_PER_H)
    batches = _drive(city, scenario, hours=3, kinds=("smart_pole", "manhole_cover"))
    poles = city.tables["smart_pole"]
    luohu_poles = {poles.device_id(r) for r in range(len(poles)) if poles.district_slug(r) == "luohu"}
    assert luohu_poles
    changes = [s for s in _statuses(batches) if s[3] != T0]
    assert {(d, online, ts) for _, d, online, ts in changes} == {
        *((d, False, cut) for d in luohu_poles),
        *((d, True, restored) for d in luohu_poles),
    }
    stamps: dict[str, list[int]] = {}
    for _, device, readings in _telemetry(batches):
        stamps.setdefault(device, []).extend(r.ts_ms for r in readings)
    for device in luohu_poles:
        assert not any(cut <= ts < restored for ts in stamps[device])
        assert any(ts < cut for ts in stamps[device]) and any(ts >= restored for ts in stamps[device])
    # Battery devices and poles elsewhere keep reporting through the cut.
    for device, ts_list in stamps.items():
        if device not in luohu_poles:
            assert any(cut <= ts < restored for ts in ts_list), device
    assert "manhole_cover" not in MAINS_POWERED


def test_reconnect_storm_resends_buffered_readings_at_once(city: City, tmp_path: Path) -> None:
    scenario = _scenario(
        tmp_path,
        '[[event]]\ntype = "reconnect_storm"\nstart = "+20m"\nduration = "40m"\ndistricts = ["nanshan"]\n',
    )
    start, end = T0 + 20 * clock.MS_PER_MIN, T0 + 60 * clock.MS_PER_MIN
    kinds = ("smart_pole", "hydrology_station")
    batches = _drive(city, scenario, hours=1.5, kinds=kinds)
    calm = _drive(
        city,
        _scenario(tmp_path, '[[event]]\ntype = "rainstorm"\nstart = "+5d"\nduration = "1h"\n', "far.toml"),
        1.5,
        kinds,
    )
    nanshan = {
        city.tables[k].device_id(r)
        for k in kinds
        for r in range(len(city.tables[k]))
        if city.tables[k].district_slug(r) == "nanshan"
    }
    changes = [s for s in _statuses(batches) if s[3] != T0]
    assert {(d, online, ts) for _, d, online, ts in changes} == {
        *((d, False, start) for d in nanshan),
        *((d, True, end) for d in nanshan),
    }
    # Every reading is delivered once, the district's held ones in one burst at the reconnect.
    got = sorted((d, r.ts_ms, r.seq) for _, d, rs in _telemetry(batches) for r in rs)
    expected = sorted((d, r.ts_ms, r.seq) for _, d, rs in _telemetry(calm) for r in rs)
    assert got == expected
    # The poles' buffer goes out right after they report back online.
    back = next(
        i
        for i, b in enumerate(batches)
        if b.status and b.kind == "smart_pole" and _statuses([b])[0][2:] == (True, end)
    )
    burst = batches[back + 1]
    assert not burst.status and burst.kind == "smart_pole"
    held = [decode_reading(decode_telemetry(m.payload)[0]) for m in burst.messages]
    assert all(parse_topic(m.topic).device_id in nanshan for m in burst.messages)
    assert all(start <= r.ts_ms < end for r in held)
    assert len(held) == len({d for d in nanshan if d.startswith("pole-")}) * 40


def test_firmware_rollout_adds_an_unknown_metric(city: City, tmp_path: Path) -> None:
    scenario = _scenario(
        tmp_path,
        '[[event]]\ntype = "firmware_rollout"\nstart = "+1h"\nduration = "2h"\nkind = "smart_pole"\n'
        'metric = "co2_ppm"\nvalue = [400, 900]\n',
    )
    batches = _drive(city, scenario, hours=4, kinds=("smart_pole", "manhole_cover"))
    share: dict[int, list[bool]] = {}
    for kind, _, readings in _telemetry(batches):
        for r in readings:
            has = "co2_ppm" in r.metrics
            assert not has or kind == "smart_pole"
            if kind == "smart_pole":
                share.setdefault(int((r.ts_ms - T0) // clock.MS_PER_H), []).append(has)
            if has:
                assert 400 <= r.metrics["co2_ppm"] <= 900
                _, problems = check_metrics(KIND_BY_NAME[kind], r.metrics)
                assert [(p.metric, p.reason) for p in problems] == [("co2_ppm", Reason.UNKNOWN_METRIC)]
    assert not any(share[0])
    assert 0 < np.mean(share[1] + share[2]) < 1
    assert all(share[3])


# --- files ---------------------------------------------------------------------------------


def test_shipped_scenarios_load() -> None:
    files = sorted(SCENARIOS.glob("*.toml"))
    assert len(files) >= 3
    types = {e.type for f in files for e in load_scenario(f, T0).events}
    assert types == {"rainstorm", "typhoon", "pollution_episode", "reconnect_storm", "firmware_rollout"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[[event]]\ntype = "rainstorm"\nstart = "+1h"\nduration = "3h"\nrain_peak_mmh = 90 mm\n', "line 5"),
        (
            '\n\n[[event]]\ntype = "hailstorm"\nstart = "+1h"\nduration = "1h"\n',
            "line 3: event 1: field 'type'",
        ),
        (
            '[[event]]\ntype = "rainstorm"\nstart = "+1h"\nduration = "1h"\n\n[[event]]\ntype = "rainstorm"\nstart = "tomorrow"\nduration = "1h"\n',
            "line 6: event 2: field 'start'",
        ),
        ('[[event]]\ntype = "rainstorm"\nstart = "+1h"\n', "field 'duration' is required"),
        (
            '[[event]]\ntype = "rainstorm"\nstart = "+1h"\nduration = "1h"\ndistricts = ["gotham"]\n',
            "field 'districts' has unknown 'gotham'",
        ),
        (
            '[[event]]\ntype = "rainstorm"\nstart = "+1h"\nduration = "1h"\nrain_peak_mmh = 9000\n',
            "field 'rain_peak_mmh'",
        ),
        (
            '[[event]]\ntype = "rainstorm"\nstart = "+1h"\nduration = "1h"\nwind_peak_ms = 30\n',
            "unknown field(s) 'wind_peak_ms'",
        ),
        (
            '[[event]]\ntype = "firmware_rollout"\nstart = "+1h"\nkind = "smart_pole"\nmetric = "pm25"\n',
            "already a catalog metric",
        ),
        ('[[event]]\ntype = "typhoon"\nstart = "+1h"\nduration = "1h"\noutage = "yes"\n', "field 'outage'"),
        ('description = "nothing"\n', "no events"),
    ],
)
def test_bad_scenario_files_name_the_line_and_field(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(ScenarioError) as caught:
        _scenario(tmp_path, text)
    assert expected in str(caught.value)
    assert isinstance(caught.value, SimulatorError)


def test_absolute_starts_and_local_time(tmp_path: Path) -> None:
    scenario = _scenario(
        tmp_path,
        '[[event]]\ntype = "rainstorm"\nstart = 2025-03-11T13:00:00+08:00\nduration = "1h"\n\n'
        '[[event]]\ntype = "rainstorm"\nstart = 2025-03-11T13:00:00\nduration = "1h30m"\n\n'
        '[[event]]\ntype = "rainstorm"\nstart = "2025-03-11T05:00:00Z"\nduration = "1d"\n',
    )
    assert [e.start_ms - T0 for e in scenario.events] == [clock.MS_PER_H] * 3
    assert [e.end_ms - e.start_ms for e in scenario.events] == [
        clock.MS_PER_H,
        90 * clock.MS_PER_MIN,
        clock.MS_PER_DAY,
    ]


# --- end to end through a real broker -------------------------------------------------------


class _Collector:
    def __init__(self, broker: MosquittoBroker) -> None:
        self.messages: list[tuple[str, bytes, bool]] = []
        self._lock = threading.Lock()
        subscribed = threading.Event()
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"collector-{uuid.uuid4().hex[:8]}")
        self._client.on_message = self._on_message
        self._client.on_subscribe = lambda *args: subscribed.set()
        self._client.connect("127.0.0.1", broker.port)
        self._client.subscribe("city/#", qos=1)
        self._client.loop_start()
        assert subscribed.wait(10)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((message.topic, bytes(message.payload), bool(message.retain)))

    def snapshot(self) -> list[tuple[str, bytes, bool]]:
        with self._lock:
            return list(self.messages)

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()


def test_scenario_and_faults_run_through_a_real_broker(broker: MosquittoBroker, tmp_path: Path) -> None:
    start_ms = now_ms() - 2 * clock.MS_PER_H
    scenario = tmp_path / "storm.toml"
    scenario.write_text(
        '[[event]]\ntype = "reconnect_storm"\nstart = "+30m"\nduration = "20m"\ndistricts = ["baoan"]\n'
        'kinds = ["smart_pole"]\n\n'
        '[[event]]\ntype = "firmware_rollout"\nstart = "+0s"\nkind = "hydrology_station"\nmetric = "flow_m3s"\n'
        "value = [1, 5]\n"
    )
    faults = tmp_path / "faults.toml"
    faults.write_text(
        '[rates.smart_pole]\nduplicate = 4.0\n[duplicate]\nwindow = "6h"\nduration = ["1h", "2h"]\nprobability = 1.0\n'
    )
    fault_log = tmp_path / "faults.jsonl"
    settings = Settings(
        mqtt=MqttSettings(port=broker.port),
        simulator=SimulatorSettings(
            client_id_prefix=f"sim-{uuid.uuid4().hex[:6]}",
            scale=0.02,
            speed=3600.0,
            scenario_file=scenario,
            faults_file=faults,
            fault_log=fault_log,
        ),
    )
    collector = _Collector(broker)
    try:
        summary = run(settings, duration_s=6.0, start_ms=start_ms)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and len(collector.snapshot()) < summary.messages:
            time.sleep(0.1)
        received = collector.snapshot()
    finally:
        collector.close()
    assert summary.errors == 0
    device = [(t, p) for t, p, _ in received if not t.startswith("city/gateways/")]
    assert len(device) == summary.messages
    storm_start, storm_end = start_ms + 30 * clock.MS_PER_MIN, start_ms + 50 * clock.MS_PER_MIN
    flips = {
        (parse_topic(t).device_id, s.online, s.ts_ms)
        for t, p in device
        if t.endswith("/status") and (s := decode_status(p)).ts_ms != start_ms
    }
    baoan_poles = {
        i for i in build_city("small", 0.02, seed=42).tables["smart_pole"].device_ids() if "-baoan-" in i
    }
    assert flips == {
        (d, online, ts) for d in baoan_poles for online, ts in ((False, storm_start), (True, storm_end))
    }
    flow = [
        orjson.loads(p)
        for t, p in device
        if t.endswith("/telemetry") and parse_topic(t).kind == "hydrology_station"
    ]
    # Updated at the run's start: every later reading carries the new metric, none before.
    assert flow and all(("flow_m3s" in body["m"]) == (body["ts"] >= start_ms) for body in flow)
    telemetry = [(t, p) for t, p in device if t.endswith("/telemetry")]
    assert len(set(telemetry)) < len(telemetry)  # duplicates went out
    log = read_fault_log(fault_log)
    assert {line["type"] for line in log} >= {
        "duplicate",
        "scenario.reconnect_storm",
        "scenario.firmware_rollout",
    }
    assert all(line["kind"] == "smart_pole" for line in log if line["type"] == "duplicate")


def test_device_mode_outage_fires_wills_and_the_district_reconnects(
    broker: MosquittoBroker, tmp_path: Path
) -> None:
    start_ms = now_ms() - 2 * clock.MS_PER_H
    scenario = tmp_path / "typhoon.toml"
    scenario.write_text(
        '[[event]]\ntype = "typhoon"\nstart = "+5m"\nduration = "30m"\ndistricts = ["baoan"]\n'
        'outage_start = "5m"\noutage_duration = "10m"\n'
    )
    cut, back = start_ms + 10 * clock.MS_PER_MIN, start_ms + 20 * clock.MS_PER_MIN
    fault_log = tmp_path / "faults.jsonl"
    settings = Settings(
        mqtt=MqttSettings(port=broker.port),
        simulator=SimulatorSettings(
            mode="device", scale=0.02, speed=600.0, scenario_file=scenario, fault_log=fault_log
        ),
    )
    city = build_city("small", 0.02, seed=42)
    dark = {
        t.device_id(r)
        for name, t in city.tables.items()
        if name in MAINS_POWERED
        for r in range(len(t))
        if t.district_slug(r) == "baoan"
    }
    assert any(d.startswith("pole-") for d in dark)
    collector = _Collector(broker)
    try:
        summary = run(settings, duration_s=5.0, start_ms=start_ms)  # 50 simulated minutes
        time.sleep(1.0)
        received = collector.snapshot()
    finally:
        collector.close()
    assert summary.errors == 0
    will = orjson.dumps({"online": False})
    events: dict[str, list[tuple[str, Any]]] = {}
    for topic, payload, _ in received:
        device = parse_topic(topic).device_id
        if topic.endswith("/status"):
            events.setdefault(device, []).append(
                ("will", None) if payload == will else ("status", decode_status(payload))
            )
        else:
            events.setdefault(device, []).append(("telemetry", decode_telemetry(payload)))
    # Only the district's mains-powered devices lost their link; the broker said so with their wills.
    assert {d for d, seen in events.items() if ("will", None) in seen} == dark
    for device in dark:
        seen = events[device]
        assert seen.count(("will", None)) == 1, device
        at = seen.index(("will", None))
        # Before the cut: the retained announcement; no scenario status stamped with the cut.
        assert seen[0][0] == "status" and seen[0][1].online
        assert not any(kind == "status" and s.ts_ms in (cut, back) for kind, s in seen)
        before = [decode_reading(i).ts_ms for kind, items in seen[:at] if kind == "telemetry" for i in items]
        assert all(ts < cut for ts in before), device
        # After it: online again (a fresh status with the registry facts), then reports again.
        after = seen[at + 1 :]
        assert after and after[0][0] == "status" and after[0][1].online and after[0][1].device, device
        readings = [decode_reading(i).ts_ms for kind, items in after if kind == "telemetry" for i in items]
        assert all(ts >= back for ts in readings), device
        if device.startswith("pole-"):  # poles report every minute
            assert readings, device
        # The clean exit says goodbye last.
        assert after[-1][0] == "status" and not after[-1][1].online
    # Everyone else stayed connected and reported through the outage.
    for device, seen in events.items():
        if device not in dark and device.startswith("pole-"):
            readings = [decode_reading(i).ts_ms for kind, items in seen if kind == "telemetry" for i in items]
            assert any(cut <= ts < back for ts in readings), device
    assert [r["district"] for r in read_fault_log(fault_log) if r["type"] == "scenario.typhoon"] == ["baoan"]
