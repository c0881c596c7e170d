"""The simulator's own MQTT 3.1.1 client (simulator.mqttwire, simulator.wireclient) and the
gateway built on it, against real Mosquitto brokers (anonymous, password + ACL, TLS)."""

from __future__ import annotations

import logging
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from test_sim_commands import SCALE, T_NOON_MS, Watcher, _ack_of

from cityneuron.contract import CMD, decode_status, device_topic, encode_command
from cityneuron.servers import BrokerSecurity, MosquittoBroker, broker_owner, free_port
from cityneuron.settings import MqttSettings
from cityneuron.tls import ensure_dev_pki, install_broker_tls
from simulator import PublishError
from simulator.city import build_city
from simulator.commands import CommandBook, command_subscriptions
from simulator.mqttwire import (
    PUBACK,
    PUBLISH,
    SUBACK,
    ConnectRefused,
    InboundPublish,
    MalformedPacket,
    PacketParser,
    Will,
    check_connack,
    decode_packet_id,
    decode_publish,
    decode_remaining_length,
    decode_suback,
    encode_connect,
    encode_puback,
    encode_publish,
    remaining_length,
    with_dup,
)
from simulator.publisher import Gateway, gateway_topic
from simulator.wireclient import WireClient

USER, PASSWORD = "gw-test", uuid.uuid4().hex


