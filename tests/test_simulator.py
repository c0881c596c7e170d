"""The simulator: a deterministic registry, plausible values inside the catalog, contract-valid
messages published through a real Mosquitto."""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from collections import Counter, defaultdict
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from cityneuron.catalog import DISTRICTS, KIND_BY_NAME, KINDS
from cityneuron.contract import (
    check_metrics,
    decode_reading,
    decode_status,
    decode_telemetry,
    is_device_id,
    parse_topic,
)
from cityneuron.servers import MosquittoBroker, free_port
from cityneuron.settings import MqttSettings, Settings, SimulatorSettings
from simulator import PublishError, SimulatorError, build_city, clock
from simulator.city import City, district_counts
from simulator.drivers import Drivers
from simulator.kinds import KindModel, build_models
from simulator.runner import run
from simulator.schedule import build_schedules

# A fixed simulated instant keeps every test reproducible: Tuesday 2025-03-11 12:00 Shenzhen time.
T_NOON_MS = 1_741_665_600_000
assert clock.weekday(T_NOON_MS)[0] == 1 and clock.local_hour(T_NOON_MS)[0] == 12.0


def _local(day_offset: int, hour: float) -> int:
    """Epoch ms of ``hour`` o'clock local time, ``day_offset`` days after 2025-03-11."""
    return int(T_NOON_MS + day_offset * clock.MS_PER_DAY + (hour - 12.0) * clock.MS_PER_H)


@pytest.fixture(scope="module")
def city() -> City:
    return build_city("small", seed=42)


@pytest.fixture(scope="module")
def models(city: City) -> dict[str, KindModel]:
    return build_models(city, Drivers(city.seed))


def _all_rows(model: KindModel) -> np.ndarray:
    return np.arange(len(model.table), dtype=np.int64)


def _at(model: KindModel, t_ms: int) -> dict[str, np.ndarray]:
    rows = _all_rows(model)
    return model.step(rows, np.full(len(rows), t_ms, dtype=np.int64))


# --- registry ------------------------------------------------------------------------------


def test_registry_is_deterministic_and_seeded() -> None:
    a, b, other = build_city(seed=7), build_city(seed=7), build_city(seed=8)
    assert a.devices == b.devices == other.devices
    for name in a.tables:
        ta, tb, to = a.tables[name], b.tables[name], other.tables[name]
        assert ta.device_ids() == tb.device_ids() == to.device_ids()
        for column in ("lat", "lon", "installed_day", "serial"):
            assert np.array_equal(getattr(ta, column), getattr(tb, column))
        assert not np.array_equal(ta.lat, to.lat)
        assert not np.array_equal(ta.serial, to.serial)


def test_small_city_shape(city: City) -> None:
    assert [t.kind.name for t in city] == [k.name for k in KINDS]
    assert 2_500 <= city.devices <= 4_000
    ids = [i for t in city for i in t.device_ids()]
    assert len(set(ids)) == len(ids)
    assert all(is_device_id(i) for i in ids)
    assert city.tables["smart_pole"].device_id(0) == "pole-futian-00001"
    population = {d.slug: d.population for d in DISTRICTS}
    for table in city:
        per_district = Counter(table.district_slug(row) for row in range(len(table)))
        # Every district has at least one device of every kind, and more people means more devices.
        assert set(per_district) == set(population)
        if len(table) >= 100:
            assert per_district["baoan"] > per_district["futian"] > per_district["dapeng"]
        facts = table.facts(0)
        district = DISTRICTS[int(table.district[0])]
        assert abs(facts["lat"] - district.lat) < 0.1 and abs(facts["lon"] - district.lon) < 0.1
        assert "2019-01-01" <= str(facts["installed"]) <= "2024-12-31"


def test_district_counts_split_by_population() -> None:
    for total in (1, 9, 10, 20, 600, 7_000_000):
        counts = district_counts(total)
        assert counts.sum() == total
        if total >= len(DISTRICTS):
            assert counts.min() >= 1


