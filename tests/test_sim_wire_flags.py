"""The simulator's MQTT client at the level of packet flags and QoS flows (MQTT 3.1.1).

DUP marks a re-delivery (section 3.3.1.1): a QoS 1 message published while disconnected goes
out the first time without it. Subscriptions ask for QoS 1 at most, and a QoS 2 message is
answered with PUBREC/PUBCOMP, never PUBACK (section 4.3.3). The flags are invisible through a
real broker (Mosquitto does not forward DUP, and never sends QoS 2 to a QoS 1 subscription), so
these tests put a small MQTT listener on a raw socket in the broker's place; the flows that a
real broker can show are checked against Mosquitto.
"""

from __future__ import annotations

import queue
import socket
import struct
import threading
import time
import uuid
from collections.abc import Callable, Iterator

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from cityneuron.servers import MosquittoBroker
from cityneuron.settings import MqttSettings
from simulator.mqttwire import (
    CONNECT,
    PUBACK,
    PUBCOMP,
    PUBLISH,
    PUBREC,
    SUBSCRIBE,
    InboundPublish,
    PacketParser,
    decode_publish,
    encode_subscribe,
    remaining_length,
)
from simulator.wireclient import WireClient

Packet = tuple[int, bytes]  # first byte of the fixed header, body


class _Listener:
    """Just enough of an MQTT broker on a raw socket to see every byte a client sends.

    Accepts one connection at a time (while ``accepting`` is set), answers CONNECT with
    CONNACK and SUBSCRIBE with a SUBACK granting what was asked, and never acknowledges a
    PUBLISH. Each connection's packets land in its own queue.
    """

    def __init__(self) -> None:
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self.accepting = threading.Event()
        self.accepting.set()
        self.connections: list[tuple[socket.socket, queue.Queue[Packet]]] = []
        self._closed = False
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._thread.start()

    def _accept_loop(self) -> None:
        while not self._closed:
            if not self.accepting.wait(0.1):
                continue
            self._server.settimeout(0.1)
            try:
                sock, _ = self._server.accept()
            except (TimeoutError, OSError):
                continue
            packets: queue.Queue[Packet] = queue.Queue()
            self.connections.append((sock, packets))
            threading.Thread(target=self._read_loop, args=(sock, packets), daemon=True).start()

    def _read_loop(self, sock: socket.socket, packets: queue.Queue[Packet]) -> None:
        parser = PacketParser()
        while True:
            try:
                data = sock.recv(65536)
            except OSError:
                return
            if not data:
                return
            for first, body in parser.feed(data):
                kind = first >> 4
                if kind == CONNECT:
                    sock.sendall(b"\x20\x02\x00\x00")
                elif kind == SUBSCRIBE:
                    granted = _requested_qos(body)
                    suback = body[:2] + bytes(granted)
                    sock.sendall(b"\x90" + remaining_length(len(suback)) + suback)
                packets.put((first, body))

    def send(self, data: bytes) -> None:
        self.connections[-1][0].sendall(data)

    def next_packet(self, kind: int, timeout_s: float = 10.0, connection: int = -1) -> Packet:
        """The next packet of type ``kind`` the client sent on a connection (others skipped)."""
        deadline = time.monotonic() + timeout_s
        _wait(lambda: len(self.connections) > connection >= 0 or connection < 0, timeout_s, "a connection")
        packets = self.connections[connection][1]
        while True:
            first, body = packets.get(timeout=max(0.01, deadline - time.monotonic()))
            if first >> 4 == kind:
                return first, body

    def drop(self) -> None:
        """Close the current connection as a failing broker would (no goodbye)."""
        sock = self.connections[-1][0]
        sock.shutdown(socket.SHUT_RDWR)
        sock.close()

    def close(self) -> None:
        self._closed = True
        self._thread.join(2)
        for sock, _ in self.connections:
            sock.close()
        self._server.close()


def _requested_qos(subscribe_body: bytes) -> list[int]:
    """The maximum QoS asked for each filter of a SUBSCRIBE body (section 3.8.3)."""
    at, out = 2, []
    while at < len(subscribe_body):
        (length,) = struct.unpack_from("!H", subscribe_body, at)
        at += 2 + length
        out.append(subscribe_body[at])
        at += 1
    return out


def _publish_qos2(topic: str, payload: bytes, packet_id: int, *, dup: bool = False) -> bytes:
    body = struct.pack("!H", len(topic)) + topic.encode() + struct.pack("!H", packet_id) + payload
    return bytes((0x34 | (0x08 if dup else 0),)) + remaining_length(len(body)) + body