def _wait(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def _payloads(n: int, tag: str) -> list[bytes]:
    return [orjson.dumps({"tag": tag, "n": i, "pad": "x" * (i % 300)}) for i in range(n)]


def _topic(i: int) -> str:
    return f"city/futian/smart_pole/SZ-FT-POLE-{i % 50:06d}/telemetry"


# --- the codec ---------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [0, 1, 127, 128, 16_383, 16_384, 2_097_151, 2_097_152, 268_435_455])
def test_remaining_length_round_trips_at_every_width(n: int) -> None:
    encoded = remaining_length(n)
    # One byte per 7 bits (MQTT 3.1.1 section 2.2.3, table 2.4).
    assert len(encoded) == 1 + (n >= 128) + (n >= 16_384) + (n >= 2_097_152)
    assert decode_remaining_length(b"\x30" + encoded, 1) == (n, 1 + len(encoded))
    assert decode_remaining_length(b"\x30" + encoded[:-1], 1) is None


def test_remaining_length_limits() -> None:
    with pytest.raises(ValueError):
        remaining_length(268_435_456)
    with pytest.raises(MalformedPacket):
        decode_remaining_length(b"\x30\xff\xff\xff\xff\x01", 1)


@pytest.mark.parametrize("remaining", [127, 128, 16_383, 16_384])
@pytest.mark.parametrize("qos", [0, 1])
def test_publish_round_trips_at_the_length_boundaries(remaining: int, qos: int) -> None:
    topic = b"city/futian/smart_pole/SZ-FT-POLE-000001/telemetry"
    payload = bytes(i % 251 for i in range(remaining - 2 - len(topic) - 2 * qos))
    packet = encode_publish(topic, payload, qos, retain=True, packet_id=4242 if qos else 0)
    assert packet[1:].startswith(remaining_length(remaining))
    assert len(packet) == 1 + len(remaining_length(remaining)) + remaining
    [(first, body)] = PacketParser().feed(packet)
    assert first >> 4 == PUBLISH
    assert decode_publish(first, body) == InboundPublish(
        topic.decode(), payload, qos, True, False, 4242 if qos else 0
    )
    assert decode_publish(*PacketParser().feed(with_dup(packet))[0]).dup


def test_parser_fed_byte_by_byte_yields_every_packet() -> None:
    packets = [
        encode_publish(b"a/b", b"", 0),
        encode_puback(1),
        encode_publish("city/\u6df1\u5733".encode(), b"x" * 200, 1, packet_id=65_535),
        b"\x90\x03\x00\x07\x01",  # SUBACK granting QoS 1
        b"\xd0\x00",  # PINGRESP
        encode_publish(b"t", b"y" * 20_000, 0),
    ]
    stream = b"".join(packets)
    parser = PacketParser()
    seen: list[tuple[int, bytes]] = []
    for i in range(len(stream)):
        seen += parser.feed(stream[i : i + 1])
    assert [bytes((first,)) + remaining_length(len(body)) + body for first, body in seen] == packets
    assert decode_packet_id(seen[1][1]) == 1
    assert seen[2][0] >> 4 == PUBLISH and decode_publish(*seen[2]).topic == "city/\u6df1\u5733"
    assert seen[3][0] >> 4 == SUBACK and decode_suback(seen[3][1]) == (7, [1])
    # Whole, or in uneven chunks: the same packets.
    assert PacketParser().feed(stream) == seen
    chunked = PacketParser()
    assert [p for k in range(0, len(stream), 1000) for p in chunked.feed(stream[k : k + 1000])] == seen
    assert seen[1][0] >> 4 == PUBACK


def test_connect_flags_and_refusals() -> None:
    plain = encode_connect("c", 30)
    # Protocol name, level 4, clean session only, keepalive 30 (section 3.1.2).
    assert plain[2:12] == b"\x00\x04MQTT\x04\x02\x00\x1e"
    full = encode_connect("c", 30, username="u", password="p", will=Will("w", b"bye", 1, True))
    assert full[9] == 0x80 | 0x40 | 0x20 | 0x08 | 0x04 | 0x02
    with pytest.raises(ValueError):
        encode_connect("c", 30, password="p")
    assert check_connack(b"\x01\x00") is True
    with pytest.raises(ConnectRefused, match="bad user name or password") as refused:
        check_connack(b"\x00\x04")
    assert refused.value.return_code == 4


# --- against a broker --------------------------------------------------------------------------


def _collect(watcher: Watcher, prefix: str) -> list[tuple[str, bytes]]:
    return [(t, p) for t, p in list(watcher.messages) if t.startswith(prefix)]


@pytest.mark.parametrize("qos", [0, 1])
def test_every_message_arrives_as_sent(broker: MosquittoBroker, qos: int) -> None:
    watcher = Watcher(broker.port)
    delivered: list[int] = []
    client = WireClient(MqttSettings(port=broker.port), f"wire-q{qos}", on_delivered=delivered.append)
    client.connect()
    try:
        sent = [(_topic(i), p) for i, p in enumerate(_payloads(3000, f"q{qos}"))]
        for topic, payload in sent:
            assert client.publish(topic, payload, qos)
        client.flush()
        _wait(lambda: len(_collect(watcher, "city/futian")) >= len(sent), 30, "every message")
        time.sleep(0.2)  # anything extra (a duplicate) would show up now
        # One connection, one subscriber: same messages, same order, nothing twice.
        assert _collect(watcher, "city/futian") == sent
        _wait(lambda: sum(delivered) == len(sent), 10, "every delivery reported")
        assert client.in_flight == 0
    finally:
        client.close()
        watcher.close()


def test_will_fires_only_when_the_connection_dies(broker: MosquittoBroker) -> None:
    watcher = Watcher(broker.port)
    clients = {
        name: WireClient(
            MqttSettings(port=broker.port),
            name,
            will=Will(f"city/gateways/{name}/status", b'{"online":false}', qos=1, retain=True),
        )
        for name in ("polite", "crashing")
    }
    for client in clients.values():
        client.connect()
    clients["polite"].close()
    # No DISCONNECT, as when the process dies: the broker publishes the will.
    clients["crashing"].close(disconnect=False)
    watcher.wait_for(lambda t, p: t if "crashing" in t else None, 10, "the will")
    # The clean disconnect came first, and its will was dropped.
    assert _collect(watcher, "city/gateways/") == [("city/gateways/crashing/status", b'{"online":false}')]
    watcher.close()


def test_gateway_answers_commands(broker: MosquittoBroker) -> None:
    city = build_city("small", SCALE, seed=42)
    book = CommandBook(city, lambda: T_NOON_MS)
    gateway = Gateway(
        MqttSettings(port=broker.port), "wire-cmd", commands=book, command_topics=command_subscriptions(city)
    )
    watcher = Watcher(broker.port)
    gateway.connect()
    try:
        poles = city.tables["smart_pole"]
        for row in range(5):
            topic = device_topic(poles.district_slug(row), "smart_pole", poles.device_id(row), CMD)
            payload = encode_command(f"c-{row}", "set_lamp_level", {"level": 10 + row}, T_NOON_MS)
            watcher.client.publish(topic, payload, qos=1)
        for row in range(5):
            ack = watcher.wait_for(_ack_of(f"c-{row}"), 10, f"the ack of command c-{row}")
            assert ack.ok
        assert book.applied == 5
        # Acks are the gateway's business, not device messages: none is counted as sent.
        assert gateway.drain(time.monotonic() + 5) == 0 and gateway.sent == 1  # the online status
    finally:
        gateway.close(goodbye=True, deadline=time.monotonic() + 5)
        watcher.close()
    statuses = [decode_status(p) for t, p in _collect(watcher, gateway_topic("wire-cmd"))]
    assert [s.online for s in statuses] == [True, False]


class _PersistentSubscriber:
    """A paho subscriber with a persistent session: the broker keeps its QoS 1 messages while it
    is away, so what it finally holds is what the broker accepted."""

    def __init__(self, port: int, topic: str) -> None:
        self.payloads: list[bytes] = []
        self._lock = threading.Lock()
        subscribed = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"keep-{uuid.uuid4().hex[:8]}", clean_session=False
        )
        self.client.reconnect_delay_set(1, 1)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert subscribed.wait(10)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.payloads.append(bytes(message.payload))

    def distinct(self) -> set[bytes]:
        with self._lock:
            return set(self.payloads)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_qos1_survives_a_broker_restart(broker: MosquittoBroker, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "cityneuron.simulator")
    subscriber = _PersistentSubscriber(broker.port, "city/#")
    settings = MqttSettings(port=broker.port, reconnect_max_delay_s=1.0)
    gateway = Gateway(settings, "wire-restart")
    gateway.connect()
    payloads = _payloads(3000, "restart")
    try:
        for i, payload in enumerate(payloads[:1000]):
            assert gateway.publish(_topic(i), payload, 1)
        broker.stop()  # graceful: Mosquitto saves the subscriber's queue to its persistence file
        # Published while the broker is gone: kept by the gateway and sent after the reconnect.
        for i, payload in enumerate(payloads[1000:2000], 1000):
            assert gateway.publish(_topic(i), payload, 1)
        broker.start()
        for i, payload in enumerate(payloads[2000:], 2000):
            assert gateway.publish(_topic(i), payload, 1)
        assert gateway.drain(time.monotonic() + 30) == 0
        _wait(lambda: subscriber.distinct() >= set(payloads), 30, "every message at least once")
        assert gateway.errors == 0 and gateway.acked == gateway.sent == len(payloads) + 1
        # It did lose the connection and send the unacknowledged messages again.
        assert "sending" in caplog.text and "reconnected" in caplog.text
    finally:
        gateway.close(goodbye=False, deadline=time.monotonic() + 5)
        subscriber.close()


