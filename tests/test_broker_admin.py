"""Running the broker: the Mosquitto version gate, `broker config` as root, devices of one's own
next to the simulated city (add-device, provision --devices-file, password, reload), and `up`
noticing a password file that no longer matches its city. Real Mosquitto throughout."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.reasoncodes import ReasonCode
from polling import eventually

from cityneuron.cli import main as cli_main
from cityneuron.credentials import device_password, read_device_key
from cityneuron.errors import ConfigError
from cityneuron.passwd import check_mosquitto_hash, device_usernames
from cityneuron.provision import INGEST_USER, Layout, write_password_file
from cityneuron.servers import (
    MIN_MOSQUITTO_VERSION,
    MosquittoBroker,
    find_mosquitto,
    free_port,
    mosquitto_version_problem,
    parse_mosquitto_version,
    wait_for_port,
)
from cityneuron.settings import Settings
from cityneuron.stack import city_device_ids, local_broker_security, provision_local_broker

HELP_2_0_21 = "mosquitto version 2.0.21\n\nmosquitto is an MQTT v5.0/v3.1.1/v3.1 broker.\n\nUsage: mosquitto [-c config_file] [-d] [-h] [-p port]\n"
HELP_2_0_11 = "mosquitto version 2.0.11\n\nmosquitto is an MQTT v5.0/v3.1.1/v3.1 broker.\n\nUsage: mosquitto [-c config_file] [-d] [-h] [-p port]\n"
HELP_1_6_9 = "mosquitto version 1.6.9\n\nmosquitto is an MQTT v3.1.1 broker.\n"
OWN_DEVICE = "my-sensor-1"


def _scratch(prefix: str) -> Path:
    # Not tmp_path (0700): the broker's own user must enter it when we are root.
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o711)
    return path


# --- version gate ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "version"),
    [(HELP_2_0_21, (2, 0, 21)), (HELP_2_0_11, (2, 0, 11)), (HELP_1_6_9, (1, 6, 9)), ("Usage: x\n", None)],
)
def test_parse_mosquitto_version(text: str, version: tuple[int, int, int] | None) -> None:
    assert parse_mosquitto_version(text) == version


def test_version_problem_is_one_line_saying_what_why_and_how() -> None:
    binary = Path("/usr/sbin/mosquitto")
    assert mosquitto_version_problem(binary, HELP_2_0_21) is None
    assert mosquitto_version_problem(binary, "mosquitto version 2.0.12\n") is None
    for old in (HELP_2_0_11, HELP_1_6_9):
        problem = mosquitto_version_problem(binary, old)
        assert problem is not None and "\n" not in problem
        found = old.split()[2]
        assert f"Mosquitto {found}, older than 2.0.12" in problem
        assert "$share" in problem and "lost" in problem
        assert "bookworm-backports" in problem and "scripts/bootstrap.sh" in problem
    unknown = mosquitto_version_problem(binary, "something else\n")
    assert unknown is not None and "cannot tell the version" in unknown


def _fake_mosquitto(folder: Path, help_text: str) -> Path:
    script = folder / "mosquitto"
    script.write_text(f"#!/bin/sh\ncat <<'EOF'\n{help_text}EOF\nexit 3\n")
    script.chmod(0o755)
    return script


def test_old_mosquitto_is_refused_by_the_fixture_server_and_by_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = _fake_mosquitto(tmp_path, HELP_2_0_11)
    # tests/conftest.py's broker fixture and `cityneuron up` both start MosquittoBroker.
    broker = MosquittoBroker(tmp_path / "mq", free_port(), binary=fake, anonymous=True)
    with pytest.raises(ConfigError, match=r"Mosquitto 2\.0\.11, older than 2\.0\.12"):
        broker.start()
    assert not broker.running
    monkeypatch.setenv("CITYNEURON_STACK__MOSQUITTO_BIN", str(fake))
    assert cli_main(["up", "--home", str(tmp_path / "home"), "--postgres-port", str(free_port())]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Mosquitto 2.0.11, older than 2.0.12" in err[0], err
    # Refused before anything started: no database was created.
    assert not (tmp_path / "home" / "postgres").exists()


def test_installed_mosquitto_is_accepted() -> None:
    binary = find_mosquitto()
    help_text = subprocess.run([str(binary), "-h"], capture_output=True, text=True, check=False).stdout
    version = parse_mosquitto_version(help_text)
    assert version is not None and version >= MIN_MOSQUITTO_VERSION


# --- the local stack's broker ------------------------------------------------------------------


def _tls_base_port() -> int:
    """A port with the two after it free too (TLS, client certificates, WebSockets)."""
    for _ in range(50):
        base = free_port()
        if base > 65000:
            continue
        try:
            for port in (base, base + 1, base + 2):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise AssertionError("no three consecutive free ports")


@dataclass
class LocalStack:
    """A `cityneuron up` home provisioned for a tiny city, its settings and (maybe) its broker."""

    home: Path
    settings: Settings
    broker: MosquittoBroker | None = None

    @property
    def layout(self) -> Layout:
        return Layout(self.home)

    def cli(self, *args: str) -> int:
        return cli_main(["broker", *args, "--home", str(self.home)])

    def start_broker(self) -> MosquittoBroker:
        security = local_broker_security(self.settings)
        self.broker = MosquittoBroker(self.layout.broker_data_dir, self.settings.mqtt.port, security=security)
        self.broker.start()
        return self.broker

    def device(self, device_id: str) -> tuple[str, str]:
        return device_id, device_password(read_device_key(self.layout.secrets_dir / "device.key"), device_id)

    def service(self, user: str) -> tuple[str, str]:
        return user, (self.layout.secrets_dir / f"{user}.password").read_text().strip()


@pytest.fixture
def stack() -> Iterator[LocalStack]:
    home = _scratch("cityneuron-broker-admin-")
    settings = Settings.model_validate(
        {
            "stack": {"home": str(home), "mqtt_tls_port": _tls_base_port()},
            "mqtt": {"port": free_port()},
            "simulator": {"preset": "small", "scale": 0.01},
        }
    )
    provision_local_broker(settings, workers=1)
    local = LocalStack(home, settings)
    yield local
    if local.broker is not None:
        local.broker.stop()
    shutil.rmtree(home, ignore_errors=True)


def _city_device(settings: Settings) -> str:
    return next(iter(city_device_ids(settings)))


class _Device:
    """A paho MQTT 5 client connecting with a username and password."""

    def __init__(self, port: int, user: tuple[str, str]) -> None:
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"t-{uuid.uuid4().hex[:8]}",
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        self.client.username_pw_set(*user)
        self.connack: ReasonCode | None = None
        self.messages: list[str] = []
        self._connected = threading.Event()
        self.client.on_connect = self._on_connect
        self.client.on_message = lambda client, userdata, message: self.messages.append(message.topic)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert self._connected.wait(10), "no CONNACK"

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: ReasonCode, props: Any) -> None:
        self.connack = reason
        self._connected.set()

    @property
    def accepted(self) -> bool:
        return self.connack is not None and not self.connack.is_failure

    def publish_telemetry(self, device_id: str) -> None:
        info = self.client.publish(f"city/futian/smart_pole/{device_id}/telemetry", b'{"ts":1,"m":{}}', qos=1)
        info.wait_for_publish(10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _assert_devices_publish(stack: LocalStack, device_ids: list[str]) -> None:
    """Each device connects with its own password and its telemetry reaches ingest's account."""
    assert stack.broker is not None
    port = stack.broker.port
    ingest = _Device(port, stack.service(INGEST_USER))
    subscribed = threading.Event()
    ingest.client.on_subscribe = lambda *args: subscribed.set()
    ingest.client.subscribe("city/+/+/+/telemetry", qos=1)
    assert subscribed.wait(10)
    try:
        for device_id in device_ids:
            device = _Device(port, stack.device(device_id))
            try:
                assert device.accepted, f"{device_id} refused: {device.connack}"
                device.publish_telemetry(device_id)
            finally:
                device.close()
        expected = [f"city/futian/smart_pole/{d}/telemetry" for d in device_ids]
        assert eventually(lambda: list(ingest.messages), lambda got: len(got) >= len(expected)) == expected
    finally:
        ingest.close()


