"""The latest values of a device, each with its own time: readings that carry only some metrics
(through the real broker and ingest) must not make the others look measured later."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import psycopg
from apiserver import serve_api
from mqtttest import publisher

from cityneuron import contract
from cityneuron.settings import Settings
from ingest.service import IngestService

DEVICE = "air-futian-00001"
T1 = datetime(2026, 3, 1, 7, 0, tzinfo=UTC)
T2 = T1 + timedelta(hours=1)
T3 = T2 + timedelta(minutes=5)


def _ms(at: datetime) -> int:
    return int(at.timestamp() * 1000)


def _iso(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


def _stored(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM reading_air_station").fetchone()
        return int(row[0]) if row else 0


def test_each_metric_has_the_time_of_the_reading_that_carried_it(settings: Settings) -> None:
    topic = contract.device_topic("futian", "air_station", DEVICE)
    readings = [
        (T1, {"pm25": 20.0, "pm10": 41.0, "o3": 60.0}, 1),
        (T2, {"pm25": 22.0, "o3": 64.0}, 2),
        (T3, {"pm25": 25.0}, 3),
    ]
    with IngestService(settings) as ingest:
        assert ingest.wait_ready(30)
        with publisher(settings.mqtt.port) as client:
            for at, metrics, seq in readings:
                client.publish(topic, contract.encode_reading(_ms(at), metrics, seq), qos=1).wait_for_publish(
                    10
                )
                # One reading per batch: the merge across batches is what is under test.
                deadline = time.monotonic() + 30
                while _stored(settings.database.url) < seq:
                    assert time.monotonic() < deadline, "the ingest did not store the reading"
                    time.sleep(0.05)

    want = {
        "pm25": {"value": 25.0, "unit": "ug/m3", "time": _iso(T3)},
        "pm10": {"value": 41.0, "unit": "ug/m3", "time": _iso(T1)},
        "o3": {"value": 64.0, "unit": "ug/m3", "time": _iso(T2)},
    }
    with serve_api(settings) as api:
        one = api.get(f"/devices/{DEVICE}/latest")
        assert one.status_code == 200, one.text
        body = one.json()
        assert body["time"] == _iso(T3) and body["seq"] == 3
        assert body["metrics"] == want
        # The many-device view gives the same, and so does a poll for changes only.
        for params in (
            {"kind": "air_station"},
            {"kind": "air_station", "since": _iso(T1 - timedelta(days=9999))},
        ):
            page = api.get("/latest", params=params)
            assert page.status_code == 200, page.text
            (item,) = page.json()["items"]
            assert item["metrics"] == want
