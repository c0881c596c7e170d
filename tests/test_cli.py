"""The cityneuron command line: settings precedence and `db init`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from cityneuron import localstack
from cityneuron.cli import _parser, build_settings, main
from cityneuron.schema import SCHEMA_VERSION
from cityneuron.settings import DatabaseSettings, Settings


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


# --- commands run next to a local stack find it (cityneuron/localstack.py) ------------------


def _stack_home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    (home / "secrets").mkdir(parents=True)
    (home / "postgres").mkdir()
    (home / "postgres" / "cityneuron.password").write_text("pg/secret+1\n")
    (home / "secrets" / "gw.city.password").write_text("gw-secret\n")
    localstack.write(
        localstack.LocalStack(
            home=home,
            mqtt_host="127.0.0.1",
            mqtt_port=18830,
            postgres_port=55433,
            database_role="cityneuron",
            database_name="cityneuron",
            database_password_file=home / "postgres" / "cityneuron.password",
            api_url="http://127.0.0.1:8001",
            ingest_metrics_url="http://127.0.0.1:9109/metrics",
            gateway_user="gw.city",
            gateway_password_file=home / "secrets" / "gw.city.password",
            device_key_file=home / "secrets" / "device.key",
        )
    )
    return home


def _settings(*argv: str) -> Settings:
    return build_settings(_parser().parse_args(list(argv)))


def test_commands_next_to_a_stack_use_its_database_and_broker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in [k for k in os.environ if k.startswith("CITYNEURON_")]:
        monkeypatch.delenv(name)
    home = _stack_home(tmp_path)
    # The file names where the secrets are, never a secret.
    facts = (home / localstack.STACK_FILE).read_text()
    assert "pg/secret" not in facts and "gw-secret" not in facts
    apikey = _settings("apikey", "list", "--home", str(home))
    assert apikey.database.url == "postgresql://cityneuron:pg%2Fsecret%2B1@127.0.0.1:55433/cityneuron"
    load = _settings("load", "--home", str(home))
    assert (load.mqtt.host, load.mqtt.port, load.mqtt.username, load.mqtt.password) == (
        "127.0.0.1",
        18830,
        "gw.city",
        "gw-secret",
    )
    assert load.simulator.device_key_file == home / "secrets" / "device.key"
    # The default home is ./.cityneuron, as for `up`.
    monkeypatch.chdir(tmp_path)
    home.rename(tmp_path / ".cityneuron")
    assert _settings("apikey", "list").database.url.endswith("@127.0.0.1:55433/cityneuron")
    # Commands that are not run next to the stack are left alone.
    assert _settings("ingest").database.url == DatabaseSettings().url


def test_explicit_settings_win_over_the_stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [k for k in os.environ if k.startswith("CITYNEURON_")]:
        monkeypatch.delenv(name)
    home = str(_stack_home(tmp_path))
    given = "postgresql://me@db.example:5432/x"
    assert _settings("apikey", "list", "--home", home, "--database-url", given).database.url == given
    # A broker URL of one's own: none of the stack's broker facts, least of all its password.
    load = _settings("load", "--home", home, "--mqtt-url", "mqtt://broker.example:1883")
    assert load.mqtt.password is None and load.mqtt.port != 18830
    monkeypatch.setenv("CITYNEURON_DATABASE__URL", given)
    monkeypatch.setenv("CITYNEURON_MQTT__HOST", "broker.example")
    env = _settings("load", "--home", home)
    assert env.database.url == given
    assert (env.mqtt.host, env.mqtt.username, env.mqtt.password) == ("broker.example", None, None)


def test_apikey_without_a_stack_says_how_to_get_one(tmp_path: Path, process_env: dict[str, str]) -> None:
    env = {k: v for k, v in process_env.items() if not k.startswith("CITYNEURON_")}
    env["CITYNEURON_DATABASE__CONNECT_TIMEOUT_S"] = "2"
    result = subprocess.run(
        [sys.executable, "-m", "cityneuron", "apikey", "list"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
    )
    assert result.returncode == 1
    assert "database unreachable" in result.stderr
    assert f"no local stack in {tmp_path / '.cityneuron'}: start one with ./scripts/run.sh" in result.stderr