def _refused(stack: LocalStack, device_id: str) -> bool:
    assert stack.broker is not None
    device = _Device(stack.broker.port, stack.device(device_id))
    device.close()
    return not device.accepted


def test_add_device_next_to_the_city_reloads_the_running_broker(
    stack: LocalStack, capsys: pytest.CaptureFixture[str]
) -> None:
    broker = stack.start_broker()
    assert _refused(stack, OWN_DEVICE)
    assert stack.cli("add-device", OWN_DEVICE) == 0
    out = capsys.readouterr().out
    assert f"{OWN_DEVICE}  password {stack.device(OWN_DEVICE)[1]}" in out
    assert f"broker (pid {broker.pid}) reloaded" in out
    # No restart: the SIGHUP made the broker read the password file again.
    _assert_devices_publish(stack, [_city_device(stack.settings), OWN_DEVICE])
    assert stack.cli("add-device", OWN_DEVICE) == 0  # again: nothing to add, nothing breaks
    assert "added 0 new device(s)" in capsys.readouterr().out
    assert list(device_usernames(stack.layout.broker_dir / "passwd")).count(OWN_DEVICE) == 1


def test_provision_devices_file_adds_to_the_city(stack: LocalStack) -> None:
    """The issue's case: provisioning a devices file replaced the password file, and after a
    SIGHUP every device of the simulated city was refused."""
    city = list(city_device_ids(stack.settings))
    devices_file = stack.home / "mine.txt"
    devices_file.write_text(f"{OWN_DEVICE}\n")
    assert stack.cli("provision", "--devices-file", str(devices_file), "--no-tls", "--workers", "1") == 0
    assert set(device_usernames(stack.layout.broker_dir / "passwd")) == {*city, OWN_DEVICE}
    stack.start_broker()
    _assert_devices_publish(stack, [city[0], city[-1], OWN_DEVICE])


