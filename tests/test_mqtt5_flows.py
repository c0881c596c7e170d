"""Ingest's MQTT 5 client (cityneuron.mqtt5client) against a scripted server: the flows a real
Mosquitto does not show on demand. Mosquitto acknowledges incoming QoS 1 at once, so its receive
maximum never fills; it sends no QoS 2 PUBLISH again after a PUBREC it lost, and no DISCONNECT or
silence on cue, and refuses topics that are not UTF-8. The server side here is a socket and the
codec's own bytes.
"""

from __future__ import annotations

import logging
import queue
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from polling import eventually

from cityneuron.decode import Message
from cityneuron.mqtt5client import Mqtt5Client
from cityneuron.mqtt5wire import RawPublish, Reader, encode_pubacks, encode_publish, encode_pubrel
from cityneuron.mqttwire import (
    CONNECT,
    PINGREQ,
    PUBACK,
    PUBCOMP,
    PUBLISH,
    PUBREC,
    SUBSCRIBE,
    PacketParser,
    remaining_length,
)
from cityneuron.settings import IngestSettings, MqttSettings
from ingest.mqtt import MqttSource
from ingest.observability import IngestMetrics

CONNACK = b"\x20\x03\x00\x00\x00"
CONNACK_SESSION_PRESENT = b"\x20\x03\x01\x00\x00"


