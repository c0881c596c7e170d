"""Nothing acknowledged is lost: ingest killed with SIGKILL mid-stream, and a database outage."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import paho.mqtt.client as paho
import psycopg
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from cityneuron.contract import encode_reading, now_ms
from cityneuron.schema import init_schema
from cityneuron.servers import MosquittoBroker, PostgresServer, free_port
from cityneuron.settings import DatabaseSettings, IngestSettings, MqttSettings, Settings
from ingest.service import IngestService

REPO = Path(__file__).resolve().parent.parent
DEVICES = 20


def _count(url: str, query: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(query).fetchone()
    assert row is not None
    return int(row[0])


def _wait_for_count(url: str, query: str, expected: int, timeout_s: float) -> int:
    deadline = time.monotonic() + timeout_s
    while True:
        n = _count(url, query)
        if n >= expected or time.monotonic() > deadline:
            return n
        time.sleep(0.05)


class _Publisher(threading.Thread):
    """Publishes ``total`` QoS 1 readings, numbered by seq, spread over DEVICES smart poles."""

    def __init__(self, port: int, total: int, first_seq: int = 0, per_second: float = 0) -> None:
        super().__init__(name="publisher", daemon=True)
        self.port = port
        self.seqs = range(first_seq, first_seq + total)
        self.per_second = per_second
        self.base_ms = now_ms() - 3_600_000
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            client = paho.Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5)
            client.max_inflight_messages_set(100)
            client.connect("127.0.0.1", self.port)
            client.loop_start()
            started = time.monotonic()
            infos = []
            for seq in self.seqs:
                topic = f"city/futian/smart_pole/pole-{seq % DEVICES}/telemetry"
                payload = encode_reading(self.base_ms + seq * 10, {"lamp_level": float(seq % 100)}, seq=seq)
                infos.append(client.publish(topic, payload, qos=1))
                if self.per_second:
                    time.sleep(
                        max(0.0, started + (seq - self.seqs.start + 1) / self.per_second - time.monotonic())
                    )
            for info in infos:
                info.wait_for_publish(30)
                assert info.is_published()
            client.disconnect()
            client.loop_stop()
        except BaseException as exc:
            self.error = exc


def _spawn_ingest(
    env: dict[str, str], broker: MosquittoBroker, db_url: str, client_id: str, log_file: Path
) -> tuple[subprocess.Popen[bytes], int]:
    http_port = free_port()
    child_env = {
        **env,
        "CITYNEURON_LOG_LEVEL": "WARNING",
        "CITYNEURON_MQTT__PORT": str(broker.port),
        "CITYNEURON_DATABASE__URL": db_url,
        "CITYNEURON_INGEST__CLIENT_ID": client_id,
        "CITYNEURON_INGEST__HTTP_PORT": str(http_port),
        # Small batches and window: many commits, so a kill lands between commit and ack often.
        "CITYNEURON_INGEST__BATCH_MAX_MESSAGES": "50",
        "CITYNEURON_INGEST__RECEIVE_MAXIMUM": "100",
        "CITYNEURON_INGEST__FLUSH_INTERVAL_MS": "20",
    }
    with log_file.open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "ingest"], cwd=REPO, env=child_env, stdout=log, stderr=subprocess.STDOUT
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert process.poll() is None, log_file.read_text()[-2000:]
        try:
            if httpx.get(f"http://127.0.0.1:{http_port}/ready", timeout=1).status_code == 200:
                return process, http_port
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    process.kill()
    raise AssertionError(f"ingest did not become ready: {log_file.read_text()[-2000:]}")


def test_kill_9_midway_loses_and_duplicates_nothing(
    settings: Settings, broker: MosquittoBroker, process_env: dict[str, str], tmp_path: Path
) -> None:
    total = 3000
    url = settings.database.url
    stored = "SELECT count(*) FROM reading_smart_pole"
    log_file = tmp_path / "ingest.log"
    client_id = settings.ingest.client_id
    process, _ = _spawn_ingest(process_env, broker, url, client_id, log_file)
    publisher = _Publisher(broker.port, total, per_second=1500)
    publisher.start()
    try:
        for fraction in (0.25, 0.6):
            at_kill = _wait_for_count(url, stored, int(total * fraction), timeout_s=30)
            process.kill()  # SIGKILL: no drain, no clean disconnect
            process.wait()
            assert at_kill < total, "the kill must land while readings are still flowing"
            # Readings keep arriving at the broker while ingest is down: its session queues them.
            time.sleep(0.3)
            process, _ = _spawn_ingest(process_env, broker, url, client_id, log_file)
        publisher.join(60)
        assert publisher.error is None
        assert _wait_for_count(url, stored, total, timeout_s=60) == total
        time.sleep(0.5)  # anything still redelivered would show up as an extra row now
    finally:
        process.terminate()
        process.wait(30)
    assert process.returncode == 0, log_file.read_text()[-2000:]
    assert _count(url, stored) == total
    assert _count(url, "SELECT count(DISTINCT seq) FROM reading_smart_pole") == total
    assert _count(url, "SELECT min(seq) FROM reading_smart_pole") == 0
    assert _count(url, "SELECT max(seq) FROM reading_smart_pole") == total - 1
    assert _count(url, "SELECT count(*) FROM dead_letter") == 0


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server this test may stop and start (the shared one must stay up)."""
    root = Path(tempfile.mkdtemp(prefix="cityneuron-pg-outage-"))
    root.chmod(0o711)  # the unprivileged postgres user must enter it
    server = PostgresServer(root / "pg", free_port(), timescaledb=False)
    with server:
        yield server
    shutil.rmtree(root, ignore_errors=True)


