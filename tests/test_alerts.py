"""Alerts: the rules file, hysteresis in the stream, the alerts table and the city/alerts topics;
real Mosquitto, PostgreSQL and ingest."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from polling import eventually
from test_ingest import _await_sample, _publish, _rows, _running, _sample, _with_ingest

from cityneuron.contract import encode_reading, now_ms
from cityneuron.servers import MosquittoBroker
from cityneuron.settings import Settings
from ingest.alerts.rules import DEFAULT_RULES_FILE, RulesError, load_rules, parse_rules

MANHOLE = "city/futian/manhole_cover/mh-1/telemetry"
MIN_MS = 60_000
_ALERTS = (
    "SELECT device_id, rule, severity, (extract(epoch FROM opened_at) * 1000)::bigint,"
    " (extract(epoch FROM closed_at) * 1000)::bigint, value, peak_value, close_value FROM alerts"
)


class _AlertListener:
    """Collects what ingest publishes on city/alerts/#."""

    def __init__(self, port: int) -> None:
        self.messages: list[tuple[str, dict[str, Any]]] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self._client = paho.Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5)
        self._client.on_connect = lambda c, *_: c.subscribe("city/alerts/#", qos=1)
        self._client.on_subscribe = lambda *_: self._subscribed.set()
        self._client.on_message = self._on_message
        self._client.connect("127.0.0.1", port)

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((msg.topic, orjson.loads(msg.payload)))

    def received(self) -> list[tuple[str, dict[str, Any]]]:
        with self._lock:
            return list(self.messages)

    @contextmanager
    def running(self) -> Iterator[_AlertListener]:
        self._client.loop_start()
        try:
            assert self._subscribed.wait(10)
            yield self
        finally:
            self._client.disconnect()
            self._client.loop_stop()


def test_default_rules_file_parses_with_the_domain_thresholds() -> None:
    rules = load_rules()
    assert load_rules(DEFAULT_RULES_FILE) == rules
    by_name = {r.name: r for r in rules.thresholds}
    assert set(by_name) == {
        "manhole_tilt",
        "manhole_water_level",
        "rain_rainstorm_1h",
        "pm25_iaqi_over_100",
        "battery_low",
    }
    assert (by_name["manhole_tilt"].open_at, by_name["manhole_tilt"].direction) == (10.0, "above")
    assert by_name["pm25_iaqi_over_100"].open_at == 60.0  # HJ 633-2026: IAQI 100
    assert by_name["rain_rainstorm_1h"].aggregate == "sum" and by_name["rain_rainstorm_1h"].window_s == 3600
    assert by_name["battery_low"].direction == "below"
    assert rules.silent is not None and rules.silent.name == "device_silent"
    assert {r.name for r in rules.by_kind["manhole_cover"]} == {
        "manhole_tilt",
        "manhole_water_level",
        "battery_low",
    }


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ({"metric": "tilt_deg", "open_above": 10, "close_below": 12}, "hysteresis"),
        ({"metric": "tilt_deg", "open_below": 3, "close_above": 2}, "hysteresis"),
        ({"metric": "tilt_deg"}, "open_above"),
        ({"metric": "warp", "kinds": ["manhole_cover"], "open_above": 1}, "no metric"),
        ({"metric": "tilt_deg", "kinds": ["toaster"], "open_above": 1}, "unknown kind"),
        ({"metric": "tilt_deg", "open_above": 1, "colour": "red"}, "unknown keys"),
        ({"metric": "rain_mm", "open_above": 1, "aggregate": "sum"}, "window_s"),
        ({"metric": "tilt_deg", "open_above": 1, "severity": "apocalyptic"}, "severity"),
        ({"name": "Bad Name", "metric": "tilt_deg", "open_above": 1}, "name"),
    ],
)
def test_bad_rules_are_refused_with_the_reason(rule: dict[str, Any], message: str) -> None:
    with pytest.raises(RulesError, match=message):
        parse_rules({"threshold": [{"name": "r", **rule}]})


