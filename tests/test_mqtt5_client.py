"""Ingest's own MQTT 5 client (cityneuron.mqtt5client, ingest.mqtt.MqttSource) against a real
Mosquitto: persistent sessions, manual acks after the fact, redelivery after a broken
connection, shared subscriptions, QoS 2 and QoS 1 publishing across a reconnect.

A broken connection is a real one: a TCP relay between client and broker cuts its sockets.
"""

from __future__ import annotations

import queue
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress

import paho.mqtt.client as paho
import pytest
from mqtttest import publisher
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from polling import eventually

from cityneuron.decode import Message
from cityneuron.mqtt5client import Mqtt5Client
from cityneuron.mqtt5wire import RawPublish, Subscription
from cityneuron.servers import MosquittoBroker
from cityneuron.settings import IngestSettings, MqttSettings
from ingest.mqtt import MqttSource
from ingest.observability import IngestMetrics

SESSION_S = 3600


class Relay:
    """A TCP relay in front of the broker: ``cut()`` breaks every connection through it (a
    network failure, no DISCONNECT); while ``accepting`` is clear, new connections are closed."""

    def __init__(self, target_port: int) -> None:
        self._target = target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.accepting = threading.Event()
        self.accepting.set()
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if not self.accepting.is_set():
                client.close()
                continue
            upstream = socket.create_connection(("127.0.0.1", self._target))
            with self._lock:
                self._sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        with suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        for sock in (source, sink):
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def close(self) -> None:
        self._listener.close()
        self.cut()


@pytest.fixture
def relay(broker: MosquittoBroker) -> Iterator[Relay]:
    r = Relay(broker.port)
    yield r
    r.close()


class Receiver:
    """An Mqtt5Client with a persistent session recording what it receives, acking nothing
    by itself."""

    def __init__(
        self, port: int, client_id: str, topic_filter: str = "t/#", qos: int = 1, *, keepalive_s: int = 30
    ) -> None:
        self.received: list[tuple[RawPublish, int]] = []
        self.subacks: list[list[int]] = []
        self.sessions: list[bool] = []
        self._lock = threading.Lock()
        self._subscription = Subscription(topic_filter, qos=qos)
        self.client = Mqtt5Client(
            MqttSettings(port=port, keepalive_s=keepalive_s, reconnect_max_delay_s=1.0),
            client_id,
            clean_start=False,
            session_expiry_s=SESSION_S,
            receive_maximum=1000,
            on_connect=self._on_connect,
            on_subscribe=lambda packet_id, codes: self.subacks.append(codes),
            on_publishes=self._on_publishes,
        )
        self.client.start()
        assert eventually(lambda: len(self.subacks), lambda n: n >= 1), "no SUBACK"

    def _on_connect(self, session_present: bool) -> None:
        self.sessions.append(session_present)
        self.client.subscribe([self._subscription])

    def _on_publishes(self, batch: list[RawPublish], connection: int) -> None:
        with self._lock:
            self.received += [(publish, connection) for publish in batch]

    def payloads(self) -> list[bytes]:
        with self._lock:
            return [publish[3] for publish, _ in self.received]

    def ack(self, entries: list[tuple[RawPublish, int]]) -> bool:
        by_connection: dict[int, tuple[list[int], list[int]]] = {}
        for (first, _, packet_id, _), connection in entries:
            qos1, qos2 = by_connection.setdefault(connection, ([], []))
            (qos1 if first >> 1 & 3 == 1 else qos2).append(packet_id)
        return all(self.client.ack(q1, q2, c) for c, (q1, q2) in by_connection.items())

    def close(self) -> None:
        self.client.close()


@contextmanager
def receiver(port: int, client_id: str, topic_filter: str = "t/#", qos: int = 1) -> Iterator[Receiver]:
    r = Receiver(port, client_id, topic_filter, qos)
    try:
        yield r
    finally:
        r.close()