@contextmanager
def scripted(**settings: float) -> Iterator[tuple[socket.socket, Mqtt5Client, list[RawPublish]]]:
    """A listening socket, and a started client pointed at it that records what it receives."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(10)
    received: list[RawPublish] = []
    client = Mqtt5Client(
        MqttSettings(port=server.getsockname()[1], reconnect_max_delay_s=1.0, **settings),  # type: ignore[arg-type]
        f"script-{uuid.uuid4().hex[:8]}",
        on_publishes=lambda batch, connection: received.extend(batch),
    )
    client.start()
    try:
        yield server, client, received
    finally:
        client.close()
        server.close()


def _accept(server: socket.socket, connack: bytes = CONNACK) -> tuple[socket.socket, PacketParser]:
    conn, _ = server.accept()
    parser = PacketParser()
    assert _packets_until_quiet(conn, parser)[0][0] >> 4 == CONNECT
    conn.sendall(connack)
    return conn, parser


def _packets_until_quiet(
    sock: socket.socket, parser: PacketParser, quiet_s: float = 0.5
) -> list[tuple[int, bytes]]:
    """What the client sent until it stayed quiet for ``quiet_s``."""
    packets: list[tuple[int, bytes]] = []
    sock.settimeout(quiet_s)
    while True:
        try:
            data = sock.recv(65536)
        except TimeoutError:
            return packets
        if not data:
            return packets
        packets += parser.feed(data)


def _publishes(packets: list[tuple[int, bytes]]) -> list[tuple[bool, int, bytes]]:
    """(DUP, packet id, payload) of each PUBLISH; other packets (PINGREQ) left out."""
    out = []
    for first, body in packets:
        if first >> 4 == PUBLISH:
            (_, _, packet_id, payload), *_ = Reader().feed(
                bytes((first,)) + remaining_length(len(body)) + body
            )[0]
            out.append((bool(first & 0x08), packet_id, payload))
    return out


def test_qos1_publishing_keeps_to_the_servers_receive_maximum_and_resends_with_dup() -> None:
    """Against a scripted server (Mosquitto acknowledges QoS 1 at once, so it never shows the
    window filling): at most the CONNACK's Receive Maximum unacknowledged, and after a
    reconnect the unacknowledged ones again with DUP, before anything new."""
    with scripted() as (server, client, _):
        conn, parser = _accept(server, b"\x20\x06\x00\x00\x03\x21\x00\x02")  # Receive Maximum 2
        for n in range(5):
            client.publish("alerts/x", b"%d" % n)
        sent = _publishes(_packets_until_quiet(conn, parser))
        assert [(dup, payload) for dup, _, payload in sent] == [(False, b"0"), (False, b"1")]
        conn.sendall(encode_pubacks([sent[0][1]]))
        more = _publishes(_packets_until_quiet(conn, parser))
        assert [(dup, payload) for dup, _, payload in more] == [(False, b"2")]
        conn.close()  # the connection breaks with "1" and "2" unacknowledged

        conn, parser = _accept(server, b"\x20\x06\x01\x00\x03\x21\x00\x02")  # session present
        again = _publishes(_packets_until_quiet(conn, parser))
        assert [(dup, payload) for dup, _, payload in again] == [(True, b"1"), (True, b"2")]
        assert [packet_id for _, packet_id, _ in again] == [sent[1][1], more[0][1]]
        conn.sendall(encode_pubacks([packet_id for _, packet_id, _ in again]))
        rest = _publishes(_packets_until_quiet(conn, parser))
        assert [(dup, payload) for dup, _, payload in rest] == [(False, b"3"), (False, b"4")]
        conn.sendall(encode_pubacks([packet_id for _, packet_id, _ in rest]))
        assert eventually(lambda: client.in_flight, lambda n: n == 0) == 0
        conn.close()


def _kinds(packets: list[tuple[int, bytes]]) -> list[int]:
    return [first >> 4 for first, _ in packets]


def test_qos2_publish_repeated_after_its_pubrec_is_not_handed_on_again() -> None:
    """The broker resends a QoS 2 PUBLISH until it has seen PUBREC; one that comes again after
    ours (its PUBREC lost with a connection) is answered with PUBREC and not handed on twice
    (MQTT 5.0 section 4.3.3); PUBREL gets PUBCOMP."""
    with scripted() as (server, client, received):
        conn, parser = _accept(server)
        conn.sendall(encode_publish(b"t/q2", b"once", 2, packet_id=5))
        assert eventually(lambda: len(received), lambda n: n == 1) == 1
        assert client.ack([], [5], client.connection)
        assert _kinds(_packets_until_quiet(conn, parser)) == [PUBREC]
        conn.close()
        conn, parser = _accept(server, CONNACK_SESSION_PRESENT)
        conn.sendall(encode_publish(b"t/q2", b"once", 2, packet_id=5, dup=True))
        assert _kinds(_packets_until_quiet(conn, parser)) == [PUBREC]
        conn.sendall(encode_pubrel(5))
        assert _packets_until_quiet(conn, parser) == [(PUBCOMP << 4, b"\x00\x05")]
        assert [payload for _, _, _, payload in received] == [b"once"]
        # Released: the id is free, and a new message with it is a new message.
        conn.sendall(encode_publish(b"t/q2", b"next", 2, packet_id=5))
        assert eventually(lambda: len(received), lambda n: n == 2) == 2


def test_server_disconnect_is_logged_and_the_client_reconnects(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="cityneuron.mqtt")
    with scripted() as (server, client, _):
        conn, _ = _accept(server)
        reason = b"\x1f\x00\x0bmaintenance"
        conn.sendall(b"\xe0" + remaining_length(2 + len(reason)) + b"\x8b" + bytes((len(reason),)) + reason)
        conn2, _ = _accept(server)  # a new CONNECT: the client dialled again by itself
        assert eventually(lambda: client.connection, lambda c: c == 2) == 2
        lost = [r.getMessage() for r in caplog.records if "lost" in r.getMessage()]
        assert lost and "server shutting down (0x8B): maintenance" in lost[0], lost
        conn.close()
        conn2.close()


def test_keepalive_pings_and_a_silent_server_counts_as_gone() -> None:
    """The server's keep-alive (CONNACK property) wins over ours: PINGREQ after half of it
    without writing, and no PINGRESP within it ends the connection; the client dials again."""
    with scripted(keepalive_s=30) as (server, client, _):
        conn, parser = _accept(server, b"\x20\x06\x00\x00\x03\x13\x00\x02")  # Server Keep Alive 2 s
        assert _kinds(_packets_until_quiet(conn, parser, quiet_s=1.5)) == [PINGREQ]
        conn.sendall(b"\xd0\x00")  # PINGRESP
        assert _kinds(_packets_until_quiet(conn, parser, quiet_s=1.5)) == [PINGREQ]
        # No answer this time: within about 2 s more the client gives up on this connection.
        conn2, _ = _accept(server)
        assert eventually(lambda: client.connection, lambda c: c == 2) == 2
        conn.close()
        conn2.close()


def test_source_names_a_topic_that_is_not_utf8_for_the_writer_to_dead_letter() -> None:
    """Mosquitto refuses such topics from publishers, so only a scripted server can send one;
    ingest.mqtt.MqttSource passes the message on under "<topic is not UTF-8>" (the writer
    dead-letters it) instead of dropping it or breaking the connection."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(10)
    inbox: queue.Queue[Message] = queue.Queue()
    source = MqttSource(
        MqttSettings(port=server.getsockname()[1]),
        IngestSettings(client_id=f"script-{uuid.uuid4().hex[:8]}"),
        inbox,
        IngestMetrics(),
    )
    source.start()
    try:
        conn, parser = _accept(server)
        [(first, body)] = _packets_until_quiet(conn, parser)
        assert first >> 4 == SUBSCRIBE
        conn.sendall(b"\x90\x05" + body[:2] + b"\x00\x01\x01")  # SUBACK: QoS 1 granted twice
        assert eventually(lambda: source.subscribed, lambda s: s)
        conn.sendall(encode_publish(b"city/\xff/smart_pole/x/telemetry", b"{}", 1, packet_id=9))
        message = inbox.get(timeout=10)
        assert (message.topic, message.payload, message.mid, message.qos) == (
            "<topic is not UTF-8>",
            b"{}",
            9,
            1,
        )
        assert source.ack([message]) == 1
        assert _packets_until_quiet(conn, parser) == [(PUBACK << 4, b"\x00\x09")]
        conn.close()
    finally:
        source.stop()
        server.close()
