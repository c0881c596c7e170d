"""`cityneuron up` as a user runs it: the whole stack in one command, stopped with Ctrl-C.

The stack's broker is the secure one: every child connects with its own credentials.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.reasoncodes import ReasonCode

from cityneuron.provision import DASHBOARD_USER
from cityneuron.servers import free_port
from cityneuron.settings import Settings
from cityneuron.stack import CERT_PORT_OFFSET, WEBSOCKETS_PORT_OFFSET, city_device_ids
from simulator.city import kind_counts


def _free_port_run(count: int) -> int:
    """A port p with p .. p+count-1 all free (the TLS, client-certificate and WebSocket listeners)."""
    while True:
        base = free_port()
        try:
            for port in range(base, base + count):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", port))
                with socket.socket() as sock:
                    sock.bind(("0.0.0.0", port))
        except OSError:
            continue
        return base


def _ports() -> dict[str, int]:
    ports = {name: free_port() for name in ("mqtt", "postgres", "api", "ingest")}
    tls = _free_port_run(3)
    ports |= {"tls": tls, "cert": tls + CERT_PORT_OFFSET, "ws": tls + WEBSOCKETS_PORT_OFFSET}
    return ports


def _env(process_env: dict[str, str], ports: dict[str, int]) -> dict[str, str]:
    return {**process_env, "CITYNEURON_STACK__MQTT_TLS_PORT": str(ports["tls"])}


def _mqtt_connack(port: int, user: tuple[str, str] | None, transport: str = "tcp") -> ReasonCode | None:
    """Connect, wait for CONNACK, subscribe to city/# for a moment; returns the CONNACK code."""
    result: dict[str, Any] = {"messages": []}
    connected = threading.Event()

    def on_connect(client: paho.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any) -> None:
        result["reason"] = reason
        connected.set()

    client = paho.Client(
        CallbackAPIVersion.VERSION2,
        protocol=MQTTProtocolVersion.MQTTv5,
        transport=transport,  # type: ignore[arg-type]
    )
    client.on_connect = on_connect
    if user is not None:
        client.username_pw_set(*user)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        connected.wait(10)
        return result.get("reason")
    finally:
        client.disconnect()
        client.loop_stop()


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