def test_qos0_while_disconnected_counts_as_errors(broker: MosquittoBroker) -> None:
    gateway = Gateway(MqttSettings(port=broker.port), "wire-q0-down")
    gateway.connect()
    broker.stop()
    attempts = 0
    try:
        # Accepted until the gateway notices the broker is gone, refused afterwards.
        while gateway.errors < 10:
            gateway.publish(_topic(attempts), b"{}", 0)
            attempts += 1
            time.sleep(0.001)
        assert gateway.drain(time.monotonic() + 5) == 0
        assert gateway.sent + gateway.errors == attempts + 1  # and the online status
    finally:
        gateway.close(goodbye=True, deadline=time.monotonic() + 1)


# --- a broker with passwords (and TLS) ---------------------------------------------------------


@dataclass
class _SecureBroker:
    broker: MosquittoBroker
    tls_port: int
    ca_file: Path


@pytest.fixture(scope="module")
def secure_broker() -> Iterator[_SecureBroker]:
    """Mosquitto with a password file (one user), an ACL for city/# and a TLS listener."""
    root = Path(tempfile.mkdtemp(prefix="cityneuron-wire-"))
    root.chmod(0o711)
    owner = broker_owner()
    passwd, acl = root / "passwd", root / "acl"
    passwd.write_text(f"{USER}:{PASSWORD}\n")
    subprocess.run(["mosquitto_passwd", "-U", str(passwd)], check=True, capture_output=True)
    acl.write_text(f"user {USER}\ntopic readwrite city/#\n")
    tls_dir = root / "tls"
    tls_dir.mkdir(mode=0o700)
    for path in (passwd, acl, tls_dir):
        if path.is_file():
            path.chmod(0o600)
        if owner is not None:
            shutil.chown(path, *owner)
    pki = ensure_dev_pki(root / "pki")
    install_broker_tls(pki, tls_dir, owner=owner)
    tls_port = free_port()
    security = BrokerSecurity(passwd, acl, tls_dir=tls_dir, tls_port=tls_port, public_host="127.0.0.1")
    with MosquittoBroker(root / "mosquitto", free_port(), security=security) as broker:
        yield _SecureBroker(broker, tls_port, pki.ca_cert)
    shutil.rmtree(root, ignore_errors=True)


def test_wrong_or_missing_password_is_a_clear_error(secure_broker: _SecureBroker) -> None:
    settings = MqttSettings(port=secure_broker.broker.port, username=USER, password="wrong")
    with pytest.raises(PublishError, match=r"bad user name or password|not authorized"):
        WireClient(settings, "wire-wrong").connect()
    with pytest.raises(PublishError, match="refused the connection"):
        Gateway(MqttSettings(port=secure_broker.broker.port), "wire-anonymous").connect()
    # Explicit credentials win over the settings'.
    client = WireClient(settings, "wire-right", username=USER, password=PASSWORD)
    client.connect()
    assert client.connected
    client.close()


def test_qos1_over_tls_with_credentials(secure_broker: _SecureBroker) -> None:
    watcher = Watcher(secure_broker.broker.port, USER, PASSWORD)
    settings = MqttSettings(
        port=secure_broker.tls_port, username=USER, password=PASSWORD, tls_ca_file=secure_broker.ca_file
    )
    gateway = Gateway(settings, "wire-tls")
    gateway.connect()
    sent = [(_topic(i), p) for i, p in enumerate(_payloads(1000, "tls"))]
    try:
        for topic, payload in sent:
            assert gateway.publish(topic, payload, 1)
        assert gateway.drain(time.monotonic() + 30) == 0
        _wait(lambda: len(_collect(watcher, "city/futian")) >= len(sent), 30, "every message")
        assert _collect(watcher, "city/futian") == sent
    finally:
        gateway.close(goodbye=True, deadline=time.monotonic() + 5)
        watcher.close()
