"""Live streams: readings and alerts published on a real Mosquitto reach SSE and WebSocket
clients of a real API server, filtered; the hub drops a slow client's oldest events."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import orjson
import paho.mqtt.client as paho
import pytest
from apiserver import serve_api
from mqtttest import publisher
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect as ws_connect

from api.live.events import LiveEvent, reading_events
from api.live.hub import Hub, StreamFilter
from cityneuron import contract
from cityneuron.servers import MosquittoBroker
from cityneuron.settings import Settings

DEADLINE_S = 20.0
T0_MS = 1_772_323_200_000  # 2026-03-01T00:00:00Z


def _publish(client: paho.Client, topic: str, payload: bytes) -> None:
    client.publish(topic, payload, qos=1).wait_for_publish(10)


def _reading(
    client: paho.Client, district: str, kind: str, device_id: str, seq: int, **metrics: float
) -> None:
    topic = contract.device_topic(district, kind, device_id)
    _publish(client, topic, contract.encode_reading(T0_MS + seq * 1000, metrics, seq))


def _alert(client: paho.Client, district: str, kind: str, device_id: str, rule: str) -> None:
    payload = contract.encode_alert(
        state="open",
        rule=rule,
        severity="warning",
        device_id=device_id,
        kind=kind,
        district=district,
        ts_ms=T0_MS,
        value=80.0,
        detail="test",
    )
    _publish(client, contract.alert_topic(district, kind, device_id, rule), payload)


def _publish_mix(client: paho.Client) -> None:
    """Filtered-out traffic first, then what a futian smart_pole pm25 client must see, then a marker."""
    _reading(client, "luohu", "smart_pole", "pole-luohu-0001", 1, pm25=30.0)  # other district
    _reading(client, "futian", "air_station", "aq-futian-001", 2, pm25=31.0)  # other kind
    _reading(client, "futian", "smart_pole", "pole-futian-0002", 3, noise_dba=55.0)  # no pm25
    _alert(client, "luohu", "smart_pole", "pole-luohu-0001", "pm25_high")  # other district
    _reading(client, "futian", "smart_pole", "pole-futian-0001", 4, pm25=20.0, noise_dba=50.0)
    _alert(client, "futian", "smart_pole", "pole-futian-0001", "pm25_high")
    _reading(client, "futian", "smart_pole", "pole-futian-0009", 5, pm25=1.0)  # end marker


def _check_received(events: list[dict[str, Any]]) -> None:
    readings = [e for e in events if e["type"] == "reading"]
    alerts = [e for e in events if e["type"] == "alert"]
    assert [r["device_id"] for r in readings] == ["pole-futian-0001", "pole-futian-0009"], events
    first = readings[0]
    assert first["district"] == "futian" and first["kind"] == "smart_pole" and first["seq"] == 4
    # The metric filter trims the reading to pm25, with its catalog unit.
    assert first["metrics"] == {"pm25": {"value": 20.0, "unit": "ug/m3"}}
    assert first["time"] == "2026-03-01T00:00:04Z"
    assert len(alerts) == 1, events
    assert alerts[0]["device_id"] == "pole-futian-0001" and alerts[0]["rule"] == "pm25_high"
    assert alerts[0]["state"] == "open" and alerts[0]["severity"] == "warning"


def _done(events: list[dict[str, Any]]) -> bool:
    return any(e.get("device_id") == "pole-futian-0009" for e in events) and any(
        e["type"] == "alert" for e in events
    )


def _sse_events(lines: Iterator[str]) -> Iterator[tuple[str, dict[str, Any] | None]]:
    """(event name, data) per event; ("comment", None) per comment line."""
    name = "message"
    for line in lines:
        if line.startswith(":"):
            yield "comment", None
        elif line.startswith("event: "):
            name = line[len("event: ") :]
        elif line.startswith("data: "):
            yield name, orjson.loads(line[len("data: ") :])
            name = "message"


@contextmanager
def _sse(
    client: httpx.Client, params: dict[str, str]
) -> Iterator[Iterator[tuple[str, dict[str, Any] | None]]]:
    """An SSE stream whose broker subscription is in place (reopened until the API has connected)."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        with client.stream("GET", "/stream", params=params) as response:
            assert response.status_code == 200, response.read()
            assert response.headers["content-type"].startswith("text/event-stream")
            events = _sse_events(response.iter_lines())
            name, ready = next(events)
            assert name == "ready" and ready is not None
            if ready["broker"] == "connected":
                yield events
                return
        assert time.monotonic() < deadline, "the API never connected to the broker"


def test_sse_receives_filtered_readings_and_alerts(settings: Settings, broker: MosquittoBroker) -> None:
    params = {"district": "futian", "kind": "smart_pole", "metric": "pm25", "heartbeat_s": "1"}
    with serve_api(settings) as client, _sse(client, params) as events, publisher(broker.port) as pub:
        _publish_mix(pub)
        received: list[dict[str, Any]] = []
        deadline = time.monotonic() + DEADLINE_S
        for name, data in events:
            if data is not None:
                assert name == data["type"]
                received.append(data)
            if _done(received) or time.monotonic() > deadline:
                break
    _check_received(received)


