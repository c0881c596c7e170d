"""`cityneuron up` as a user runs it: the whole stack in one command, stopped with Ctrl-C."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from cityneuron.servers import free_port


@pytest.fixture
def stack_home() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="cityneuron-up-"))
    root.chmod(0o711)
    yield root / "home"
    shutil.rmtree(root, ignore_errors=True)


def _up_command(home: Path, ports: dict[str, int], *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "cityneuron",
        "up",
        "--home",
        str(home),
        "--mqtt-port",
        str(ports["mqtt"]),
        "--postgres-port",
        str(ports["postgres"]),
        "--api-port",
        str(ports["api"]),
        "--ingest-http-port",
        str(ports["ingest"]),
        *extra,
    ]


def _wait_for(predicate, timeout_s: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = predicate()
            if result:
                return result
        except httpx.HTTPError as exc:
            last_error = exc
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what} (last error: {last_error})")


def test_up_runs_the_city_and_stops_cleanly(stack_home: Path, process_env: dict[str, str]) -> None:
    ports = {name: free_port() for name in ("mqtt", "postgres", "api", "ingest")}
    process = subprocess.Popen(
        _up_command(stack_home, ports, "--speed", "60"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=process_env,
    )
    output: list[str] = []
    try:
        assert process.stdout is not None
        for line in process.stdout:
            output.append(line)
            if "Press Ctrl-C to stop" in line:
                break
        assert process.poll() is None, "".join(output)
        banner = "".join(output)
        api = f"http://127.0.0.1:{ports['api']}"
        assert api in banner

        with httpx.Client(base_url=api, timeout=5) as client:
            health = client.get("/health").json()
            assert health["database"]["reachable"] and health["broker"]["reachable"]
            poles = _wait_for(
                lambda: client.get("/devices", params={"kind": "smart_pole"}).json()["items"],
                60,
                "registered poles",
            )
            stations = _wait_for(
                lambda: client.get("/devices", params={"kind": "air_station"}).json()["items"],
                60,
                "registered air stations",
            )
            assert all(s["online"] for s in stations)
            pole = poles[0]
            latest = _wait_for(
                lambda: (
                    client.get(f"/devices/{pole['device_id']}/latest").status_code == 200
                    and client.get(f"/devices/{pole['device_id']}/latest").json()
                ),
                90,
                "a pole's latest reading",
            )
            assert "lamp_level" in latest["metrics"]
    finally:
        process.send_signal(signal.SIGINT)
        rest, _ = process.communicate(timeout=60)
        output.append(rest or "")
    assert process.returncode == 0, "".join(output)
    for name, port in ports.items():
        # Everything it started has stopped listening.
        with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), timeout=2):
            pytest.fail(f"{name} still listens on {port}")


def test_up_busy_port_is_a_one_line_error(stack_home: Path, process_env: dict[str, str]) -> None:
    ports = {name: free_port() for name in ("mqtt", "postgres", "api", "ingest")}
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", ports["api"]))
        blocker.listen()
        result = subprocess.run(
            _up_command(stack_home, ports), capture_output=True, text=True, env=process_env, timeout=60
        )
    assert result.returncode == 1
    assert f"port {ports['api']} for the API is busy" in result.stderr
    assert "Traceback" not in result.stderr


def test_up_missing_binary_says_what_to_do(stack_home: Path, process_env: dict[str, str]) -> None:
    ports = {name: free_port() for name in ("mqtt", "postgres", "api", "ingest")}
    env = {**process_env, "CITYNEURON_STACK__MOSQUITTO_BIN": "/nonexistent/mosquitto"}
    result = subprocess.run(
        _up_command(stack_home, ports), capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 1
    assert "mosquitto not found at /nonexistent/mosquitto" in result.stderr
    assert "Traceback" not in result.stderr
