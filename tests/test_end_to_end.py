"""The whole pipeline: simulator -> Mosquitto -> ingest -> PostgreSQL -> HTTP API.

Real broker, real database, the real services; values are checked against what was published.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import paho.mqtt.client as mqtt
import psycopg
import pytest
from apiserver import serve_api
from polling import wait_until

from cityneuron import contract
from cityneuron.catalog import KIND_BY_NAME, KINDS
from cityneuron.settings import Settings
from ingest.service import IngestService
from simulator.city import build_city
from simulator.runner import run as run_simulator


class _Recorder:
    """Subscribes to all telemetry and keeps every payload, as the devices sent them."""

    def __init__(self, port: int) -> None:
        self.payloads: dict[str, list[bytes]] = {}
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="e2e-recorder")
        self._client.on_message = self._on_message
        self._client.on_subscribe = lambda *_: self._subscribed.set()
        self._client.connect("127.0.0.1", port)
        self._client.subscribe(contract.subscription(), qos=1)
        self._client.loop_start()
        assert self._subscribed.wait(10)

    def _on_message(self, _client: Any, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        device_id = contract.parse_topic(message.topic).device_id
        with self._lock:
            self.payloads.setdefault(device_id, []).append(message.payload)

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()


@pytest.fixture
def api_client(settings: Settings) -> Iterator[httpx.Client]:
    with serve_api(settings) as client:
        yield client


def _stored_readings(url: str) -> int:
    with psycopg.connect(url) as conn:
        return sum(
            conn.execute(f"SELECT count(*) FROM {kind.table}").fetchone()[0]  # type: ignore[index]
            for kind in KINDS
        )


def test_simulated_city_reaches_the_api(settings: Settings, api_client: httpx.Client) -> None:
    city = build_city("small", seed=settings.simulator.seed)
    recorder = _Recorder(settings.mqtt.port)
    with IngestService(settings) as ingest:
        assert ingest.wait_ready(30)
        summary = run_simulator(settings, once=True)
        assert summary.errors == 0
        assert summary.devices == city.devices
        wait_until(
            lambda: _stored_readings(settings.database.url) >= summary.readings,
            90,
            f"{summary.readings} readings in the database",
        )
    recorder.close()

    # Every device of the city is in the registry, with its district and coordinates.
    device_ids: list[dict[str, Any]] = []
    cursor = None
    while True:
        page = api_client.get("/devices", params={"limit": 1000, **({"cursor": cursor} if cursor else {})})
        assert page.status_code == 200
        device_ids += page.json()["items"]
        cursor = page.json()["next_cursor"]
        if not cursor:
            break
    assert len(device_ids) == city.devices
    assert {d["kind"] for d in device_ids} == set(KIND_BY_NAME)
    assert all(d["lat"] is not None and d["online"] for d in device_ids)

    # The latest view of one device per kind equals the newest reading that device published.
    for kind in KINDS:
        device = next(d for d in device_ids if d["kind"] == kind.name)
        latest = api_client.get(f"/devices/{device['device_id']}/latest")
        assert latest.status_code == 200, latest.text
        body = latest.json()
        sent = [
            contract.decode_reading(item)
            for payload in recorder.payloads[device["device_id"]]
            for item in contract.decode_telemetry(payload)
        ]
        newest = max(sent, key=lambda reading: reading.ts_ms)
        assert set(body["metrics"]) == set(kind.metric_names)
        for name, value in newest.metrics.items():
            assert body["metrics"][name]["value"] == pytest.approx(value)
            assert body["metrics"][name]["unit"] == kind.metric_by_name[name].unit

    # The aggregate over the whole city counts every stored reading of a metric.
    air = KIND_BY_NAME["air_station"]
    with psycopg.connect(settings.database.url) as conn:
        n_air = conn.execute("SELECT count(pm25), min(time), max(time) FROM reading_air_station").fetchone()
    assert n_air is not None and n_air[0] > 0
    aggregate = api_client.get(
        "/aggregates",
        params={
            "kind": air.name,
            "metric": "pm25",
            "bucket": "1d",
            "agg": "count",
            "from": n_air[1].isoformat(),
            "to": int(n_air[2].timestamp() * 1000) + 1,
        },
    )
    assert aggregate.status_code == 200, aggregate.text
    assert sum(p["value"] for s in aggregate.json()["series"] for p in s["points"]) == n_air[0]


def test_contract_example_payload_reads_back(settings: Settings, api_client: httpx.Client) -> None:
    """Publishes exactly what docs/contract.md shows and reads it back through the API."""
    publisher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="e2e-device")
    publisher.connect("127.0.0.1", settings.mqtt.port)
    publisher.loop_start()
    now_ms = contract.now_ms() - 60_000
    status = {
        "online": True,
        "ts": now_ms,
        "device": {"lat": 22.541, "lon": 114.055, "installed": "2024-03-18"},
    }
    array = [
        {
            "ts": contract.ms_to_datetime(now_ms - 3_600_000).isoformat(),
            "seq": 120,
            "m": {"total_m3": 412.731},
        },
        {"ts": contract.ms_to_datetime(now_ms).isoformat(), "seq": 121, "m": {"total_m3": 412.735}},
    ]
    with IngestService(settings) as ingest:
        assert ingest.wait_ready(30)
        infos = [
            publisher.publish(
                "city/futian/water_meter/wm-demo-1/status", orjson.dumps(status), qos=1, retain=True
            ),
            publisher.publish("city/futian/water_meter/wm-demo-1/telemetry", orjson.dumps(array), qos=1),
            publisher.publish(
                "city/futian/smart_pole/pole-demo-1/telemetry",
                orjson.dumps(
                    {"ts": now_ms, "seq": 4711, "m": {"pm25": 18.4, "pm10": 35.0, "noise_dba": 61.2}}
                ),
                qos=1,
            ),
            # A bad payload between good ones: dead-lettered, the rest keeps flowing.
            publisher.publish("city/futian/smart_pole/pole-demo-1/telemetry", b"{oops", qos=1),
            publisher.publish(
                "city/futian/smart_pole/pole-demo-2/telemetry",
                orjson.dumps({"ts": now_ms, "m": {"pm25": 20.0, "noise_dba": 999}}),
                qos=1,
            ),
        ]
        for info in infos:
            info.wait_for_publish(10)
        latest = wait_until(
            lambda: (r := api_client.get("/devices/pole-demo-2/latest")).status_code == 200 and r.json(),
            30,
            "the last good message",
        )
    publisher.loop_stop()
    publisher.disconnect()

    assert latest["metrics"] == {"pm25": {"value": 20.0, "unit": "ug/m3", "time": latest["time"]}}
    meter = api_client.get("/devices/wm-demo-1").json()
    assert (meter["kind"], meter["district"], meter["lat"], meter["installed"]) == (
        "water_meter",
        "futian",
        22.541,
        "2024-03-18",
    )
    readings = api_client.get(
        "/devices/wm-demo-1/readings", params={"from": now_ms - 7_200_000, "to": now_ms + 1}
    ).json()
    assert [(i["seq"], i["values"]["total_m3"]) for i in readings["items"]] == [
        (120, 412.731),
        (121, 412.735),
    ]
    pole = api_client.get("/devices/pole-demo-1/latest").json()
    assert pole["seq"] == 4711 and pole["metrics"]["noise_dba"]["value"] == 61.2
    with psycopg.connect(settings.database.url) as conn:
        reasons = sorted(r[0] for r in conn.execute("SELECT reason FROM dead_letter"))
    assert reasons == ["malformed_json", "out_of_range"]