def test_sse_heartbeat_and_filter_errors(settings: Settings) -> None:
    with serve_api(settings) as client:
        with _sse(client, {"heartbeat_s": "1", "types": "alert"}) as events:
            # Nothing is published: the idle stream still carries keepalive comments.
            name, data = next(events)
            assert name == "comment" and data is None
        bad = client.get("/stream", params={"district": "atlantis"})
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "unknown_district"
        bad = client.get("/stream", params={"metric": "warp_factor"})
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "unknown_metric"
        bad = client.get("/stream", params={"types": "gossip"})
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "bad_type"


def _ws_url(client: httpx.Client, query: str = "") -> str:
    return f"ws://127.0.0.1:{client.base_url.port}/ws{query}"


@contextmanager
def _ws(client: httpx.Client, query: str) -> Iterator[Any]:
    """A WebSocket whose broker subscription is in place (reopened until the API has connected)."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        with ws_connect(_ws_url(client, query), open_timeout=10) as ws:
            ready = orjson.loads(ws.recv(timeout=10))
            assert ready["type"] == "ready", ready
            if ready["broker"] == "connected":
                yield ws, ready
                return
        assert time.monotonic() < deadline, "the API never connected to the broker"


def test_websocket_subscribe_message_filters(settings: Settings, broker: MosquittoBroker) -> None:
    with serve_api(settings) as client, _ws(client, "?district=luohu&heartbeat_s=1") as (ws, ready):
        assert ready["filter"]["district"] == ["luohu"]
        with publisher(broker.port) as pub:
            ws.send(orjson.dumps({"action": "subscribe", "district": "atlantis"}).decode())
            error = orjson.loads(ws.recv(timeout=10))
            assert error["type"] == "error" and error["code"] == "unknown_district"
            ws.send(
                orjson.dumps(
                    {"action": "subscribe", "district": ["futian"], "kind": "smart_pole", "metric": ["pm25"]}
                ).decode()
            )
            subscribed = orjson.loads(ws.recv(timeout=10))
            assert subscribed == {
                "type": "subscribed",
                "filter": {
                    "types": None,
                    "district": ["futian"],
                    "kind": ["smart_pole"],
                    "device": None,
                    "metric": ["pm25"],
                },
            }
            _publish_mix(pub)
            received: list[dict[str, Any]] = []
            while not _done(received):
                message = orjson.loads(ws.recv(timeout=DEADLINE_S))
                if message["type"] in ("reading", "alert"):
                    received.append(message)
                else:
                    assert message["type"] == "heartbeat", message
            ws.send('{"action": "ping"}')
            while (message := orjson.loads(ws.recv(timeout=10)))["type"] == "heartbeat":
                pass
            assert message["type"] == "pong"
    _check_received(received)


def test_websocket_bad_filter_is_refused(settings: Settings) -> None:
    with (
        serve_api(settings) as client,
        pytest.raises(InvalidStatus) as refused,
        ws_connect(_ws_url(client, "?kind=spaceship"), open_timeout=10),
    ):
        pass
    # Closed before the handshake completes: the server answers the upgrade with 403.
    assert refused.value.response.status_code == 403


def _event(device_id: str, district: str = "futian") -> LiveEvent:
    body = {"type": "reading", "device_id": device_id, "metrics": {"pm25": {"value": 1.0, "unit": "ug/m3"}}}
    return LiveEvent("reading", district, "smart_pole", device_id, body, frozenset({"pm25"}))


def test_hub_drops_oldest_for_a_slow_client_only() -> None:
    async def scenario() -> None:
        hub = Hub(max_queued=3)
        with (
            hub.subscribe(StreamFilter()) as slow,
            hub.subscribe(StreamFilter(districts=frozenset({"luohu"}))) as other,
        ):
            hub.publish([_event(f"d-{i}") for i in range(5)])
            hub.publish([_event("l-1", "luohu")])
            batch = await slow.next_batch(1)
            # The three newest survive; the client learns it missed three.
            assert [e["device_id"] for e in batch.events] == ["d-3", "d-4", "l-1"]
            assert batch.missed == 3
            # The other client's queue was never full: nothing missed, only its district.
            batch = await other.next_batch(1)
            assert [e["device_id"] for e in batch.events] == ["l-1"] and batch.missed == 0
            empty = await slow.next_batch(0.05)
            assert empty.events == [] and empty.missed == 0
        assert hub.subscriber_count == 0

    asyncio.run(scenario())


def test_gateway_batch_becomes_one_event_per_valid_reading() -> None:
    payload = contract.encode_batch(
        [
            ("pole-a", 1_763_800_000_000, {"lamp_level": 40.0}, 1),
            ("pole-b", 1_763_800_000_000, {"lamp_level": 60.0}, 7),
            ("pole-b", 1_763_800_060_000, {"no_such_metric": 1.0}, 8),
        ]
    )
    topic = contract.parse_topic(contract.batch_topic("futian", "smart_pole"))
    events = reading_events(topic, payload)
    assert [(e.device_id, e.body["seq"], e.body["metrics"]["lamp_level"]["value"]) for e in events] == [
        ("pole-a", 1, 40.0),
        ("pole-b", 7, 60.0),
    ]
    assert {e.district for e in events} == {"futian"}
    # An item naming no device is left out, the others still come through.
    broken = orjson.dumps({"readings": [{"ts": 1_763_800_000_000, "m": {"lamp_level": 1.0}}]})
    assert reading_events(topic, broken) == []
