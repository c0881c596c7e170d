"""A database outage under the API: 503 at once while it is down, service again when it is back.

A real PostgreSQL of the test's own (the shared one must stay up) is stopped and started again.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
from apiserver import serve_api

from cityneuron.schema import init_schema
from cityneuron.servers import MosquittoBroker, PostgresServer, free_port
from cityneuron.settings import DatabaseSettings, MqttSettings, Settings

# Well under the pool's wait (database.connect_timeout_s, 5 s here as by default), loose enough
# for a machine shared with other work: the point is "not the timeout", not a latency figure.
FAST_S = 2.0
VIEWS = (
    ("/devices", {}),
    ("/devices/pole-futian-00001", {}),
    ("/devices/pole-futian-00001/latest", {}),
    ("/aggregates", {"kind": "smart_pole", "metric": "noise_dba"}),
    ("/city/overview", {}),
)


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    root = Path(tempfile.mkdtemp(prefix="cityneuron-pg-api-outage-"))
    root.chmod(0o711)  # the unprivileged postgres user must enter it
    server = PostgresServer(root / "pg", free_port(), timescaledb=False)
    with server:
        yield server
    shutil.rmtree(root, ignore_errors=True)


def _get(client: httpx.Client, path: str, params: dict[str, str]) -> tuple[int, float]:
    started = time.monotonic()
    status = client.get(path, params=params).status_code
    return status, time.monotonic() - started


def test_database_down_answers_503_at_once_and_recovers(
    own_postgres: PostgresServer, broker: MosquittoBroker
) -> None:
    database = DatabaseSettings.model_validate({"url": own_postgres.url, "connect_timeout_s": 5})
    init_schema(database)
    with psycopg.connect(database.url) as conn:
        conn.execute(
            "INSERT INTO devices (device_id, kind, district) VALUES ('pole-futian-00001', 'smart_pole', 'futian')"
        )
    settings = Settings(mqtt=MqttSettings(port=broker.port), database=database)
    with serve_api(settings) as client:
        assert client.get("/devices").status_code == 200
        own_postgres.stop()
        # The first request may find out the hard way (at most the pool's timeout) ...
        status, _ = _get(client, "/devices", {})
        assert status == 503
        # ... every later one is answered at once while the database stays down.
        for _ in range(3):
            for path, params in VIEWS:
                status, took = _get(client, path, params)
                assert status == 503, path
                assert took < FAST_S, f"{path} took {took:.1f} s to say the database is down"
        body = client.get("/devices").json()
        assert body["error"]["code"] == "database_unavailable"
        assert "database unavailable since" in body["error"]["message"]

        own_postgres.start()
        deadline = time.monotonic() + 20
        while client.get("/devices").status_code != 200:
            assert time.monotonic() < deadline, "the API did not recover after the database came back"
            time.sleep(0.2)
        for path, params in VIEWS:
            status, _ = _get(client, path, params)
            assert status in (200, 404), path  # 404: the device has no reading yet