def test_bad_rules_file_stops_the_service_before_it_starts(settings: Settings, tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    path.write_text("[[threshold]]\nname = 'x'\nmetric = 'tilt_deg'\nopen_above = 'ten'\n")
    from ingest.service import IngestService

    with pytest.raises(RulesError, match="finite number"):
        IngestService(_with_ingest(settings, rules_file=path))


def test_alert_opens_once_and_closes_once_with_hysteresis(
    settings: Settings, broker: MosquittoBroker
) -> None:
    t0 = now_ms() - 30 * MIN_MS
    tilts = [2.0, 12.0, 15.0, 9.0, 11.0, 7.0, 9.5, 3.0]  # open at 12, stay open at 9, close at 7
    readings = [
        (MANHOLE, encode_reading(t0 + i * MIN_MS, {"tilt_deg": v}, seq=i)) for i, v in enumerate(tilts)
    ]
    with _AlertListener(broker.port).running() as listener, _running(_with_ingest(settings)) as service:
        _publish(broker, *readings[:3])
        _await_sample(service, "cityneuron_ingest_alerts_opened_total", 1, rule="manhole_tilt")
        _publish(broker, *readings[3:])
        _await_sample(service, "cityneuron_ingest_alerts_closed_total", 1, rule="manhole_tilt")
        # A resent opening reading is a duplicate: it must not open the alert again.
        _publish(broker, readings[1])
        _await_sample(service, "cityneuron_ingest_duplicates_total", 1, kind="manhole_cover")
        published = eventually(listener.received, lambda m: len(m) >= 2)
    assert _rows(settings, _ALERTS) == [
        ("mh-1", "manhole_tilt", "critical", t0 + MIN_MS, t0 + 5 * MIN_MS, 12.0, 15.0, 7.0)
    ]
    topic = "city/alerts/futian/manhole_cover/mh-1/manhole_tilt"
    assert [(t, m["state"], m["ts"], m["value"]) for t, m in published] == [
        (topic, "open", t0 + MIN_MS, 12.0),
        (topic, "closed", t0 + 5 * MIN_MS, 7.0),
    ]
    assert published[0][1]["severity"] == "critical" and published[0][1]["district"] == "futian"


def test_open_alert_survives_an_ingest_restart(settings: Settings, broker: MosquittoBroker) -> None:
    t0 = now_ms() - 10 * MIN_MS
    open_rows = "SELECT count(*) FROM alerts WHERE closed_at IS NULL"
    with _running(_with_ingest(settings)) as first:
        _publish(broker, (MANHOLE, encode_reading(t0, {"tilt_deg": 30.0})))
        _await_sample(first, "cityneuron_ingest_alerts_opened_total", 1, rule="manhole_tilt")
    with _AlertListener(broker.port).running() as listener, _running(_with_ingest(settings)) as second:
        assert second.open_alerts("manhole_tilt") == 1
        _publish(broker, (MANHOLE, encode_reading(t0 + MIN_MS, {"tilt_deg": 40.0})))
        _await_sample(second, "cityneuron_ingest_readings_stored_total", 1, kind="manhole_cover")
        assert _rows(settings, open_rows) == [(1,)]
        _publish(broker, (MANHOLE, encode_reading(t0 + 2 * MIN_MS, {"tilt_deg": 1.0})))
        _await_sample(second, "cityneuron_ingest_alerts_closed_total", 1, rule="manhole_tilt")
        assert _sample_opened(second) == 0
        published = eventually(listener.received, bool)
    assert [m["state"] for _, m in published] == ["closed"]
    assert _rows(settings, "SELECT count(*), max(peak_value) FROM alerts") == [(1, 40.0)]


def _sample_opened(service: Any) -> float:
    return (
        service.metrics.registry.get_sample_value(
            "cityneuron_ingest_alerts_opened_total", {"rule": "manhole_tilt"}
        )
        or 0.0
    )


def test_window_duration_and_below_rules(settings: Settings, broker: MosquittoBroker) -> None:
    base = now_ms() - 3 * 3_600_000
    rain = "city/longgang/hydrology_station/hy-1/telemetry"
    air = "city/baoan/air_station/aq-1/telemetry"
    meter = "city/luohu/water_meter/wm-1/telemetry"
    # Rain: 4 mm every 5 min reaches 16 mm in the hour at minute 15; the hourly sum falls under
    # 8 mm at minute 70 (only the minute-15 reading is left in the window).
    rain_mm = [4.0, 4.0, 4.0, 4.0] + [0.0] * 12
    messages = [(rain, encode_reading(base + i * 5 * MIN_MS, {"rain_mm": v})) for i, v in enumerate(rain_mm)]
    # PM2.5 over 60 ug/m3 (IAQI 100) must hold an hour before the alert opens.
    pm25 = [(0, 70.0), (30, 80.0), (50, 20.0), (60, 70.0), (90, 75.0), (120, 90.0), (130, 55.0), (140, 40.0)]
    messages += [(air, encode_reading(base + m * MIN_MS, {"pm25": v})) for m, v in pm25]
    volts = [3.6, 3.25, 3.35, 3.2, 3.45]
    messages += [
        (meter, encode_reading(base + i * 30 * MIN_MS, {"battery_v": v})) for i, v in enumerate(volts)
    ]
    with _running(_with_ingest(settings)) as service:
        _publish(broker, *messages)
        for rule in ("rain_rainstorm_1h", "pm25_iaqi_over_100", "battery_low"):
            assert _await_sample(service, "cityneuron_ingest_alerts_closed_total", 1, rule=rule) == 1
        assert _sample(service, "cityneuron_ingest_dead_letters_total", reason="future_timestamp") == 0
    rows = {row[1]: row for row in _rows(settings, _ALERTS + " ORDER BY id")}
    assert len(rows) == 3
    assert rows["rain_rainstorm_1h"][3:] == (base + 15 * MIN_MS, base + 70 * MIN_MS, 16.0, 16.0, 4.0)
    assert rows["pm25_iaqi_over_100"][3:] == (base + 60 * MIN_MS, base + 140 * MIN_MS, 90.0, 90.0, 40.0)
    assert rows["battery_low"][3:] == (base + 30 * MIN_MS, base + 120 * MIN_MS, 3.25, 3.2, 3.45)


def test_alerts_are_stored_but_not_published_when_publishing_is_off(
    settings: Settings, broker: MosquittoBroker
) -> None:
    with (
        _AlertListener(broker.port).running() as listener,
        _running(_with_ingest(settings, publish_alerts=False)) as service,
    ):
        _publish(broker, (MANHOLE, encode_reading(now_ms(), {"tilt_deg": 45.0})))
        assert _await_sample(service, "cityneuron_ingest_alerts_opened_total", 1, rule="manhole_tilt") == 1
        assert _sample(service, "cityneuron_ingest_alerts_published_total", state="open") == 0
    assert listener.received() == []
    assert _rows(settings, "SELECT rule, closed_at FROM alerts") == [("manhole_tilt", None)]