def test_unknown_preset_is_refused() -> None:
    with pytest.raises(SimulatorError, match="unknown preset"):
        build_city("atlantis")


# --- values --------------------------------------------------------------------------------


def test_values_are_reproducible_and_independent_of_stepping_order(models: dict[str, KindModel]) -> None:
    city2 = build_city("small", seed=42)
    again = build_models(city2, Drivers(city2.seed))
    other_city = build_city("small", seed=43)
    other = build_models(other_city, Drivers(other_city.seed))
    rng = np.random.default_rng(0)
    for name, model in models.items():
        rows = _all_rows(model)
        times = T_NOON_MS + rng.integers(0, 30 * clock.MS_PER_DAY, len(rows))
        first = model.step(rows, times)
        # Another instance, devices in reverse order, in two separate batches.
        order = rows[::-1]
        half = len(order) // 2
        parts = [
            again[name].step(order[:half], times[order[:half]]),
            again[name].step(order[half:], times[order[half:]]),
        ]
        for metric in model.kind.metric_names:
            shuffled = np.concatenate([p[metric] for p in parts])
            assert np.array_equal(first[metric][order], shuffled, equal_nan=True), (name, metric)
        different = other[name].step(rows, times)
        assert any(
            not np.array_equal(first[m], different[m], equal_nan=True) for m in model.kind.metric_names
        ), name


def test_every_metric_is_produced_inside_its_catalog_range(models: dict[str, KindModel]) -> None:
    # Times spread over a year and the day, so seasons, storms and nights are all visited.
    times = [_local(day, hour) for day in range(0, 365, 23) for hour in (1.5, 7.5, 13.0, 19.25)]
    for name, model in models.items():
        kind = KIND_BY_NAME[name]
        seen: dict[str, int] = defaultdict(int)
        for t in times:
            values = _at(model, t)
            assert set(values) == set(kind.metric_names), name
            for metric in kind.metrics:
                column = values[metric.name]
                present = column[~np.isnan(column)]
                seen[metric.name] += present.size
                assert np.all(present >= metric.low) and np.all(present <= metric.high), (
                    name,
                    metric.name,
                    present.min(initial=np.inf),
                    present.max(initial=-np.inf),
                )
        assert all(seen[m] > 0 for m in kind.metric_names), (name, dict(seen))


def test_lamps_burn_only_between_dusk_and_dawn(models: dict[str, KindModel]) -> None:
    pole = models["smart_pole"]
    day = int(clock.local_day(T_NOON_MS)[0])
    dusk, dawn = clock.dusk_dawn_ms(day)
    assert dusk < dawn
    # Dusk in March is a little after 18:30 and dawn a little before 06:30 (latitude 22.5 N).
    assert 18.0 < clock.local_hour(dusk)[0] < 19.0 and 6.0 < clock.local_hour(dawn)[0] < 7.0
    for t in range(_local(0, 12.0), _local(1, 12.0), 10 * clock.MS_PER_MIN):
        values = _at(pole, t)
        level, power = values["lamp_level"], values["lamp_power_w"]
        if dusk <= t < dawn:
            assert np.all(level >= 30) and np.all(power > 0), t
        else:
            assert np.all(level == 0) and np.all(power == 0), t
    assert np.all(_at(pole, _local(0, 20.0))["lamp_level"] == 100)
    night = _at(pole, _local(0, 23.5))["lamp_level"]
    assert np.all((night >= 30) & (night <= 50))


def test_ev_power_only_while_charging(models: dict[str, KindModel]) -> None:
    pole = models["smart_pole"]
    for hour in range(0, 24, 3):
        values = _at(pole, _local(1, hour))
        state, power = values["ev_charger_state"], values["ev_power_kw"]
        fitted = ~np.isnan(state)
        assert np.array_equal(fitted, ~np.isnan(power))
        assert set(np.unique(state[fitted]).tolist()) <= {0, 1, 2, 3, 4, 255}
        assert np.all((power[fitted] > 0) == (state[fitted] == 3))


