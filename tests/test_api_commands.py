"""Commands over HTTP and MQTT: POST publishes on the device's cmd topic of a real Mosquitto, a
device's ack makes GET say acked (or failed), no ack makes it timed_out; bad commands are 4xx
and a broker that is down is a 503 while the rest of the API keeps answering."""

from __future__ import annotations

import queue
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import paho.mqtt.client as paho
import psycopg
from apiserver import serve_api
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from api.keys import hash_secret, new_token
from cityneuron import contract
from cityneuron.servers import MosquittoBroker
from cityneuron.settings import Settings

DEADLINE_S = 20.0
POLE = "pole-futian-0001"
METER = "wm-luohu-0001"


def _seed(url: str) -> str:
    """Two devices and a write key; returns the key's token."""
    key_id, secret, token = new_token()
    with psycopg.connect(url) as conn:
        conn.execute(
            "INSERT INTO devices (device_id, kind, district) VALUES (%s, 'smart_pole', 'futian'),"
            " (%s, 'water_meter', 'luohu')",
            (POLE, METER),
        )
        conn.execute(
            "INSERT INTO api_keys (key_id, name, scopes, secret_hash) VALUES (%s, 'ops', %s, %s)",
            (key_id, ["write"], hash_secret(secret)),
        )
    return token


@contextmanager
def _device(broker: MosquittoBroker, topic: str) -> Iterator[tuple[paho.Client, queue.Queue[bytes]]]:
    """A device subscribed to ``topic``; yields the client and the payloads it receives."""
    received: queue.Queue[bytes] = queue.Queue()
    subscribed = queue.Queue[bool]()
    client = paho.Client(
        callback_api_version=CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5
    )
    client.on_message = lambda c, u, msg: received.put(bytes(msg.payload))
    client.on_subscribe = lambda *args: subscribed.put(True)
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    client.subscribe(topic, qos=1)
    subscribed.get(timeout=10)
    try:
        yield client, received
    finally:
        client.disconnect()
        client.loop_stop()


def _post(client: httpx.Client, token: str, device_id: str, body: Any) -> httpx.Response:
    return client.post(
        f"/devices/{device_id}/commands", json=body, headers={"Authorization": f"Bearer {token}"}
    )


