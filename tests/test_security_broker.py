"""Broker security with a real Mosquitto: per-device identities, ACL, TLS and client certificates."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import ssl
import stat
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import psycopg
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.reasoncodes import ReasonCode
from polling import eventually

from cityneuron.cli import main as cli_main
from cityneuron.contract import encode_reading, now_ms
from cityneuron.credentials import device_password, read_device_key
from cityneuron.errors import ConfigError
from cityneuron.mqtt5client import Mqtt5Client
from cityneuron.provision import (
    API_USER,
    CITY_GATEWAY,
    DASHBOARD_USER,
    INGEST_USER,
    GatewayScope,
    Provisioned,
    check_mosquitto_hash,
    provision,
)
from cityneuron.servers import (
    BrokerSecurity,
    MosquittoBroker,
    broker_conf_dir,
    broker_owner,
    free_port,
    wait_for_port,
)
from cityneuron.settings import DatabaseSettings, MqttSettings, Settings
from cityneuron.tls import TlsFiles, create_client_cert, ensure_dev_pki, install_broker_tls
from ingest.service import IngestService

POLE_A = "pole-futian-00001"
POLE_B = "pole-futian-00002"
METER = "water-nanshan-00001"
DEVICES = (POLE_A, POLE_B, METER)
FUTIAN_GATEWAY = GatewayScope("gw.futian", ("futian",))
NOT_AUTHORIZED = 135  # MQTT 5.0 section 2.4 reason code 0x87


def _ingest_settings(mqtt: MqttSettings, database: DatabaseSettings) -> Settings:
    """Settings for an ingest of its own (fresh client id, ephemeral metrics port)."""
    return Settings(
        mqtt=mqtt,
        database=database,
        ingest={"client_id": f"ingest-{uuid.uuid4().hex[:8]}", "flush_interval_ms": 50, "http_port": 0},  # type: ignore[arg-type]
    )


def _topic(device_id: str, channel: str = "telemetry") -> str:
    district = device_id.split("-")[1]
    kind = "smart_pole" if device_id.startswith("pole") else "water_meter"
    return f"city/{district}/{kind}/{device_id}/{channel}"


@dataclass
class SecureBroker:
    broker: MosquittoBroker
    provisioned: Provisioned
    pki: TlsFiles
    root: Path

    @property
    def security(self) -> BrokerSecurity:
        assert self.broker.security is not None
        return self.broker.security

    def device_password(self, device_id: str) -> str:
        return device_password(read_device_key(self.provisioned.device_key_file), device_id)

    def credentials(self, user: str) -> tuple[str, str]:
        if user in DEVICES:
            return user, self.device_password(user)
        return user, self.provisioned.password(user)


@pytest.fixture
def secure() -> Iterator[SecureBroker]:
    root = Path(tempfile.mkdtemp(prefix="cityneuron-sec-"))
    root.chmod(0o711)
    owner = broker_owner()
    provisioned = provision(
        root / "mosquitto" / "auth",
        root / "secrets",
        DEVICES,
        gateways=(GatewayScope(CITY_GATEWAY), FUTIAN_GATEWAY),
        broker_owner=owner,
    )
    pki = ensure_dev_pki(root / "pki")
    install_broker_tls(pki, provisioned.broker_dir, owner=owner)
    security = BrokerSecurity(
        password_file=provisioned.password_file,
        acl_file=provisioned.acl_file,
        tls_dir=provisioned.broker_dir,
        tls_port=free_port(),
        cert_port=free_port(),
        websockets_port=free_port(),
        public_host="127.0.0.1",
    )
    with MosquittoBroker(root / "mosquitto", free_port(), security=security) as broker:
        yield SecureBroker(broker, provisioned, pki, root)
    shutil.rmtree(root, ignore_errors=True)


class _Client:
    """A paho MQTT 5 client recording its CONNACK, PUBACK reason codes and received messages."""

    def __init__(self, transport: str = "tcp") -> None:
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"t-{uuid.uuid4().hex[:10]}",
            protocol=MQTTProtocolVersion.MQTTv5,
            transport=transport,  # type: ignore[arg-type]
        )
        self.connack: ReasonCode | None = None
        self.pubacks: dict[int, int] = {}
        self.messages: list[tuple[str, bytes]] = []
        self._event = threading.Event()
        self._lock = threading.Lock()
        self.client.on_connect = self._on_connect
        self.client.on_publish = self._on_publish
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a: self._event.set()

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: ReasonCode, props: Any) -> None:
        self.connack = reason
        self._event.set()

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason: ReasonCode, props: Any) -> None:
        with self._lock:
            self.pubacks[mid] = reason.value

    def _on_message(self, client: Any, userdata: Any, message: paho.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((message.topic, bytes(message.payload)))

    def connect(
        self, port: int, user: tuple[str, str] | None = None, tls: ssl.SSLContext | None = None
    ) -> ReasonCode:
        if user is not None:
            self.client.username_pw_set(*user)
        if tls is not None:
            self.client.tls_set_context(tls)
        self._event.clear()
        self.client.connect("127.0.0.1", port, keepalive=10)
        self.client.loop_start()
        assert self._event.wait(10), "no CONNACK"
        assert self.connack is not None
        return self.connack

    def subscribe(self, topic: str) -> None:
        self._event.clear()
        self.client.subscribe(topic, qos=1)
        assert self._event.wait(10), "no SUBACK"

    def publish(self, topic: str, payload: bytes = b"{}") -> int:
        """Publish at QoS 1 and return the PUBACK reason code, 0 for every success code (0x10 "no
        matching subscribers" included; failures are >= 0x80)."""
        info = self.client.publish(topic, payload, qos=1)
        info.wait_for_publish(10)
        code = eventually(lambda: self.pubacks.get(info.mid), lambda code: code is not None)
        return 0 if code is not None and code < 0x80 else code

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def clients() -> Iterator[Callable[..., _Client]]:
    made: list[_Client] = []

    def _make(
        port: int,
        user: tuple[str, str] | None = None,
        *,
        tls: ssl.SSLContext | None = None,
        transport: str = "tcp",
    ) -> _Client:
        client = _Client(transport)
        made.append(client)
        reason = client.connect(port, user, tls)
        assert not reason.is_failure, f"{user and user[0]} refused: {reason}"
        return client

    yield _make
    for client in made:
        client.close()


def _refused(port: int, user: tuple[str, str] | None, tls: ssl.SSLContext | None = None) -> ReasonCode:
    """The CONNACK reason code of a connection attempt."""
    client = _Client()
    try:
        return client.connect(port, user, tls)
    finally:
        client.close()


def test_anonymous_wrong_password_and_unknown_user_are_refused(secure: SecureBroker) -> None:
    port = secure.broker.port
    assert _refused(port, None).is_failure
    assert _refused(port, (POLE_A, "not-the-password")).is_failure
    # Another device's password does not open this device's account.
    assert _refused(port, (POLE_A, secure.device_password(POLE_B))).is_failure
    assert _refused(port, ("pole-futian-99999", secure.device_password("pole-futian-99999"))).is_failure
    assert not _refused(port, secure.credentials(POLE_A)).is_failure


def test_forged_topic_is_refused_and_never_reaches_the_database(
    secure: SecureBroker, database: DatabaseSettings, clients: Callable[..., _Client]
) -> None:
    mqtt = MqttSettings(
        port=secure.broker.port, username=INGEST_USER, password=secure.provisioned.password(INGEST_USER)
    )
    settings = _ingest_settings(mqtt, database)
    with IngestService(settings) as service:
        assert service.wait_ready(15), "ingest (service user) did not subscribe"
        pole_a = clients(secure.broker.port, secure.credentials(POLE_A))
        ts = now_ms()
        forged = pole_a.publish(_topic(POLE_B), encode_reading(ts, {"lamp_level": 100.0}, seq=1))
        as_meter = pole_a.publish(_topic(METER), encode_reading(ts, {"flow_total_m3": 1.0}, seq=1))
        own = pole_a.publish(_topic(POLE_A), encode_reading(ts, {"lamp_level": 40.0}, seq=1))
        assert (forged, as_meter, own) == (NOT_AUTHORIZED, NOT_AUTHORIZED, 0)

        def rows() -> list[tuple[str, float]]:
            with psycopg.connect(database.url, autocommit=True) as conn:
                return conn.execute("SELECT device_id, lamp_level FROM reading_smart_pole").fetchall()

        stored = eventually(rows, lambda r: len(r) >= 1)
        # The device's own reading arrived, so the forged one (sent first) had its chance.
        assert stored == [(POLE_A, 40.0)]
        with psycopg.connect(database.url, autocommit=True) as conn:
            devices = {r[0] for r in conn.execute("SELECT device_id FROM devices").fetchall()}
            dead = conn.execute("SELECT count(*) FROM dead_letter").fetchone()
        assert devices == {POLE_A}
        assert dead == (0,)


def test_devices_receive_only_their_own_commands(
    secure: SecureBroker, clients: Callable[..., _Client]
) -> None:
    port = secure.broker.port
    pole_a = clients(port, secure.credentials(POLE_A))
    pole_b = clients(port, secure.credentials(POLE_B))
    pole_a.subscribe(_topic(POLE_A, "cmd"))
    # Mosquitto grants the SUBACK but checks read access on every delivery.
    pole_b.subscribe("city/#")
    api = clients(port, secure.credentials(API_USER))
    assert api.publish(_topic(POLE_A, "cmd"), b'{"id":"c1"}') == 0
    eventually(lambda: pole_a.messages, bool)
    assert pole_a.messages == [(_topic(POLE_A, "cmd"), b'{"id":"c1"}')]
    # A device may not command another device, nor publish its ack on another's topic.
    assert pole_b.publish(_topic(POLE_A, "cmd")) == NOT_AUTHORIZED
    assert pole_b.publish(_topic(POLE_A, "cmd/ack")) == NOT_AUTHORIZED
    assert pole_b.publish(_topic(POLE_B, "cmd/ack"), b'{"id":"c2"}') == 0
    time.sleep(0.3)
    assert pole_b.messages == []


def test_service_users_do_their_job_and_nothing_more(
    secure: SecureBroker, clients: Callable[..., _Client]
) -> None:
    port = secure.broker.port
    ingest = clients(port, secure.credentials(INGEST_USER))
    ingest.subscribe("$share/ingest/city/+/+/+/telemetry")
    ingest.subscribe("city/+/+/+/cmd")
    api = clients(port, secure.credentials(API_USER))
    api.subscribe("city/+/+/+/cmd/ack")
    api.subscribe("city/+/+/+/status")
    dashboard = clients(
        secure.security.websockets_port, secure.credentials(DASHBOARD_USER), transport="websockets"
    )
    dashboard.subscribe("city/#")
    pole = clients(port, secure.credentials(POLE_A))
    pole.publish(_topic(POLE_A), b"reading")
    pole.publish(_topic(POLE_A, "status"), b"online")
    pole.publish(_topic(POLE_A, "cmd/ack"), b"ack")
    assert api.publish(_topic(POLE_A, "cmd"), b"cmd") == 0
    eventually(
        lambda: (ingest.messages, api.messages, dashboard.messages), lambda m: all(m) and len(m[2]) >= 2
    )
    assert ingest.messages == [(_topic(POLE_A), b"reading")]  # telemetry yes, commands no
    assert api.messages == [(_topic(POLE_A, "cmd/ack"), b"ack")]  # acks yes, statuses no
    assert sorted(dashboard.messages) == sorted(
        [(_topic(POLE_A), b"reading"), (_topic(POLE_A, "status"), b"online")]
    )
    assert ingest.publish("city/alerts/futian/smart_pole/pole-futian-00001/lamp_fault") == 0
    assert ingest.publish(_topic(POLE_A, "cmd")) == NOT_AUTHORIZED
    assert ingest.publish(_topic(POLE_A)) == NOT_AUTHORIZED
    assert api.publish(_topic(POLE_A)) == NOT_AUTHORIZED
    assert dashboard.publish(_topic(POLE_A, "cmd")) == NOT_AUTHORIZED
    assert dashboard.publish("city/alerts/futian/x") == NOT_AUTHORIZED


def test_gateways_publish_only_for_their_districts(
    secure: SecureBroker, clients: Callable[..., _Client]
) -> None:
    port = secure.broker.port
    city = clients(port, secure.credentials(CITY_GATEWAY))
    futian = clients(port, secure.credentials(FUTIAN_GATEWAY.name))
    # What simulator/publisher.py does: gateway status, retained device status, telemetry.
    assert city.publish("city/gateways/cityneuron-sim-1/status") == 0
    assert city.publish(_topic(METER, "status")) == 0
    assert city.publish(_topic(METER)) == 0
    assert futian.publish(_topic(POLE_B)) == 0
    assert futian.publish(_topic(METER)) == NOT_AUTHORIZED
    assert futian.publish("city/alerts/futian/x") == NOT_AUTHORIZED
    futian.subscribe("city/+/+/+/cmd")
    api = clients(port, secure.credentials(API_USER))
    api.publish(_topic(METER, "cmd"), b"nanshan")
    api.publish(_topic(POLE_B, "cmd"), b"futian")
    eventually(lambda: futian.messages, bool)
    time.sleep(0.2)
    assert futian.messages == [(_topic(POLE_B, "cmd"), b"futian")]


def _tls_context(ca: Path, cert: tuple[Path, Path] | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca))
    if cert is not None:
        context.load_cert_chain(str(cert[0]), str(cert[1]))
    return context