@pytest.fixture
def listener() -> Iterator[_Listener]:
    server = _Listener()
    yield server
    server.close()


def _wait(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def test_dup_only_on_a_message_that_was_sent_before(listener: _Listener) -> None:
    client = WireClient(MqttSettings(port=listener.port, reconnect_max_delay_s=1.0), "dup-check")
    client.connect()
    try:
        assert client.publish("t/sent-before", b"a", 1)
        client.flush()
        first, body = listener.next_packet(PUBLISH)
        assert decode_publish(first, body).topic == "t/sent-before" and not first & 0x08
        # The broker goes away without acknowledging it; while it is gone, a new message.
        listener.accepting.clear()
        listener.drop()
        _wait(lambda: not client.connected, 10, "the client to notice")
        assert client.publish("t/queued", b"b", 1)
        listener.accepting.set()
        resent = [listener.next_packet(PUBLISH, connection=1) for _ in range(2)]
        flags = {decode_publish(first, body).topic: bool(first & 0x08) for first, body in resent}
        # A re-delivery carries DUP; a first transmission does not.
        assert flags == {"t/sent-before": True, "t/queued": False}
        assert client.in_flight == 2  # never acknowledged: still kept for the next connection
    finally:
        client.close(disconnect=False)


def test_qos2_is_answered_with_pubrec_and_pubcomp(listener: _Listener) -> None:
    received: list[InboundPublish] = []
    client = WireClient(
        MqttSettings(port=listener.port),
        "qos2-check",
        subscriptions=[("cmd/#", 1)],
        on_message=received.append,
    )
    client.connect()
    try:
        _, subscribe = listener.next_packet(SUBSCRIBE)
        assert _requested_qos(subscribe) == [1]
        # A broker that sends QoS 2 anyway: PUBREC, not PUBACK.
        listener.send(_publish_qos2("cmd/x", b"hello", 7))
        first, body = listener.next_packet(PUBREC)
        assert first == 0x50 and body == struct.pack("!H", 7)
        # It repeats the PUBLISH (no PUBREC reached it): answered again, handed on once.
        listener.send(_publish_qos2("cmd/x", b"hello", 7, dup=True))
        assert listener.next_packet(PUBREC)[1] == struct.pack("!H", 7)
        listener.send(b"\x62\x02" + struct.pack("!H", 7))  # PUBREL
        first, body = listener.next_packet(PUBCOMP)
        assert first == 0x70 and body == struct.pack("!H", 7)
        assert [(m.topic, m.payload, m.qos) for m in received] == [("cmd/x", b"hello", 2)]
        # And never a PUBACK for it.
        assert all(first >> 4 != PUBACK for first, _ in list(listener.connections[-1][1].queue))
    finally:
        client.close(disconnect=False)


def test_subscriptions_above_qos1_are_refused() -> None:
    with pytest.raises(ValueError, match="QoS 2"):
        WireClient(MqttSettings(), "qos2-sub", subscriptions=[("cmd/#", 2)])
    with pytest.raises(ValueError, match="QoS 2"):
        encode_subscribe(1, [("cmd/#", 2)])


def test_qos2_publishes_reach_a_qos1_subscription_once(broker: MosquittoBroker) -> None:
    """Against Mosquitto: messages published at QoS 2 arrive at QoS 1 (the subscription's),
    each once, and the client keeps its connection (its PUBACKs are what Mosquitto expects)."""
    received: list[InboundPublish] = []
    got = threading.Condition()

    def on_message(message: InboundPublish) -> None:
        with got:
            received.append(message)
            got.notify_all()

    client = WireClient(
        MqttSettings(port=broker.port), "qos2-real", subscriptions=[("q2/#", 1)], on_message=on_message
    )
    client.connect()
    publisher = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"pub-{uuid.uuid4().hex[:8]}")
    publisher.connect("127.0.0.1", broker.port)
    publisher.loop_start()
    try:
        infos = [publisher.publish(f"q2/{i}", f"m{i}".encode(), qos=2) for i in range(50)]
        for info in infos:
            info.wait_for_publish(10)
        with got:
            assert got.wait_for(lambda: len(received) >= 50, 10)
        time.sleep(0.3)  # a redelivery would show up now
        assert sorted(m.payload for m in received) == sorted(f"m{i}".encode() for i in range(50))
        assert {m.qos for m in received} == {1}
        assert client.connected
    finally:
        publisher.disconnect()
        publisher.loop_stop()
        client.close()
