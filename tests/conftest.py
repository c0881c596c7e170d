"""Fixtures: a REAL Mosquitto and a REAL PostgreSQL on free ports in temporary folders.

PostgreSQL servers live for the session (starting one takes seconds); every test gets a new,
empty database in them. Mosquitto starts per test (milliseconds), so no retained message or
persistent session leaks from one test into the next.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from cityneuron.errors import ConfigError
from cityneuron.schema import init_schema
from cityneuron.servers import (
    MosquittoBroker,
    PostgresServer,
    find_mosquitto,
    find_postgres_bin_dir,
    free_port,
)
from cityneuron.settings import DatabaseSettings, MqttSettings, Settings


def pytest_report_header() -> str:
    # The broker fixtures refuse a Mosquitto older than 2.0.12 (cityneuron.servers.find_mosquitto):
    # say so once at the top instead of only in every broker test's error.
    try:
        return f"mosquitto: {find_mosquitto()}"
    except ConfigError as exc:
        return f"mosquitto: REFUSED, every broker test will fail: {exc}"


def _scratch_dir(prefix: str) -> Path:
    # Not pytest's tmp_path: that lives under a 0700 folder the unprivileged 'postgres' and
    # 'mosquitto' users (we run as root in CI) cannot enter.
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o711)
    return path


def _timescaledb_installed() -> bool:
    try:
        bin_dir = find_postgres_bin_dir()
    except ConfigError:
        return False
    import subprocess

    libdir = subprocess.run(
        [str(bin_dir / "pg_config"), "--pkglibdir"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return bool(libdir) and any(Path(libdir).glob("timescaledb*.so"))


@pytest.fixture(scope="session")
def postgres_plain() -> Iterator[PostgresServer]:
    root = _scratch_dir("cityneuron-pg-")
    server = PostgresServer(root / "pg", free_port(), timescaledb=False)
    with server:
        yield server
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_timescaledb() -> Iterator[PostgresServer]:
    if not _timescaledb_installed():
        pytest.skip("TimescaleDB extension is not installed for this PostgreSQL (CI runs plain PostgreSQL)")
    root = _scratch_dir("cityneuron-tsdb-")
    server = PostgresServer(root / "pg", free_port(), timescaledb=True)
    with server:
        yield server
    shutil.rmtree(root, ignore_errors=True)


def _fresh_database(server: PostgresServer) -> DatabaseSettings:
    url = server.create_database(f"t_{uuid.uuid4().hex[:12]}")
    settings = DatabaseSettings(url=url)
    init_schema(settings)
    return settings


@pytest.fixture
def database(postgres_plain: PostgresServer) -> DatabaseSettings:
    """A new, initialised database on plain PostgreSQL."""
    return _fresh_database(postgres_plain)


@pytest.fixture
def tsdb_database(postgres_timescaledb: PostgresServer) -> DatabaseSettings:
    """A new, initialised database with TimescaleDB (skips when the extension is absent)."""
    return _fresh_database(postgres_timescaledb)


@pytest.fixture(params=["plain", "timescaledb"])
def any_database(request: pytest.FixtureRequest) -> DatabaseSettings:
    """Both storage paths: plain PostgreSQL and TimescaleDB (the latter skips when absent)."""
    if request.param == "plain":
        return _fresh_database(request.getfixturevalue("postgres_plain"))
    return _fresh_database(request.getfixturevalue("postgres_timescaledb"))


@pytest.fixture
def broker() -> Iterator[MosquittoBroker]:
    """An anonymous broker for tests that do not exercise authentication (the shipped
    configurations never allow anonymous clients: tests/test_security_broker.py)."""
    root = _scratch_dir("cityneuron-mq-")
    with MosquittoBroker(root / "mosquitto", free_port(), anonymous=True) as server:
        yield server
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def settings(broker: MosquittoBroker, database: DatabaseSettings) -> Settings:
    """Settings pointing at this test's broker and database."""
    return Settings(
        mqtt=MqttSettings(port=broker.port),
        database=database,
        # http_port 0: an ephemeral port, never the machine's 9108 (a running `cityneuron up`).
        ingest={"client_id": f"ingest-{uuid.uuid4().hex[:8]}", "flush_interval_ms": 50, "http_port": 0},  # type: ignore[arg-type]
    )


@pytest.fixture
def process_env() -> dict[str, str]:
    """Environment for child processes started by a test (unbuffered, quiet)."""
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    return env
