"""The cityneuron command line: settings precedence and `db init`."""

from __future__ import annotations

import subprocess
import sys

import psycopg
import pytest

from cityneuron.cli import _parser, build_settings, main
from cityneuron.schema import SCHEMA_VERSION
from cityneuron.settings import DatabaseSettings


def test_command_line_overrides_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CITYNEURON_MQTT__PORT", "1999")
    monkeypatch.setenv("CITYNEURON_SIMULATOR__SEED", "7")
    settings = build_settings(_parser().parse_args(["sim", "--mqtt-port", "2001", "--speed", "60"]))
    assert settings.mqtt.port == 2001
    assert settings.simulator.speed == 60
    assert settings.simulator.seed == 7  # from the environment, not overridden


def test_invalid_setting_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sim", "--speed", "-1"]) == 2
    assert "invalid settings" in capsys.readouterr().err


def test_db_init_cli_is_idempotent(database: DatabaseSettings, process_env: dict[str, str]) -> None:
    for _ in range(2):
        result = subprocess.run(
            [sys.executable, "-m", "cityneuron", "db", "init", "--database-url", database.url],
            capture_output=True,
            text=True,
            env=process_env,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        assert "schema ready" in result.stdout
    with psycopg.connect(database.url) as conn:
        assert conn.execute("SELECT count(*) FROM schema_version").fetchone() == (SCHEMA_VERSION,)


def test_unreachable_database_is_a_one_line_error(process_env: dict[str, str]) -> None:
    from cityneuron.servers import free_port

    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "cityneuron",
            "db",
            "init",
            "--database-url",
            f"postgresql://nobody@127.0.0.1:{free_port()}/none",
        ],
        capture_output=True,
        text=True,
        env=process_env,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.startswith("cityneuron: could not initialise the database schema")
    assert "Traceback" not in result.stderr