def _publish(port: int, payloads: list[bytes], qos: int = 1, topic: str = "t/x") -> None:
    with publisher(port) as pub:
        for payload in payloads:
            pub.publish(topic, payload, qos=qos).wait_for_publish(5)


def _id() -> str:
    return f"wire-{uuid.uuid4().hex[:8]}"


def test_persistent_session_resumes_exactly_the_unacked_messages(broker: MosquittoBroker) -> None:
    """200 QoS 1 messages, the first 120 acked in one write; after a restart of the client, the
    session gives back the other 80 and what was published while it was away, nothing else."""
    client_id = _id()
    sent = [b"m%03d" % n + b"x" * 3000 for n in range(200)]
    with receiver(broker.port, client_id) as first:
        assert first.sessions == [False]
        assert first.subacks == [[1]]  # granted QoS 1
        _publish(broker.port, sent)
        assert eventually(first.payloads, lambda p: len(p) == 200) == sent
        assert first.ack(first.received[:120])
    _publish(broker.port, [b"while-away"])
    with receiver(broker.port, client_id) as second:
        assert second.sessions == [True]
        expected = [*sent[120:], b"while-away"]
        assert eventually(second.payloads, lambda p: len(p) >= 81) == expected
        # Redeliveries carry DUP; the new message does not.
        assert [bool(p[0] & 0x08) for p, _ in second.received] == [True] * 80 + [False]
        assert second.ack(second.received)
    with receiver(broker.port, client_id) as third:
        _publish(broker.port, [b"last"])
        assert eventually(third.payloads, lambda p: len(p) >= 1) == [b"last"]


def test_message_not_acked_before_a_broken_connection_is_delivered_again(
    broker: MosquittoBroker, relay: Relay
) -> None:
    with receiver(relay.port, _id()) as r:
        _publish(broker.port, [b"a", b"b", b"c"])
        assert eventually(r.payloads, lambda p: len(p) == 3) == [b"a", b"b", b"c"]
        old = list(r.received)
        assert r.client.connection == 1
        assert r.ack(old[:1])  # "a" committed and acked before the failure
        time.sleep(0.5)  # for the relay to pass the PUBACK on before the cut
        relay.cut()
        # The client reconnects by itself; "b" and "c" come again, on connection 2.
        assert eventually(r.payloads, lambda p: len(p) == 5)[3:] == [b"b", b"c"]
        assert {connection for _, connection in r.received[3:]} == {2}
        # An ack naming the old connection writes nothing: its packet ids mean nothing now.
        assert not r.ack(old[1:])
        assert r.ack(r.received[3:])
        time.sleep(0.5)
        relay.cut()
        assert eventually(lambda: r.client.connection, lambda c: c == 3) == 3
        _publish(broker.port, [b"d"])
        assert eventually(r.payloads, lambda p: len(p) == 6)[5] == b"d"


def test_share_group_spreads_messages_over_its_members(broker: MosquittoBroker) -> None:
    with (
        receiver(broker.port, _id(), "$share/grp/t/#") as one,
        receiver(broker.port, _id(), "$share/grp/t/#") as two,
    ):
        sent = [b"%d" % n for n in range(100)]
        _publish(broker.port, sent)
        assert eventually(lambda: len(one.payloads()) + len(two.payloads()), lambda n: n >= 100) == 100
        assert sorted(one.payloads() + two.payloads(), key=int) == sent
        assert one.payloads() and two.payloads()  # both got some: the group shares