def _meter_use(model: KindModel, metric: str, hour: float, days: range) -> float:
    """City-wide consumption in the hour after ``hour`` o'clock, summed over ``days``."""
    return sum(
        float(np.sum(_at(model, _local(d, hour + 1))[metric] - _at(model, _local(d, hour))[metric]))
        for d in days
    )


def test_water_demand_peaks_morning_and_evening(models: dict[str, KindModel]) -> None:
    water = models["water_meter"]
    weekdays = range(0, 3)  # Tuesday to Thursday
    night = _meter_use(water, "total_m3", 3, weekdays)
    assert night > 0
    assert _meter_use(water, "total_m3", 7, weekdays) > 3 * night
    assert _meter_use(water, "total_m3", 20, weekdays) > 3 * night
    # A household of ~2.5 at 252 L per person per day: about 0.63 m3 a day on average.
    daily = np.mean(_at(water, _local(7, 12))["total_m3"] - _at(water, _local(0, 12))["total_m3"]) / 7
    assert 0.45 < daily < 0.9


def test_no2_is_higher_at_rush_hour_than_at_night(models: dict[str, KindModel]) -> None:
    air = models["air_station"]
    weekdays = range(0, 3)
    rush = np.mean([_at(air, _local(d, 8.0))["no2"].mean() for d in weekdays])
    night = np.mean([_at(air, _local(d, 3.0))["no2"].mean() for d in weekdays])
    assert rush > 1.3 * night
    afternoon_o3 = np.mean([_at(air, _local(d, 14.5))["o3"].mean() for d in weekdays])
    morning_o3 = np.mean([_at(air, _local(d, 7.0))["o3"].mean() for d in weekdays])
    assert afternoon_o3 > morning_o3


def test_counters_never_decrease(models: dict[str, KindModel]) -> None:
    steps = np.arange(0, 7 * 24 * 3, dtype=np.int64)  # a week in 20-minute steps
    for name, metric in (
        ("water_meter", "total_m3"),
        ("gas_meter", "total_m3"),
        ("electricity_meter", "energy_kwh"),
    ):
        model = models[name]
        rows = _all_rows(model)
        times = _local(0, 0) + steps * 20 * clock.MS_PER_MIN
        grid = model.step(np.repeat(rows, len(steps)), np.tile(times, len(rows)))[metric]
        totals = grid.reshape(len(rows), len(steps))
        assert np.all(totals[:, 0] > 0), name
        assert np.all(np.diff(totals, axis=1) >= 0), name
        assert np.all(totals[:, -1] > totals[:, 0]), name


# --- schedule ------------------------------------------------------------------------------


def test_schedule_windows_partition_the_reports(city: City) -> None:
    schedules = build_schedules(city.tables)
    poles = schedules["smart_pole"]
    whole = poles.due(T_NOON_MS, T_NOON_MS + 120_000)
    first, second = (
        poles.due(T_NOON_MS, T_NOON_MS + 45_000),
        poles.due(T_NOON_MS + 45_000, T_NOON_MS + 120_000),
    )
    assert len(whole) == 2 * poles.devices == len(first) + len(second)
    assert np.all(np.diff(whole.slot_ms) >= 0)
    assert np.all((whole.slot_ms > T_NOON_MS) & (whole.slot_ms <= T_NOON_MS + 120_000))
    # Per-device counters advance by one per slot.
    seq = poles.seq(whole.rows, whole.slot_ms)
    by_row: dict[int, list[int]] = defaultdict(list)
    for row, s in zip(whole.rows.tolist(), seq.tolist(), strict=True):
        by_row[row].append(s)
    assert all(b - a == 1 for a, b in by_row.values())
    # Water meters upload once a day in minute ``serial mod 1440`` after local midnight.
    meters = schedules["water_meter"]
    latest = meters.latest(T_NOON_MS)
    minute = ((latest.slot_ms + clock.UTC_OFFSET_MS) % clock.MS_PER_DAY) // clock.MS_PER_MIN
    assert np.array_equal(minute, city.tables["water_meter"].serial[latest.rows] % 1440)