def test_database_outage_holds_the_batch_until_it_commits(
    own_postgres: PostgresServer, broker: MosquittoBroker
) -> None:
    database = DatabaseSettings.model_validate({"url": own_postgres.url, "connect_timeout_s": 1})
    init_schema(database)
    settings = Settings(
        mqtt=MqttSettings.model_validate({"port": broker.port}),
        database=database,
        ingest=IngestSettings.model_validate(
            {"client_id": "ingest-outage", "http_port": 0, "db_retry_max_delay_s": 0.5}
        ),
    )
    stored = "SELECT count(*) FROM reading_smart_pole"
    with IngestService(settings) as service:
        assert service.wait_ready(15)
        first = _Publisher(broker.port, 200)
        first.run()
        assert first.error is None
        assert _wait_for_count(database.url, stored, 200, timeout_s=15) == 200

        own_postgres.stop()
        second = _Publisher(broker.port, 300, first_seq=200)
        second.run()
        assert second.error is None
        ready = f"http://127.0.0.1:{service.http_port}/ready"
        deadline = time.monotonic() + 15
        while httpx.get(ready).status_code != 503 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert httpx.get(ready).status_code == 503
        time.sleep(1.0)  # a few failed attempts while the readings wait unacked
        retries = service.metrics.registry.get_sample_value("cityneuron_ingest_db_retries_total")
        assert retries is not None and retries >= 2

        own_postgres.start()
        assert _wait_for_count(database.url, stored, 500, timeout_s=30) == 500
        assert service.wait_ready(15)
    assert _count(database.url, "SELECT count(DISTINCT seq) FROM reading_smart_pole") == 500
    assert _count(database.url, "SELECT count(*) FROM dead_letter") == 0


def test_broker_restart_resumes_the_session(settings: Settings, broker: MosquittoBroker) -> None:
    ingest = settings.ingest.model_copy(update={"http_port": 0})
    stored = "SELECT count(*) FROM reading_smart_pole"
    with IngestService(settings.model_copy(update={"ingest": ingest})) as service:
        assert service.wait_ready(15)
        first = _Publisher(broker.port, 100)
        first.run()
        assert first.error is None
        assert _wait_for_count(settings.database.url, stored, 100, timeout_s=15) == 100
        broker.stop(graceful=True)  # saves the sessions to the persistence file
        broker.start()
        assert service.wait_ready(30), "ingest did not reconnect and resubscribe"
        second = _Publisher(broker.port, 100, first_seq=100)
        second.run()
        assert second.error is None
        assert _wait_for_count(settings.database.url, stored, 200, timeout_s=15) == 200
    assert _count(settings.database.url, "SELECT count(DISTINCT seq) FROM reading_smart_pole") == 200