def test_up_puts_back_city_devices_missing_from_the_password_file(stack: LocalStack) -> None:
    passwd = stack.layout.broker_dir / "passwd"
    city = set(city_device_ids(stack.settings))
    key = read_device_key(stack.layout.secrets_dir / "device.key")
    # What the old `provision --devices-file` left: only the user's device (and the services).
    services = {
        line.split(":", 1)[0]: stack.service(line.split(":", 1)[0])[1]
        for line in passwd.read_text().splitlines()
        if "." in line.split(":", 1)[0]
    }
    write_password_file(passwd, key, [OWN_DEVICE], services)
    provision_local_broker(stack.settings, workers=1)  # what `cityneuron up` does first
    assert set(device_usernames(passwd)) == {*city, OWN_DEVICE}
    before = passwd.stat().st_mtime_ns
    provision_local_broker(stack.settings, workers=1)
    assert passwd.stat().st_mtime_ns == before, "an unchanged password file must not be rewritten"
    stack.start_broker()
    _assert_devices_publish(stack, [next(iter(sorted(city))), OWN_DEVICE])


def test_added_devices_survive_a_new_city(stack: LocalStack) -> None:
    assert stack.cli("add-device", OWN_DEVICE, "--no-reload") == 0
    other = stack.settings.model_copy(
        update={"simulator": stack.settings.simulator.model_copy(update={"seed": 7, "scale": 0.02})}
    )
    provision_local_broker(other, workers=1)
    names = set(device_usernames(stack.layout.broker_dir / "passwd"))
    assert names == {*city_device_ids(other), OWN_DEVICE}


def test_password_command_prints_the_documented_derivation(
    stack: LocalStack, capsys: pytest.CaptureFixture[str]
) -> None:
    device_id = _city_device(stack.settings)
    assert stack.cli("password", device_id) == 0
    printed = capsys.readouterr().out.strip()
    # docs/security.md, word for word: the key file's hex decoded, HMAC-SHA256 over the device
    # id's UTF-8 bytes, base64url without "=" padding.
    key = bytes.fromhex((stack.layout.secrets_dir / "device.key").read_text().strip())
    digest = hmac.new(key, device_id.encode("utf-8"), hashlib.sha256).digest()
    assert printed == base64.urlsafe_b64encode(digest).decode().rstrip("=")
    line = next(
        entry
        for entry in (stack.layout.broker_dir / "passwd").read_text().splitlines()
        if entry.startswith(f"{device_id}:")
    )
    assert check_mosquitto_hash(printed, line.split(":", 1)[1])
    assert stack.cli("password", "Not A Device") != 0


def test_reload_command_signals_the_broker_of_the_home(
    stack: LocalStack, capsys: pytest.CaptureFixture[str]
) -> None:
    assert stack.cli("reload") != 0  # not running yet: said, not ignored
    assert "no broker running" in capsys.readouterr().err
    broker = stack.start_broker()
    pid_file = stack.layout.broker_data_dir / "mosquitto.pid"
    assert int(pid_file.read_text()) == broker.pid
    assert stack.cli("reload") == 0
    assert f"pid {broker.pid}" in capsys.readouterr().out
    log = broker.log_file
    # src/loop.c logs this when it handles SIGHUP (information level, which the config enables).
    assert "Reloading config." in eventually(log.read_text, lambda text: "Reloading config." in text)
    assert broker.running


# --- `cityneuron broker config` as root --------------------------------------------------------


@pytest.mark.skipif(os.geteuid() != 0, reason="the permission problem exists only when root starts Mosquitto")
def test_broker_config_run_as_root_writes_its_log_and_persistence(stack: LocalStack) -> None:
    try:
        pwd.getpwnam("mosquitto")
    except KeyError:
        pytest.skip("no 'mosquitto' user: Mosquitto stays root and can write anywhere")
    conf = stack.home / "generated.conf"
    port = stack.settings.mqtt.port
    tls_port = stack.settings.stack.mqtt_tls_port
    args = ("config", "--mqtt-port", str(port), "--tls-port", str(tls_port), "--out", str(conf))
    assert stack.cli(*args) == 0
    data_dir = stack.layout.broker_data_dir
    process = subprocess.Popen(
        [str(find_mosquitto()), "-c", str(conf)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        wait_for_port(port, 10, process)
        # A persistent session with a subscription: something the broker must save.
        ingest = _Device(port, stack.service(INGEST_USER))
        ingest.client.subscribe("city/+/+/+/telemetry", qos=1)
        ingest.close()
        assert (data_dir / "mosquitto.pid").exists()
    finally:
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=15)[0].decode(errors="replace")
    log = (data_dir / "mosquitto.log").read_text()
    assert "Permission denied" not in output + log, output + log
    assert "Saving in-memory database" in log
    assert (data_dir / "mosquitto.db").stat().st_size > 0
