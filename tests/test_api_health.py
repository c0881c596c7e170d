"""Readiness: /health/ready answers 503 until the device registry holds the devices asked for."""

from __future__ import annotations

import psycopg
from apiserver import serve_api

from cityneuron.servers import MosquittoBroker, free_port
from cityneuron.settings import DatabaseSettings, MqttSettings, Settings


def _register(url: str, *device_ids: str) -> None:
    with psycopg.connect(url) as conn:
        for device_id in device_ids:
            conn.execute(
                "INSERT INTO devices (device_id, kind, district) VALUES (%s, 'smart_pole', 'futian')",
                (device_id,),
            )


def test_ready_only_once_the_registry_has_the_devices(
    database: DatabaseSettings, broker: MosquittoBroker
) -> None:
    with serve_api(Settings(mqtt=MqttSettings(port=broker.port), database=database)) as client:
        # Broker and database answer, but no device is registered yet: alive, not ready.
        health = client.get("/health")
        assert health.status_code == 200
        assert health.json()["ready"] is False and health.json()["database"]["devices"] == 0
        ready = client.get("/health/ready")
        assert ready.status_code == 503
        assert "registry holds 0 device(s)" in ready.json()["ready_detail"]

        _register(database.url, "pole-futian-00001", "pole-futian-00002")
        assert client.get("/health").json()["ready"] is True
        ready = client.get("/health/ready")
        assert ready.status_code == 200 and ready.json()["ready_detail"] is None
        # `cityneuron up` asks for its whole city.
        assert client.get("/health/ready", params={"min_devices": 3}).status_code == 503
        answer = client.get("/health/ready", params={"min_devices": 2})
        assert answer.status_code == 200 and answer.json()["database"]["devices"] == 2
        assert client.get("/health/ready", params={"min_devices": 0}).status_code == 422


def test_not_ready_while_the_database_is_down(database: DatabaseSettings, broker: MosquittoBroker) -> None:
    down = database.model_copy(update={"url": f"postgresql://nobody:x@127.0.0.1:{free_port()}/none"})
    with serve_api(Settings(mqtt=MqttSettings(port=broker.port), database=down)) as client:
        ready = client.get("/health/ready")
        assert ready.status_code == 503
        assert ready.json()["ready"] is False and ready.json()["ready_detail"]