def test_qos2_message_is_handed_on_once_and_completed_after_the_ack(
    broker: MosquittoBroker, relay: Relay
) -> None:
    client_id = _id()
    with receiver(relay.port, client_id, qos=2) as r:
        assert r.subacks == [[2]]
        _publish(broker.port, [b"q2-a", b"q2-b"], qos=2)
        assert eventually(r.payloads, lambda p: len(p) == 2) == [b"q2-a", b"q2-b"]
        assert {p[0] >> 1 & 3 for p, _ in r.received} == {2}
        assert r.ack(r.received[:1])  # PUBREC for "q2-a"; the broker answers PUBREL, we PUBCOMP
        time.sleep(0.5)
        relay.cut()
        # "q2-b" had no PUBREC: delivered again; "q2-a" is not (the broker saw PUBREC).
        assert eventually(r.payloads, lambda p: len(p) >= 3) == [b"q2-a", b"q2-b", b"q2-b"]
        assert r.ack(r.received[2:])
        time.sleep(0.5)
    with receiver(broker.port, client_id, qos=2) as again:
        _publish(broker.port, [b"q2-c"], qos=2)
        # Both QoS 2 flows completed: only the new message arrives.
        assert eventually(again.payloads, lambda p: len(p) >= 1) == [b"q2-c"]


def test_qos1_publishes_survive_a_lost_connection(broker: MosquittoBroker, relay: Relay) -> None:
    """More messages at once than the broker's receive maximum (4000, broker/conf.d), then more
    while the connection is down: every one arrives, in order, once the client is back."""
    got: list[bytes] = []
    watcher = paho.Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5)
    subscribed = threading.Event()
    watcher.on_connect = lambda c, *_: c.subscribe("alerts/#", qos=1)
    watcher.on_subscribe = lambda *_: subscribed.set()
    watcher.on_message = lambda c, u, m: got.append(bytes(m.payload))
    watcher.connect("127.0.0.1", broker.port)
    watcher.loop_start()
    client = Mqtt5Client(MqttSettings(port=relay.port, reconnect_max_delay_s=1.0), _id())
    try:
        assert subscribed.wait(10)
        client.start()
        assert eventually(lambda: client.connection, lambda c: c == 1) == 1
        burst = [b"burst-%d" % n for n in range(4500)]
        for payload in burst:
            client.publish("alerts/x", payload)
        assert eventually(lambda: client.in_flight, lambda n: n == 0, timeout_s=30) == 0
        assert client.connection == 1
        relay.accepting.clear()
        relay.cut()
        assert eventually(lambda: client.connection, lambda c: c == 0) == 0
        late = [b"late-%d" % n for n in range(5)]
        for payload in late:
            client.publish("alerts/x", payload)
        assert client.in_flight == 5
        relay.accepting.set()
        assert eventually(lambda: client.in_flight, lambda n: n == 0, timeout_s=15) == 0
        assert eventually(lambda: list(got), lambda g: len(g) >= 4505, timeout_s=15) == burst + late
    finally:
        client.close()
        watcher.disconnect()
        watcher.loop_stop()


def test_source_acks_only_messages_of_the_current_connection(broker: MosquittoBroker, relay: Relay) -> None:
    """ingest.mqtt.MqttSource: Message fields as the writer expects them, and no ack for a
    message of an earlier connection (its packet id may name another message by now)."""
    inbox: queue.Queue[Message] = queue.Queue(maxsize=100)
    source = MqttSource(
        MqttSettings(port=relay.port, reconnect_max_delay_s=1.0),
        IngestSettings(client_id=_id()),
        inbox,
        IngestMetrics(),
    )
    source.start()
    try:
        assert eventually(lambda: source.subscribed, lambda s: s)
        topic = "city/futian/smart_pole/pole-futian-00001/telemetry"
        _publish(broker.port, [b"{}"], topic=topic)
        message = inbox.get(timeout=10)
        assert (message.topic, message.payload, message.qos, message.generation) == (topic, b"{}", 1, 1)
        assert message.mid > 0
        relay.cut()
        again = inbox.get(timeout=10)  # redelivered on connection 2
        assert (again.payload, again.mid, again.generation) == (b"{}", message.mid, 2)
        assert source.ack([message]) == 0  # connection 1 is gone
        assert source.ack([again]) == 1
    finally:
        source.stop()
