"""Downlink commands: the simulated devices obey set_lamp_level / set_valve, acknowledge every
command with its id, and report the commanded state from the ack's instant on."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
import orjson
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from cityneuron.contract import (
    CMD,
    CommandAck,
    decode_command_ack,
    decode_reading,
    decode_telemetry,
    device_topic,
    encode_command,
    now_ms,
)
from cityneuron.servers import MosquittoBroker
from cityneuron.settings import MqttSettings, Settings
from simulator import clock
from simulator.city import City, build_city
from simulator.commands import CommandBook, CommandError, command_subscriptions
from simulator.drivers import Drivers
from simulator.kinds import KindModel, build_models
from simulator.runner import SimSummary, run
from simulator.schedule import FROZEN_STEP_MS, KindSchedule

T = TypeVar("T")
# Tuesday 2025-03-11 12:00 Shenzhen time (as in test_simulator.py).
T_NOON_MS = 1_741_665_600_000
T_NIGHT_MS = T_NOON_MS + 11 * clock.MS_PER_H  # 23:00, lamps dimmed
SCALE = 0.1  # about 300 devices


@pytest.fixture(scope="module")
def city() -> City:
    return build_city("small", SCALE, seed=42)


def _book(
    city: City, at_ms: int = T_NOON_MS
) -> tuple[CommandBook, dict[str, KindModel], dict[str, KindModel]]:
    book = CommandBook(city, lambda: at_ms)
    inner = build_models(city, Drivers(city.seed))
    return book, inner, book.wrap(inner)


def _one(model: KindModel, row: int, t_ms: int) -> dict[str, float]:
    values = model.step(np.array([row], dtype=np.int64), np.array([t_ms], dtype=np.int64))
    # NaN: no such sensor on this device (and NaN != NaN would spoil comparisons).
    return {name: float(column[0]) for name, column in values.items() if not np.isnan(column[0])}


# --- the override timelines --------------------------------------------------------------------


def test_lamp_level_holds_from_its_instant_and_power_follows(city: City) -> None:
    book, inner, models = _book(city)
    pole = city.tables["smart_pole"].device_id(0)
    scheduled = _one(inner["smart_pole"], 0, T_NIGHT_MS)
    assert scheduled["lamp_level"] > 0
    effective = T_NOON_MS
    book.apply(pole, "set_lamp_level", {"level": scheduled["lamp_level"]}, effective)
    # The commanded level equal to the scheduled one reports the model's own power.
    assert _one(models["smart_pole"], 0, T_NIGHT_MS) == pytest.approx(scheduled)
    book.apply(pole, "set_lamp_level", {"level": 80}, effective + 1)
    before = _one(models["smart_pole"], 0, effective - 1)
    assert before == _one(inner["smart_pole"], 0, effective - 1)
    assert before["lamp_level"] == 0  # noon: the schedule keeps the lamp off
    noon = _one(models["smart_pole"], 0, effective + 1)
    night = _one(models["smart_pole"], 0, T_NIGHT_MS)
    assert noon["lamp_level"] == night["lamp_level"] == 80
    assert noon["lamp_power_w"] > scheduled["lamp_power_w"] > 0
    book.apply(pole, "set_lamp_level", {"level": 0}, T_NIGHT_MS + 1)
    off = _one(models["smart_pole"], 0, T_NIGHT_MS + 60_000)
    assert off["lamp_level"] == 0 and off["lamp_power_w"] == 0
    # Other metrics and other poles are the model's own.
    assert off["noise_dba"] == _one(inner["smart_pole"], 0, T_NIGHT_MS + 60_000)["noise_dba"]
    assert _one(models["smart_pole"], 1, T_NOON_MS + 1) == _one(inner["smart_pole"], 1, T_NOON_MS + 1)


@pytest.mark.parametrize("kind", ["water_meter", "gas_meter"])
def test_closed_valve_stops_consumption_and_reopening_resumes_it(city: City, kind: str) -> None:
    book, inner, models = _book(city)
    meter = city.tables[kind].device_id(0)
    closed_at, opened_at = T_NOON_MS, T_NOON_MS + 2 * clock.MS_PER_DAY
    book.apply(meter, "set_valve", {"state": "close"}, closed_at)
    book.apply(meter, "set_valve", {"state": "open"}, opened_at)
    times = np.arange(closed_at - clock.MS_PER_DAY, opened_at + clock.MS_PER_DAY, 15 * clock.MS_PER_MIN)
    rows = np.zeros(len(times), dtype=np.int64)
    got = models[kind].step(rows, times)
    base = inner[kind].step(rows, times)["total_m3"]
    closed = (times >= closed_at) & (times < opened_at)
    assert np.array_equal(got["valve_state"], closed.astype(np.float64))
    assert np.all(np.diff(got["total_m3"]) >= 0), "a total never falls"
    # Before: the model's own; while closed: frozen at the closing instant; after: growing again,
    # short by exactly what the closed days did not consume.
    base_closed = _one(inner[kind], 0, closed_at)["total_m3"]
    base_opened = _one(inner[kind], 0, opened_at)["total_m3"]
    assert np.array_equal(got["total_m3"][times < closed_at], base[times < closed_at])
    assert np.allclose(got["total_m3"][closed], base_closed)
    after = times >= opened_at
    assert np.allclose(got["total_m3"][after], base[after] - (base_opened - base_closed))
    assert got["total_m3"][-1] > base_closed
    # Other metrics are untouched.
    assert np.array_equal(got["battery_v"], inner[kind].step(rows, times)["battery_v"])


def test_overrides_are_deterministic_whatever_the_order(city: City) -> None:
    commands: list[tuple[str, str, dict[str, Any], int]] = [
        (city.tables["smart_pole"].device_id(3), "set_lamp_level", {"level": 12}, T_NOON_MS),
        (city.tables["water_meter"].device_id(5), "set_valve", {"state": "close"}, T_NOON_MS + 5),
        (city.tables["smart_pole"].device_id(3), "set_lamp_level", {"level": 64}, T_NIGHT_MS),
        (city.tables["water_meter"].device_id(5), "set_valve", {"state": "open"}, T_NIGHT_MS),
    ]
    book_a, _, models_a = _book(city)
    book_b, _, models_b = _book(city)
    for command in commands:
        book_a.apply(*command)
    for command in reversed(commands):
        book_b.apply(*command)
    for kind in ("smart_pole", "water_meter"):
        n = len(city.tables[kind])
        rows = np.arange(n, dtype=np.int64)
        times = T_NOON_MS + (rows * 7_919_000) % clock.MS_PER_DAY
        a = models_a[kind].step(rows, times)
        reverse = rows[::-1]
        b = models_b[kind].step(reverse, times[::-1])
        for name in a:
            assert np.array_equal(a[name], b[name][::-1], equal_nan=True), name
        one_by_one = [_one(models_b[kind], int(r), int(t)) for r, t in zip(rows, times, strict=True)]
        assert [v["lamp_level" if kind == "smart_pole" else "total_m3"] for v in one_by_one] == pytest.approx(
            a["lamp_level" if kind == "smart_pole" else "total_m3"].tolist()
        )
    with pytest.raises(CommandError):
        book_a.apply(city.tables["air_station"].device_id(0), "set_valve", {"state": "close"}, T_NOON_MS)
    with pytest.raises(CommandError):
        book_a.apply("pole-nowhere-00001", "set_lamp_level", {"level": 1}, T_NOON_MS)


def _cmd(table_device: tuple[str, str, str], command: str, args: Any, command_id: str) -> tuple[str, bytes]:
    district, kind, device_id = table_device
    return device_topic(district, kind, device_id, CMD), encode_command(command_id, command, args, T_NOON_MS)


def test_handle_applies_and_acks_every_command(city: City) -> None:
    book, _, models = _book(city, T_NOON_MS)
    poles = city.tables["smart_pole"]
    pole = (poles.district_slug(2), "smart_pole", poles.device_id(2))
    ack = book.handle(*_cmd(pole, "set_lamp_level", {"level": 55}, "c-1"))
    assert ack is not None and ack.ok and ack.command_id == "c-1"
    assert ack.topic == device_topic(*pole, "cmd/ack")
    body = decode_command_ack(ack.payload)
    assert (body.command_id, body.ok, body.ts_ms) == ("c-1", True, T_NOON_MS + 1)
    assert _one(models["smart_pole"], 2, T_NOON_MS + 1)["lamp_level"] == 55
    # A re-delivered command (same id) is acknowledged again, not applied again.
    assert book.handle(*_cmd(pole, "set_lamp_level", {"level": 55}, "c-1")) == ack
    assert book.applied == 1
    refusals = {
        "c-2": ("set_valve", {"state": "close"}, "do not accept"),
        "c-3": ("set_lamp_level", {"level": 150}, "0..100"),
        "c-4": ("reboot", {}, "unknown command"),
    }
    for command_id, (command, args, detail) in refusals.items():
        refused = book.handle(*_cmd(pole, command, args, command_id))
        assert refused is not None and not refused.ok
        assert detail in decode_command_ack(refused.payload).detail
    assert book.rejected == 3
    # A command without a command name still gets an answer; one without an id cannot.
    topic = device_topic(*pole, CMD)
    shapeless = book.handle(topic, orjson.dumps({"id": "c-5"}))
    assert shapeless is not None and not shapeless.ok
    assert book.handle(topic, b"not json") is None
    # Topics naming no device of this city (another shard's, wrong district, wrong kind): silence.
    other_district = "futian" if pole[0] != "futian" else "luohu"
    assert (
        book.handle(*_cmd((other_district, "smart_pole", pole[2]), "set_lamp_level", {"level": 1}, "x"))
        is None
    )
    assert book.handle(*_cmd((pole[0], "water_meter", pole[2]), "set_valve", {"state": "close"}, "y")) is None
    assert book.handle(*_cmd((pole[0], "smart_pole", "pole-futian-99999"), "set_lamp_level", {}, "z")) is None


def test_gateway_subscriptions_cover_every_device(city: City) -> None:
    topics = command_subscriptions(city)
    assert len(topics) == len(set(topics))
    for name, table in city.tables.items():
        for row in range(len(table)):
            own = device_topic(table.district_slug(row), name, table.device_id(row), CMD)
            assert sum(mqtt.topic_matches_sub(sub, own) for sub in topics) == 1


# --- end to end through Mosquitto ---------------------------------------------------------------


class Watcher:
    """An MQTT client that records every message under ``city/#`` and can send commands."""

    def __init__(self, port: int, username: str | None = None, password: str | None = None) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self._cond = threading.Condition()
        subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"watch-{uuid.uuid4().hex[:8]}")
        if username is not None:
            self.client.username_pw_set(username, password)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe("city/#", qos=1)
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert subscribed.wait(10), "watcher could not subscribe"

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        with self._cond:
            self.messages.append((message.topic, bytes(message.payload)))
            self._cond.notify_all()

    def wait_for(self, find: Callable[[str, bytes], T | None], timeout_s: float, what: str) -> T:
        """The first recorded message (old or new) for which ``find`` returns something."""
        seen = 0
        with self._cond:
            while True:
                for topic, payload in self.messages[seen:]:
                    found = find(topic, payload)
                    if found is not None:
                        return found
                seen = len(self.messages)
                if not self._cond.wait_for(self._more_than(seen), timeout_s):
                    raise AssertionError(f"timed out waiting for {what}")

    def _more_than(self, seen: int) -> Callable[[], bool]:
        return lambda: len(self.messages) > seen

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _telemetry_of(device_id: str, since_ms: int) -> Callable[[str, bytes], list[Any] | None]:
    def find(topic: str, payload: bytes) -> list[Any] | None:
        if not topic.endswith(f"/{device_id}/telemetry"):
            return None
        readings = [decode_reading(item) for item in decode_telemetry(payload)]
        return readings if any(r.ts_ms >= since_ms for r in readings) else None

    return find