def _post_when_connected(client: httpx.Client, token: str, device_id: str, body: Any) -> httpx.Response:
    """POST, retrying while the API's broker link is still connecting at startup."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        response = _post(client, token, device_id, body)
        if response.status_code != 503 or time.monotonic() > deadline:
            return response
        time.sleep(0.1)


def _wait_state(client: httpx.Client, device_id: str, command_id: str, state: str) -> dict[str, Any]:
    deadline = time.monotonic() + DEADLINE_S
    while True:
        response = client.get(f"/devices/{device_id}/commands/{command_id}")
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        if body["state"] == state:
            return body
        assert body["state"] == "pending", body
        assert time.monotonic() < deadline, f"still {body['state']}, never {state}"
        time.sleep(0.1)


def _settings(settings: Settings, timeout_s: float) -> Settings:
    return settings.model_copy(
        update={"api": settings.api.model_copy(update={"command_timeout_s": timeout_s})}
    )


def test_command_round_trip_ack_and_refusal(settings: Settings, broker: MosquittoBroker) -> None:
    token = _seed(settings.database.url)
    cmd_topic = contract.device_topic("futian", "smart_pole", POLE, contract.CMD)
    ack_topic = contract.device_topic("futian", "smart_pole", POLE, contract.CMD_ACK)
    with serve_api(_settings(settings, 60)) as client, _device(broker, cmd_topic) as (device, inbox):
        response = _post_when_connected(
            client, token, POLE, {"command": "set_lamp_level", "args": {"level": 40}}
        )
        assert response.status_code == 202, response.text
        created = response.json()
        assert created["state"] == "pending" and created["args"] == {"level": 40.0}
        assert created["acked_at"] is None and created["ok"] is None

        # The device receives the contract payload on its cmd topic ...
        command = contract.decode_command(inbox.get(timeout=DEADLINE_S))
        assert command.command_id == created["command_id"]
        assert (command.command, command.args) == ("set_lamp_level", {"level": 40.0})
        contract.check_command("smart_pole", command.command, command.args)
        # ... and acks it: GET shows acked.
        device.publish(
            ack_topic, contract.encode_command_ack(command.command_id, True, contract.now_ms()), qos=1
        )
        acked = _wait_state(client, POLE, command.command_id, "acked")
        assert acked["ok"] is True and acked["acked_at"] is not None

        # A refusal (ok false) is failed, with the device's detail.
        response = _post(client, token, POLE, {"command": "set_lamp_level", "args": {"level": 0}})
        assert response.status_code == 202, response.text
        refused = contract.decode_command(inbox.get(timeout=DEADLINE_S))
        device.publish(
            ack_topic,
            contract.encode_command_ack(refused.command_id, False, contract.now_ms(), "lamp fault"),
            qos=1,
        )
        failed = _wait_state(client, POLE, refused.command_id, "failed")
        assert failed["ok"] is False and failed["detail"] == "lamp fault"

        # The list: newest first, paginated with a cursor.
        first = client.get(f"/devices/{POLE}/commands", params={"limit": 1}).json()
        assert [c["command_id"] for c in first["items"]] == [refused.command_id]
        second = client.get(
            f"/devices/{POLE}/commands", params={"limit": 1, "cursor": first["next_cursor"]}
        ).json()
        assert [c["command_id"] for c in second["items"]] == [command.command_id]
        assert second["next_cursor"] is None


def test_command_without_ack_times_out(settings: Settings, broker: MosquittoBroker) -> None:
    token = _seed(settings.database.url)
    cmd_topic = contract.device_topic("luohu", "water_meter", METER, contract.CMD)
    ack_topic = contract.device_topic("luohu", "water_meter", METER, contract.CMD_ACK)
    with serve_api(_settings(settings, 1.0)) as client, _device(broker, cmd_topic) as (device, inbox):
        response = _post_when_connected(
            client, token, METER, {"command": "set_valve", "args": {"state": "close"}}
        )
        assert response.status_code == 202, response.text
        command_id = response.json()["command_id"]
        assert contract.decode_command(inbox.get(timeout=DEADLINE_S)).args == {"state": "close"}
        timed_out = _wait_state(client, METER, command_id, "timed_out")
        assert timed_out["ok"] is None
        # A late ack is recorded but does not turn a timed-out command into an acked one.
        device.publish(ack_topic, contract.encode_command_ack(command_id, True, contract.now_ms()), qos=1)
        deadline = time.monotonic() + DEADLINE_S
        while (late := client.get(f"/devices/{METER}/commands/{command_id}").json())["ok"] is None:
            assert time.monotonic() < deadline, "the late ack was never recorded"
            time.sleep(0.1)
        assert late["state"] == "timed_out" and late["ok"] is True


def test_bad_commands_are_4xx(settings: Settings) -> None:
    token = _seed(settings.database.url)
    with serve_api(settings) as client:
        cases = [
            (POLE, {"command": "set_valve", "args": {"state": "open"}}, 400, "invalid_command"),
            (METER, {"command": "set_lamp_level", "args": {"level": 10}}, 400, "invalid_command"),
            (POLE, {"command": "set_lamp_level", "args": {"level": 150}}, 400, "invalid_command"),
            (POLE, {"command": "self_destruct"}, 400, "invalid_command"),
            (POLE, {"args": {"level": 10}}, 422, "invalid_parameter"),
            (POLE, {"command": "set_lamp_level", "args": [40]}, 422, "invalid_parameter"),
            ("no-such-device", {"command": "set_lamp_level", "args": {"level": 10}}, 404, "device_not_found"),
        ]
        for device_id, body, status, code in cases:
            response = _post(client, token, device_id, body)
            assert response.status_code == status, (body, response.text)
            assert response.json()["error"]["code"] == code, (body, response.text)
        missing = client.get(f"/devices/{POLE}/commands/c-nothing")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "command_not_found"
        assert client.get("/devices/no-such-device/commands").status_code == 404
        # Nothing was stored for the refused requests.
        assert client.get(f"/devices/{POLE}/commands").json()["items"] == []


def test_broker_down_is_503_and_the_rest_still_answers(settings: Settings, broker: MosquittoBroker) -> None:
    token = _seed(settings.database.url)
    body = {"command": "set_lamp_level", "args": {"level": 40}}
    with serve_api(settings) as client:
        assert _post_when_connected(client, token, POLE, body).status_code == 202
        broker.stop()
        deadline = time.monotonic() + DEADLINE_S
        while (response := _post(client, token, POLE, body)).status_code != 503:
            assert response.status_code == 202, response.text
            assert time.monotonic() < deadline, "the API never noticed the broker went away"
            time.sleep(0.1)
        error = response.json()["error"]
        assert error["code"] == "broker_unavailable" and "broker" in error["message"]
        assert client.get("/alerts").status_code == 200
        assert client.get(f"/devices/{POLE}/commands").status_code == 200
        # The link reconnects by itself when the broker is back.
        broker.start()
        assert _post_when_connected(client, token, POLE, body).status_code == 202