def _wait_for(predicate: Callable[[], Any], timeout_s: float, what: str) -> Any:
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
    ports = _ports()
    process = subprocess.Popen(
        _up_command(stack_home, ports, "--speed", "60"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=_env(process_env, ports),
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
            # The banner waited for the city: all of it is listed at once, no waiting here.
            city = sum(1 for _ in city_device_ids(Settings()))
            # (Generous timeouts: the whole city runs on this machine at 60x while the test asks.)
            ready = client.get("/health/ready", params={"min_devices": city}, timeout=30)
            assert ready.status_code == 200, ready.text
            assert client.get("/devices", params={"kind": "air_station"}, timeout=30).json()["items"]
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
            # Writes need a key; `up` wrote an admin token for the person running it.
            command = {"command": "set_lamp_level", "args": {"level": 40}}
            path = f"/devices/{pole['device_id']}/commands"
            assert client.post(path, json=command).status_code == 401
            token = (stack_home / "secrets" / "api-admin.token").read_text().strip()
            accepted_command = client.post(path, json=command, headers={"Authorization": f"Bearer {token}"})
            assert accepted_command.status_code == 202, accepted_command.text
        # The broker is the secure one: no anonymous clients; dashboards log in over WebSockets
        # with the password `up` provisioned.
        assert f"mqtts://<host>:{ports['tls']}" in banner
        # The banner names the broker's pid, the one `cityneuron broker reload` signals.
        pid_file = stack_home / "mosquitto" / "mosquitto.pid"
        assert f"broker pid {pid_file.read_text().strip()}  (reload: cityneuron broker reload)" in banner
        refused = _mqtt_connack(ports["mqtt"], None)
        assert refused is not None and refused.is_failure
        dashboard_password = (stack_home / "secrets" / f"{DASHBOARD_USER}.password").read_text().strip()
        accepted = _mqtt_connack(ports["ws"], (DASHBOARD_USER, dashboard_password), transport="websockets")
        assert accepted is not None and not accepted.is_failure
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
    ports = _ports()
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", ports["api"]))
        blocker.listen()
        result = subprocess.run(
            _up_command(stack_home, ports),
            capture_output=True,
            text=True,
            env=_env(process_env, ports),
            timeout=60,
        )
    assert result.returncode == 1
    assert f"port {ports['api']} for the API is busy" in result.stderr
    assert "Traceback" not in result.stderr


def test_up_missing_binary_says_what_to_do(stack_home: Path, process_env: dict[str, str]) -> None:
    ports = _ports()
    env = {**_env(process_env, ports), "CITYNEURON_STACK__MOSQUITTO_BIN": "/nonexistent/mosquitto"}
    result = subprocess.run(
        _up_command(stack_home, ports), capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 1
    assert "mosquitto not found at /nonexistent/mosquitto" in result.stderr
    assert "Traceback" not in result.stderr


def test_up_ctrl_c_stops_everything_within_seconds(stack_home: Path, process_env: dict[str, str]) -> None:
    """Ctrl-C in a terminal signals the whole foreground process group at once: the stack, its
    services, the broker and PostgreSQL. The simulator must not keep dialing a broker that is
    gone (it did, for 15 s, until the stack killed it)."""
    ports = _ports()
    process = subprocess.Popen(
        # Real time, as ./scripts/run.sh runs it.
        _up_command(stack_home, ports),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=_env(process_env, ports),
        # Its own process group, so the test can do what the terminal does.
        start_new_session=True,
    )
    output: list[str] = []
    try:
        assert process.stdout is not None
        for line in process.stdout:
            output.append(line)
            if "Press Ctrl-C to stop" in line:
                break
        assert process.poll() is None, "".join(output)
        # Ctrl-C in steady state, as a user would: the simulator's opening burst (every
        # device's status and latest report, hydrology stations last) is stored, so the
        # ingest has no backlog of thousands of messages to commit before it stops.
        with httpx.Client(base_url=f"http://127.0.0.1:{ports['api']}", timeout=5) as client:
            stations = _wait_for(
                lambda: client.get("/devices", params={"kind": "hydrology_station"}).json()["items"],
                120,
                "registered hydrology stations",
            )
            _wait_for(
                lambda: client.get(f"/devices/{stations[-1]['device_id']}/latest").status_code == 200,
                120,
                "the last station's first report",
            )
        started = time.monotonic()
        os.killpg(process.pid, signal.SIGINT)
        rest, _ = process.communicate(timeout=60)
        elapsed_s = time.monotonic() - started
        output.append(rest or "")
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    text = "".join(output)
    assert process.returncode == 0, text
    assert "killing it" not in text, text
    # The broker outlived its clients: the simulator finished without losing its connection,
    # at once (the rest is the ingest committing what it holds and the servers stopping).
    assert "simulator finished" in text and "lost its connection" not in text, text[-3000:]
    signalled = re.search(r"^(\S+ \S+) INFO cityneuron.simulator: received SIGINT", text, re.M)
    finished = re.search(r"^(\S+ \S+) INFO cityneuron.simulator: simulator finished", text, re.M)
    assert signalled and finished, text[-3000:]
    stamp = "%Y-%m-%d %H:%M:%S,%f"
    sim_stop_s = (
        datetime.strptime(finished[1], stamp) - datetime.strptime(signalled[1], stamp)
    ).total_seconds()
    assert sim_stop_s < 3.0, text[-3000:]
    assert elapsed_s < 8.0, f"Ctrl-C took {elapsed_s:.1f} s:\n{text[-3000:]}"
    for name, port in ports.items():
        with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), timeout=2):
            pytest.fail(f"{name} still listens on {port}")


def _descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (from /proc: no extra package needed)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may hold spaces, so split after its closing paren.
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] != "Z":
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _cmdline(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def test_up_shenzhen_needs_no_device_passwords_and_copies_the_registry(
    stack_home: Path, process_env: dict[str, str]
) -> None:
    """The 1:1 city's start-up path at 1/1000: gateway mode hashes no device password, the
    registry arrives by COPY (devices already running: heard from, online), no statuses."""
    ports = _ports()
    process = subprocess.Popen(
        _up_command(stack_home, ports, "--preset", "shenzhen", "--scale", "0.001"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # 17 k devices stand for the 1:1 city: above the limit, as 17 M are above the default.
        env={**_env(process_env, ports), "CITYNEURON_STACK__PER_DEVICE_MAX_DEVICES": "1000"},
    )
    output: list[str] = []
    try:
        assert process.stdout is not None
        for line in process.stdout:
            output.append(line)
            if "Press Ctrl-C to stop" in line:
                break
        assert process.poll() is None, "".join(output)
        passwd = (stack_home / "mosquitto" / "auth" / "passwd").read_text().splitlines()
        # Services and the city gateway only: no device line.
        assert all("." in line.split(":", 1)[0] for line in passwd), passwd[:5]
        api = f"http://127.0.0.1:{ports['api']}"
        with httpx.Client(base_url=api, timeout=10) as client:
            meters = client.get("/devices", params={"kind": "water_meter", "limit": 50}).json()["items"]
            assert len(meters) == 50
            # Registered before any telemetry, yet not "unknown": the fleet was already running.
            assert all(m["online"] and m["status"] == "online" for m in meters), meters[:2]
            assert all(m["lat"] is not None for m in meters)
            overview = client.get("/city/overview").json()
            assert overview["devices"]["total"] == sum(kind_counts("shenzhen", 0.001).values())
    finally:
        process.send_signal(signal.SIGINT)
        rest, _ = process.communicate(timeout=60)
        output.append(rest or "")
    assert process.returncode == 0, "".join(output)
    assert "loading by COPY" in "".join(output)


def test_up_refuses_per_device_mode_for_a_big_city(stack_home: Path, process_env: dict[str, str]) -> None:
    ports = _ports()
    result = subprocess.run(
        _up_command(stack_home, ports, "--preset", "shenzhen", "--mode", "device"),
        capture_output=True,
        text=True,
        env=_env(process_env, ports),
        timeout=60,
    )
    assert result.returncode == 1
    assert "per-device mode is for cities of up to" in result.stderr
    assert not (stack_home / "postgres").exists()  # refused before starting anything


def test_ctrl_c_while_hashing_device_passwords_stops_everything(
    stack_home: Path, process_env: dict[str, str]
) -> None:
    """Per-device mode: Ctrl-C in the middle of hashing stops the hashing workers
    and PostgreSQL at once (they used to hash on until every device was done)."""
    ports = _ports()
    log_file = stack_home.parent / "up.log"
    command = _up_command(stack_home, ports, "--preset", "district", "--scale", "2", "--mode", "device")
    process = subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stderr=log_file.open("w"),
        # 204 k devices: above the default limit, allowed here so that hashing takes long enough.
        env={**_env(process_env, ports), "CITYNEURON_STACK__PER_DEVICE_MAX_DEVICES": "300000"},
    )
    try:
        # (Not read from /proc at once: until it execs, the child still shows pytest's command line.)
        up_cmd = " ".join(command) + " "

        def workers() -> set[int]:
            # Pool workers are forks of `up` itself: same command line.
            return {p for p in _descendants(process.pid) if _cmdline(p) == up_cmd}

        def hashing() -> bool:
            # Still there a moment later: not a fork on its way to exec a server.
            seen = workers()
            time.sleep(0.3)
            return len(seen) >= 2 and seen <= workers()

        deadline = time.monotonic() + 60
        while not hashing():
            assert process.poll() is None and time.monotonic() < deadline, log_file.read_text()[-2000:]
            time.sleep(0.05)
        started = _descendants(process.pid)
        interrupted = time.monotonic()
        process.send_signal(signal.SIGINT)
        process.wait(timeout=120)
        # 204 k hashes take 15 s or more here (about 6.5 k/s per core); stopping must not wait for them.
        assert time.monotonic() - interrupted < 6.0
        leftovers = [p for p in started if Path(f"/proc/{p}").exists() and _cmdline(p)]
        assert not leftovers, [(p, _cmdline(p)) for p in leftovers]
        assert not (stack_home / "mosquitto" / "auth" / "passwd").exists(), log_file.read_text()[-2000:]
    finally:
        if process.poll() is None:
            process.kill()


# SIGINT as a terminal's foreground process has it: a test run started from a background job
# (nohup, `&` in a script) passes SIGINT on ignored, and Python then raises no KeyboardInterrupt.
_HASHING = """
import signal
import sys
from pathlib import Path
from cityneuron.provision import write_password_file
signal.signal(signal.SIGINT, signal.default_int_handler)
ids = (f"dev-{i:07d}" for i in range(1_000_000))
write_password_file(Path(sys.argv[1]), b"k" * 32, ids, {}, workers=2)
"""


def test_ctrl_c_stops_password_hashing_at_once(tmp_path: Path, process_env: dict[str, str]) -> None:
    """1 M hashes take minutes here; Ctrl-C must stop the workers, not wait for them."""
    process = subprocess.Popen(
        [sys.executable, "-c", _HASHING, str(tmp_path / "passwd")], env=process_env, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 60
        while len(_descendants(process.pid)) < 2:
            assert process.poll() is None and time.monotonic() < deadline, "no hashing workers"
            time.sleep(0.05)
        time.sleep(1.0)  # hashing for a while
        workers = _descendants(process.pid)
        interrupted = time.monotonic()
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=180)
        # Generous for a machine under load (CI on a shared machine took 24 s once); that the
        # hashing did not run to its end is shown by the password file never being written.
        assert time.monotonic() - interrupted < 30.0
        assert b"KeyboardInterrupt" in stderr
        assert not [p for p in workers if _cmdline(p)], "hashing workers still running"
        assert not (tmp_path / "passwd").exists()
    finally:
        if process.poll() is None:
            process.kill()


def test_ctrl_c_while_the_registry_loads_stops_everything(
    stack_home: Path, process_env: dict[str, str]
) -> None:
    """Gateway mode: Ctrl-C while the simulator COPYs the registry (before the banner) stops the
    simulator, ingest, API, broker and PostgreSQL, and `up` exits."""
    ports = _ports()
    process = subprocess.Popen(
        _up_command(stack_home, ports, "--preset", "shenzhen", "--scale", "0.02"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=_env(process_env, ports),
    )
    output: list[str] = []
    try:
        assert process.stdout is not None
        for line in process.stdout:
            output.append(line)
            if "loading by COPY" in line:
                break
        # The simulator is starting, building the city or loading (a loaded machine is slow).
        deadline = time.monotonic() + 60
        while not any("cityneuron sim" in _cmdline(p) for p in _descendants(process.pid)):
            assert process.poll() is None and time.monotonic() < deadline, "".join(output)
            time.sleep(0.2)
        time.sleep(1.0)
        started = _descendants(process.pid)
        process.send_signal(signal.SIGINT)
        rest, _ = process.communicate(timeout=90)
        output.append(rest or "")
    finally:
        if process.poll() is None:
            process.kill()
    assert "CityNeuron is up" not in "".join(output)
    leftovers = [p for p in started if _cmdline(p)]
    assert not leftovers, [(p, _cmdline(p)) for p in leftovers]
    for name, port in ports.items():
        with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), timeout=2):
            pytest.fail(f"{name} still listens on {port}")