def _ack_of(command_id: str) -> Callable[[str, bytes], CommandAck | None]:
    def find(topic: str, payload: bytes) -> CommandAck | None:
        if not topic.endswith("/cmd/ack"):
            return None
        ack = decode_command_ack(payload)
        return ack if ack.command_id == command_id else None

    return find


def _meter_uploading_soon(city: City, sim_now_ms: int) -> int:
    """The water meter whose next daily upload carries an hourly reading at least 15 simulated
    minutes from now (so a command sent now shows in it), soonest first."""
    schedule = KindSchedule(city.tables["water_meter"])
    offset, interval = schedule.offset_ms, schedule.interval_ms
    earliest = sim_now_ms + 15 * clock.MS_PER_MIN
    upload = offset + ((sim_now_ms - offset) // interval + 1) * interval
    upload = np.where((upload // FROZEN_STEP_MS) * FROZEN_STEP_MS >= earliest, upload, upload + interval)
    return int(np.argmin(upload))


def exercise_commands(settings: Settings, watcher: Watcher) -> SimSummary:
    """Run the simulator at 600x (catching up on the last 6 hours) and command a pole and a water
    meter through the broker; check acks and the telemetry that follows them."""
    city = build_city(settings.simulator.preset, settings.simulator.scale, settings.simulator.seed)
    stop = threading.Event()
    summaries: list[SimSummary] = []
    sim = threading.Thread(
        target=lambda: summaries.append(
            run(settings, start_ms=now_ms() - 6 * clock.MS_PER_H, stop_event=stop)
        )
    )
    sim.start()
    try:
        poles, meters = city.tables["smart_pole"], city.tables["water_meter"]
        pole = (poles.district_slug(0), "smart_pole", poles.device_id(0))
        first = watcher.wait_for(_telemetry_of(pole[2], 0), 30, "the pole's first telemetry")
        meter_row = _meter_uploading_soon(city, first[-1].ts_ms)
        meter = (meters.district_slug(meter_row), "water_meter", meters.device_id(meter_row))
        sent = {
            "lamp": (pole, "set_lamp_level", {"level": 37}),
            "valve": (meter, "set_valve", {"state": "close"}),
            "wrong-kind": (pole, "set_valve", {"state": "open"}),
        }
        ids = {name: f"{name}-{uuid.uuid4().hex[:8]}" for name in sent}
        for name, (target, command, args) in sent.items():
            watcher.client.publish(*_cmd(target, command, args, ids[name]), qos=1)
        acks = {name: watcher.wait_for(_ack_of(ids[name]), 20, f"ack of {name}") for name in sent}
        assert acks["lamp"].ok and acks["valve"].ok
        assert not acks["wrong-kind"].ok and "do not accept" in acks["wrong-kind"].detail

        lamp = watcher.wait_for(_telemetry_of(pole[2], acks["lamp"].ts_ms), 20, "the pole's next telemetry")
        assert [r.metrics["lamp_level"] for r in lamp] == [37]
        assert lamp[0].metrics["lamp_power_w"] > 0

        upload = watcher.wait_for(_telemetry_of(meter[2], acks["valve"].ts_ms), 30, "the meter's next upload")
        after = [r for r in upload if r.ts_ms >= acks["valve"].ts_ms]
        before = [r for r in upload if r.ts_ms < acks["valve"].ts_ms]
        assert after and before, "the upload straddles the command"
        assert all(r.metrics["valve_state"] == 1 for r in after)
        assert all(r.metrics["valve_state"] == 0 for r in before)
        assert len({r.metrics["total_m3"] for r in after}) == 1, "a closed valve stops the total"
        assert after[0].metrics["total_m3"] >= before[-1].metrics["total_m3"]
    finally:
        stop.set()
        sim.join(60)
    assert summaries and summaries[0].errors == 0
    return summaries[0]


def test_commands_in_gateway_mode(broker: MosquittoBroker) -> None:
    settings = Settings(
        mqtt=MqttSettings(port=broker.port),
        simulator={"scale": SCALE, "speed": 600, "mode": "gateway", "connections": 2},
    )
    watcher = Watcher(broker.port)
    try:
        summary = exercise_commands(settings, watcher)
    finally:
        watcher.close()
    assert summary.messages > summary.devices