# --- publishing through a real broker -----------------------------------------------------


class _Collector:
    """A subscriber on city/# keeping every message it receives."""

    def __init__(self, broker: MosquittoBroker) -> None:
        self.messages: list[mqtt.MQTTMessage] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"collector-{uuid.uuid4().hex[:8]}")
        self._client.on_message = self._on_message
        self._client.on_subscribe = lambda *args: self._subscribed.set()
        self._client.connect("127.0.0.1", broker.port)
        self._client.subscribe("city/#", qos=1)
        self._client.loop_start()
        assert self._subscribed.wait(10)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append(message)

    def wait_for(
        self, count: int, timeout_s: float = 30.0, channel: str | None = None
    ) -> list[mqtt.MQTTMessage]:
        """Wait until ``count`` messages (of ``channel`` only, when given) have arrived."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                arrived = self.messages if channel is None else _device_messages(self.messages, channel)
                if len(arrived) >= count:
                    break
            time.sleep(0.05)
        time.sleep(0.2)  # anything extra would show up now
        with self._lock:
            return list(self.messages)

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()


def _settings(broker: MosquittoBroker, **simulator: Any) -> Settings:
    return Settings(
        mqtt=MqttSettings(port=broker.port),
        simulator=SimulatorSettings(client_id_prefix=f"sim-{uuid.uuid4().hex[:6]}", **simulator),
    )


def _device_messages(messages: list[mqtt.MQTTMessage], channel: str) -> list[mqtt.MQTTMessage]:
    return [
        m for m in messages if not m.topic.startswith("city/gateways/") and m.topic.endswith(f"/{channel}")
    ]


def _check_telemetry(message: mqtt.MQTTMessage) -> tuple[str, list[tuple[int, int | None]]]:
    """Validate one telemetry message against the contract; return its device and (ts, seq)s."""
    topic = parse_topic(message.topic)
    kind = KIND_BY_NAME[topic.kind]
    stamps = []
    for item in decode_telemetry(bytes(message.payload)):
        reading = decode_reading(item)
        good, problems = check_metrics(kind, reading.metrics)
        assert problems == [], (message.topic, problems)
        assert good
        stamps.append((reading.ts_ms, reading.seq))
    return topic.device_id, stamps


def test_once_publishes_one_status_and_one_report_per_device(broker: MosquittoBroker, city: City) -> None:
    collector = _Collector(broker)
    try:
        summary = run(_settings(broker, connections=3), once=True, start_ms=T_NOON_MS)
        received = collector.wait_for(2 * city.devices)
    finally:
        collector.close()
    assert summary.devices == city.devices
    assert summary.messages == 2 * city.devices
    assert summary.errors == 0
    frozen = len(city.tables["water_meter"]) + len(city.tables["gas_meter"])
    assert summary.readings == city.devices + 23 * frozen

    statuses = _device_messages(received, "status")
    telemetry = _device_messages(received, "telemetry")
    assert len(statuses) == city.devices
    assert len(telemetry) == city.devices
    expected_ids = {i for t in city for i in t.device_ids()}
    status_ids = set()
    for message in statuses:
        status_ids.add(parse_topic(message.topic).device_id)
        status = decode_status(bytes(message.payload))
        assert status.online and status.ts_ms == T_NOON_MS
        assert status.device is not None and {"lat", "lon", "installed"} <= set(status.device)
    assert status_ids == expected_ids

    readings = 0
    reported = set()
    for message in telemetry:
        device_id, stamps = _check_telemetry(message)
        reported.add(device_id)
        readings += len(stamps)
        assert all(ts <= T_NOON_MS for ts, _ in stamps)
        assert all(seq is not None for _, seq in stamps)
        if len(stamps) > 1:  # a meter's 24 hourly frozen readings
            assert len(stamps) == 24
            assert [b[0] - a[0] for a, b in itertools.pairwise(stamps)] == [clock.MS_PER_H] * 23
            assert [b[1] - a[1] for a, b in itertools.pairwise(stamps)] == [1] * 23  # type: ignore[operator]
    assert reported == expected_ids
    assert readings == summary.readings

    # The statuses are retained: a late subscriber still learns about every device.
    late = _Collector(broker)
    try:
        retained = _device_messages(late.wait_for(city.devices), "status")
    finally:
        late.close()
    assert len(retained) == city.devices
    assert all(m.retain for m in retained)


def test_once_is_reproducible(broker: MosquittoBroker) -> None:
    payloads = []
    for _ in range(2):
        collector = _Collector(broker)
        try:
            summary = run(_settings(broker, preset="small", scale=0.05), once=True, start_ms=T_NOON_MS)
            # The first run's retained statuses reach the second collector too: count telemetry.
            received = collector.wait_for(summary.messages - summary.devices, channel="telemetry")
        finally:
            collector.close()
        payloads.append(sorted((m.topic, m.payload) for m in _device_messages(received, "telemetry")))
    assert payloads[0] and payloads[0] == payloads[1]


def test_accelerated_run_publishes_on_schedule_until_stopped(broker: MosquittoBroker) -> None:
    collector = _Collector(broker)
    stop = threading.Event()
    result: dict[str, Any] = {}
    # 0.1 of the small city at 300x: one wall second is five simulated minutes.
    settings = _settings(broker, scale=0.1, speed=300.0, qos=1)
    worker = threading.Thread(
        target=lambda: result.update(summary=run(settings, start_ms=T_NOON_MS, stop_event=stop)), daemon=True
    )
    worker.start()
    time.sleep(2.5)
    stop.set()
    worker.join(30)
    assert not worker.is_alive()
    summary = result["summary"]
    received = collector.wait_for(summary.messages)
    collector.close()
    assert summary.errors == 0
    telemetry = _device_messages(received, "telemetry")
    assert len(telemetry) == summary.messages - summary.devices > summary.devices // 2
    seqs: dict[str, list[int]] = defaultdict(list)
    for message in telemetry:
        device_id, stamps = _check_telemetry(message)
        # Reports fall before the end of the run; the first of each device is its most recent
        # report before the start (at most a day back: the meters' daily upload).
        last_ts = stamps[-1][0]
        assert T_NOON_MS - 25 * clock.MS_PER_H < last_ts <= T_NOON_MS + clock.MS_PER_H
        seqs[device_id].extend(seq for _, seq in stamps if seq is not None)
    # Poles report every simulated minute: each one several times, counting up by one.
    poles = [s for device, s in seqs.items() if device.startswith("pole-")]
    assert poles and all(len(s) >= 3 for s in poles)
    assert all(np.all(np.diff(s) == 1) for s in poles)
    # A clean stop leaves the gateways' own status "offline" and publishes nothing for devices.
    gateways: dict[str, list[bool]] = defaultdict(list)
    for m in received:
        if m.topic.startswith("city/gateways/"):
            gateways[m.topic].append(decode_status(bytes(m.payload)).online)
    assert list(gateways.values()) == [[True, False], [True, False]]


def test_run_with_duration_returns(broker: MosquittoBroker) -> None:
    started = time.monotonic()
    summary = run(_settings(broker, scale=0.02), duration_s=0.5, start_ms=T_NOON_MS)
    assert time.monotonic() - started < 15
    assert summary.devices > 0 and summary.messages >= summary.devices and summary.errors == 0
    assert summary.as_dict()["devices"] == summary.devices


def test_unreachable_broker_is_a_publish_error() -> None:
    settings = Settings(mqtt=MqttSettings(port=free_port(), connect_timeout_s=2.0))
    with pytest.raises(PublishError, match="cannot connect"):
        run(settings, once=True)