def test_tls_client_verifies_the_server(secure: SecureBroker, clients: Callable[..., _Client]) -> None:
    port = secure.security.tls_port
    assert port is not None
    client = clients(port, secure.credentials(POLE_A), tls=_tls_context(secure.pki.ca_cert))
    assert client.publish(_topic(POLE_A)) == 0
    other = ensure_dev_pki(secure.root / "other-pki")
    with pytest.raises(ssl.SSLCertVerificationError):
        _refused(port, secure.credentials(POLE_A), tls=_tls_context(other.ca_cert))
    # TLS does not replace the password.
    assert _refused(port, (POLE_A, "wrong"), tls=_tls_context(secure.pki.ca_cert)).is_failure


def test_ingest_over_tls_with_its_password_and_refused_with_a_wrong_one(
    secure: SecureBroker,
    database: DatabaseSettings,
    clients: Callable[..., _Client],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Ingest's own MQTT 5 client (cityneuron.mqtt5client) over TLS, verifying the broker against
    the CA, as the ingest service user: a device's reading is stored. With a wrong password the
    broker's refusal is logged with its reason code and the client keeps retrying."""
    port = secure.security.tls_port
    assert port is not None
    mqtt = MqttSettings(
        port=port,
        tls_ca_file=secure.pki.ca_cert,
        username=INGEST_USER,
        password=secure.provisioned.password(INGEST_USER),
    )
    settings = _ingest_settings(mqtt, database)
    with IngestService(settings) as service:
        assert service.wait_ready(15), "ingest did not subscribe over TLS"
        pole_a = clients(secure.broker.port, secure.credentials(POLE_A))
        assert pole_a.publish(_topic(POLE_A), encode_reading(now_ms(), {"lamp_level": 40.0}, seq=1)) == 0

        def rows() -> list[tuple[str, float]]:
            with psycopg.connect(database.url, autocommit=True) as conn:
                return conn.execute("SELECT device_id, lamp_level FROM reading_smart_pole").fetchall()

        assert eventually(rows, lambda r: len(r) >= 1) == [(POLE_A, 40.0)]

    caplog.set_level(logging.INFO, logger="cityneuron.mqtt")
    wrong = mqtt.model_copy(update={"password": "not-the-password", "reconnect_max_delay_s": 1.0})
    client = Mqtt5Client(wrong, f"ingest-{uuid.uuid4().hex[:8]}")
    client.start()
    try:

        def refusals() -> list[str]:
            return [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]

        seen = eventually(refusals, lambda r: len(r) >= 2, timeout_s=15)
        assert len(seen) >= 2, seen  # retried after the first refusal
        assert all("bad user name or password (0x86)" in m or "not authorized (0x87)" in m for m in seen), (
            seen
        )
        assert client.connection == 0
    finally:
        client.close()


def test_client_certificate_is_the_identity(secure: SecureBroker, clients: Callable[..., _Client]) -> None:
    port = secure.security.cert_port
    assert port is not None
    create_client_cert(secure.pki, POLE_A)
    own_cert = (secure.pki.client_cert(POLE_A), secure.pki.client_key(POLE_A))
    device = clients(port, tls=_tls_context(secure.pki.ca_cert, own_cert))
    # Username = the certificate's common name, so the device ACL applies to it.
    assert device.publish(_topic(POLE_A)) == 0
    assert device.publish(_topic(POLE_B)) == NOT_AUTHORIZED
    rogue = ensure_dev_pki(secure.root / "rogue-pki")
    create_client_cert(rogue, POLE_B)
    rogue_cert = (rogue.client_cert(POLE_B), rogue.client_key(POLE_B))
    assert _tls_refused(port, _tls_context(secure.pki.ca_cert, rogue_cert))
    assert _tls_refused(port, _tls_context(secure.pki.ca_cert))  # no certificate at all


def _tls_refused(port: int, context: ssl.SSLContext) -> bool:
    """Whether the broker ends the TLS session (with TLS 1.3 it rejects a client certificate
    after the client's side of the handshake is done, so read once to see the alert)."""
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            return tls.recv(1) == b""
    except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
        return True


def test_password_file_is_mosquittos_format_and_private(secure: SecureBroker) -> None:
    provisioned = secure.provisioned
    lines = dict(line.split(":", 1) for line in provisioned.password_file.read_text().splitlines())
    assert set(DEVICES) <= lines.keys()
    assert check_mosquitto_hash(secure.device_password(POLE_A), lines[POLE_A])
    assert not check_mosquitto_hash(secure.device_password(POLE_B), lines[POLE_A])
    assert lines[POLE_A].startswith("$7$101$")
    for path in (
        provisioned.password_file,
        provisioned.acl_file,
        provisioned.device_key_file,
        provisioned.secret_file(INGEST_USER),
    ):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    # mosquitto_passwd reads and rewrites the file without complaint (it would reject bad lines).
    copy = secure.root / "passwd-copy"
    shutil.copyfile(provisioned.password_file, copy)
    subprocess.run(["mosquitto_passwd", "-b", str(copy), "extra", "secret"], check=True, capture_output=True)
    assert copy.read_text().count("\n") == len(lines) + 1
    assert copy.read_text().splitlines()[:3] == provisioned.password_file.read_text().splitlines()[:3]


def test_shipped_configurations_allow_no_anonymous_clients(tmp_path: Path) -> None:
    shared = (broker_conf_dir() / "cityneuron.conf").read_text().splitlines()
    assert "allow_anonymous false" in shared
    assert "allow_anonymous true" not in shared
    compose = (broker_conf_dir().parent / "mosquitto.conf").read_text()
    assert "allow_anonymous true" not in compose and "password_file" in compose and "acl_file" in compose
    with pytest.raises(ConfigError, match="anonymous=True"):
        MosquittoBroker(tmp_path, free_port())


def test_broker_provision_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ids = tmp_path / "devices.txt"
    ids.write_text(f"{POLE_A}\n{METER}\n")
    status = cli_main(
        [
            "broker",
            "provision",
            "--broker-dir",
            str(tmp_path / "broker"),
            "--secrets-dir",
            str(tmp_path / "secrets"),
            "--devices-file",
            str(ids),
            "--gateway",
            "futian:futian",
            "--no-tls",
            "--workers",
            "1",
        ]
    )
    assert status == 0
    assert "provisioned 2 devices" in capsys.readouterr().out
    acl = (tmp_path / "broker" / "acl").read_text()
    assert "pattern write city/+/+/%u/telemetry" in acl and "user gw.futian" in acl
    assert "topic write city/futian/+/+/telemetry" in acl
    key = (tmp_path / "secrets" / "device.key").read_text()
    # Provisioning again keeps every secret.
    assert (
        cli_main(
            [
                "broker",
                "provision",
                "--broker-dir",
                str(tmp_path / "broker"),
                "--secrets-dir",
                str(tmp_path / "secrets"),
                "--devices-file",
                str(ids),
                "--no-tls",
            ]
        )
        == 0
    )
    assert (tmp_path / "secrets" / "device.key").read_text() == key


def test_compose_broker_config_runs_with_provisioned_files(secure: SecureBroker) -> None:
    """broker/mosquitto.conf (compose) with its container paths and ports mapped to this machine:
    it loads, refuses anonymous clients and passes the compose health check."""
    ports = {1883: free_port(), 8883: free_port(), 8884: free_port(), 9001: free_port()}
    data_dir = secure.root / "compose-data"
    data_dir.mkdir()
    owner = broker_owner()
    if owner is not None:
        os.chown(data_dir, *owner)
    conf = (broker_conf_dir().parent / "mosquitto.conf").read_text()
    conf = conf.replace("/mosquitto/config/conf.d", str(broker_conf_dir()))
    conf = conf.replace("/mosquitto/data/", f"{data_dir}/").replace(
        "/mosquitto/auth/", f"{secure.provisioned.broker_dir}/"
    )
    for container_port, port in ports.items():
        conf = conf.replace(f"listener {container_port} 0.0.0.0", f"listener {port} 127.0.0.1")
    (secure.root / "compose.conf").write_text(conf)
    process = subprocess.Popen(
        ["mosquitto", "-c", str(secure.root / "compose.conf")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        for port in ports.values():
            wait_for_port(port, 10, process)
        assert _refused(ports[1883], None).is_failure
        health_password = (secure.provisioned.broker_dir / "svc.health.password").read_text().strip()
        # The compose health check, as the broker container runs it.
        health = subprocess.run(
            [
                "mosquitto_sub",
                "-h",
                "127.0.0.1",
                "-p",
                str(ports[1883]),
                "-u",
                "svc.health",
                "-P",
                health_password,
                "-t",
                "$SYS/broker/uptime",
                "-C",
                "1",
                "-W",
                "5",
            ],
            capture_output=True,
            text=True,
            timeout=15,
            check=False,
        )
        assert health.returncode == 0 and "seconds" in health.stdout, health.stderr
        tls = _tls_context(secure.pki.ca_cert)
        client = _Client()
        try:
            assert not client.connect(ports[8883], secure.credentials(METER), tls).is_failure
        finally:
            client.close()
    finally:
        process.terminate()
        process.wait(10)
