"""The MQTT 5 codec of ingest's client (cityneuron.mqtt5wire) and its outbound session state
(cityneuron.mqtt5outbox): pure functions, no broker.

Packets the broker would send are built here byte by byte from the standard's layout (OASIS
MQTT 5.0), so the decoders are not only checked against their own encoders.
"""

from __future__ import annotations

import pytest

from cityneuron.errors import MqttError
from cityneuron.mqtt5outbox import Outbox
from cityneuron.mqtt5wire import (
    REASON_STRING,
    RECEIVE_MAXIMUM,
    RETAIN_SEND_IF_NEW_SUB,
    SERVER_KEEP_ALIVE,
    SESSION_EXPIRY_INTERVAL,
    Reader,
    Subscription,
    decode_ack,
    decode_connack,
    decode_disconnect,
    decode_properties,
    decode_suback,
    encode_connect,
    encode_disconnect,
    encode_properties,
    encode_pubacks,
    encode_pubcomp,
    encode_publish,
    encode_pubrec,
    encode_pubrel,
    encode_subscribe,
    encode_unsubscribe,
    is_failure,
    reason_name,
    with_dup,
)
from cityneuron.mqttwire import (
    PUBACK,
    PUBCOMP,
    PUBREC,
    PUBREL,
    MalformedPacket,
    PacketParser,
    encode_string,
    packet,
    remaining_length,
)

TOPIC = b"city/futian/smart_pole/SZ-FT-POLE-000001/telemetry"


def _publish_with_properties(
    topic: bytes, payload: bytes, qos: int, packet_id: int, properties: bytes
) -> bytes:
    """A PUBLISH as a broker may send it: properties between the packet id and the payload."""
    body = encode_string(topic) + (packet_id.to_bytes(2, "big") if qos else b"")
    body += remaining_length(len(properties)) + properties + payload
    return packet(0x30 | qos << 1, body)


# Message expiry (u32), content type (string), a subscription identifier (variable byte
# integer) and a user property (string pair): one property of each encoding a PUBLISH can carry.
SOME_PROPERTIES = (
    b"\x02\x00\x00\x0e\x10"
    + b"\x03"
    + encode_string("application/json")
    + b"\x0b\x81\x01"
    + b"\x26"
    + encode_string("k")
    + encode_string("v" * 200)
)


# --- CONNECT / CONNACK ---------------------------------------------------------------------


def test_connect_is_version_5_with_session_and_receive_maximum() -> None:
    connect = encode_connect(
        "ingest-1",
        30,
        clean_start=False,
        session_expiry_s=2_592_000,
        receive_maximum=4000,
        username="ingest",
        password="secret",
    )
    [(first, body)] = PacketParser().feed(connect)
    assert first == 0x10
    # Protocol name, version 5, flags user name + password and no clean start, keep-alive 30.
    assert body[:10] == b"\x00\x04MQTT\x05\xc0\x00\x1e"
    properties, at = decode_properties(body, 10)
    assert properties == {SESSION_EXPIRY_INTERVAL: 2_592_000, RECEIVE_MAXIMUM: 4000}
    assert body[at:] == encode_string("ingest-1") + encode_string("ingest") + encode_string("secret")


def test_connect_clean_start_without_properties_or_credentials() -> None:
    body = PacketParser().feed(encode_connect("c", 60, clean_start=True))[0][1]
    assert body[7] == 0x02 and body[10] == 0  # clean start only; an empty property block
    # MQTT 5 (unlike 3.1.1) allows a password without a user name (section 3.1.2.9).
    assert encode_connect("c", 60, clean_start=True, password="p")[9] == 0x42


def test_connack_session_present_and_server_properties() -> None:
    properties = b"\x21\x00\x14" + b"\x13\x00\x3c" + b"\x1f" + encode_string("hello")
    body = b"\x01\x00" + remaining_length(len(properties)) + properties
    connack = decode_connack(body)
    assert connack.session_present and connack.reason_code == 0
    assert connack.properties == {RECEIVE_MAXIMUM: 20, SERVER_KEEP_ALIVE: 60, REASON_STRING: "hello"}
    assert connack.reason_string == "hello"


def test_connack_refusal_reason_codes() -> None:
    refused = decode_connack(b"\x00\x86\x00")
    assert not refused.session_present and is_failure(refused.reason_code)
    assert reason_name(refused.reason_code) == "bad user name or password (0x86)"
    assert reason_name(0x87) == "not authorized (0x87)"
    assert reason_name(0xFE) == "unknown reason (0xFE)"
    assert not is_failure(decode_connack(b"\x00\x00").reason_code)  # no property block: allowed
    with pytest.raises(MalformedPacket):
        decode_connack(b"\x00")


def test_properties_round_trip_and_limits() -> None:
    block = encode_properties({SESSION_EXPIRY_INTERVAL: 7, RECEIVE_MAXIMUM: 9, 0x24: 1})
    assert decode_properties(block, 0) == (
        {SESSION_EXPIRY_INTERVAL: 7, RECEIVE_MAXIMUM: 9, 0x24: 1},
        len(block),
    )
    with pytest.raises(ValueError):
        encode_properties({REASON_STRING: 1})
    with pytest.raises(MalformedPacket):
        decode_properties(b"\x03\x7f\x00\x00", 0)  # unknown property 0x7F
    with pytest.raises(MalformedPacket):
        decode_properties(b"\x05\x11\x00\x00", 0)  # longer than the packet
    with pytest.raises(MalformedPacket):
        decode_properties(b"\x03\x1f\x00\x05", 0)  # a string running past the block


# --- SUBSCRIBE / UNSUBSCRIBE ---------------------------------------------------------------


def test_subscribe_carries_subscription_options() -> None:
    subscribe = encode_subscribe(
        7,
        [
            Subscription("$share/g/city/+/+/+/telemetry", qos=1),
            Subscription("city/+/+/+/status", qos=1, retain_handling=RETAIN_SEND_IF_NEW_SUB),
            Subscription("x", qos=2, no_local=True, retain_as_published=True),
        ],
    )
    [(first, body)] = PacketParser().feed(subscribe)
    assert first == 0x82  # SUBSCRIBE's reserved flags 0010 (section 3.8.1)
    assert body[:3] == b"\x00\x07\x00"  # packet id, no properties
    expected = (
        encode_string("$share/g/city/+/+/+/telemetry")
        + b"\x01"
        + encode_string("city/+/+/+/status")
        + b"\x11"  # QoS 1, retain handling 1 (bits 4-5)
        + encode_string("x")
        + b"\x0e"  # QoS 2, no local, retain as published
    )
    assert body[3:] == expected
    with pytest.raises(ValueError):
        encode_subscribe(1, [])
    with pytest.raises(ValueError):
        encode_subscribe(1, [Subscription("x", qos=3)])


def test_suback_and_unsuback_reason_codes_after_properties() -> None:
    properties = b"\x1f" + encode_string("nope")
    body = b"\x00\x07" + remaining_length(len(properties)) + properties + b"\x01\x87"
    assert decode_suback(body) == (7, [1, 0x87])
    assert decode_suback(b"\x00\x08\x00\x00\x11") == (8, [0, 0x11])  # UNSUBACK: none existed
    unsubscribe = encode_unsubscribe(9, ["$share/old/city/+/+/+/telemetry"])
    [(first, ubody)] = PacketParser().feed(unsubscribe)
    assert first == 0xA2 and ubody == b"\x00\x09\x00" + encode_string("$share/old/city/+/+/+/telemetry")


# --- PUBLISH, bulk reading -------------------------------------------------------------------


@pytest.mark.parametrize("remaining", [127, 128, 16_383, 16_384, 2_097_152])
@pytest.mark.parametrize("qos", [0, 1, 2])
def test_publish_round_trips_at_the_length_boundaries(remaining: int, qos: int) -> None:
    payload = bytes(i % 251 for i in range(remaining - 2 - len(TOPIC) - 2 * (qos > 0) - 1))
    publish = encode_publish(TOPIC, payload, qos, packet_id=4242 if qos else 0, retain=True)
    assert publish[1:].startswith(remaining_length(remaining))
    publishes, others = Reader().feed(publish)
    assert others == []
    assert publishes == [(0x31 | qos << 1, TOPIC, 4242 if qos else 0, payload)]
    assert Reader().feed(with_dup(publish))[0][0][0] & 0x08


@pytest.mark.parametrize("qos", [0, 1, 2])
def test_publish_properties_are_skipped(qos: int) -> None:
    # 230-odd bytes of properties: their length takes two bytes.
    assert len(SOME_PROPERTIES) >= 128
    publish = _publish_with_properties(TOPIC, b'{"v":1}', qos, 17, SOME_PROPERTIES)
    assert Reader().feed(publish)[0] == [(0x30 | qos << 1, TOPIC, 17 if qos else 0, b'{"v":1}')]


def test_reader_fed_byte_by_byte_or_in_chunks_yields_the_same_packets() -> None:
    packets = [
        encode_publish(b"a/b", b"", 0),
        encode_pubacks([1]),
        _publish_with_properties("city/\u6df1\u5733".encode(), b"x" * 200, 1, 65_535, SOME_PROPERTIES),
        b"\x90\x04\x00\x07\x00\x01",  # SUBACK granting QoS 1
        b"\xd0\x00",  # PINGRESP
        encode_publish(b"t", b"y" * 20_000, 2, packet_id=3),
        encode_pubrel(3),
        _publish_with_properties(b"\xff\xfe", b"bad topic", 1, 4, b""),
    ]
    stream = b"".join(packets)
    whole = Reader().feed(stream)
    publishes, others = whole
    assert [(p[1], p[2], p[3]) for p in publishes] == [
        (b"a/b", 0, b""),
        ("city/\u6df1\u5733".encode(), 65_535, b"x" * 200),
        (b"t", 3, b"y" * 20_000),
        (b"\xff\xfe", 4, b"bad topic"),  # not UTF-8: passed on as sent, the owner decides
    ]
    assert [first >> 4 for first, _ in others] == [PUBACK, 9, 13, PUBREL]
    for size in (1, 7, 1000, 65_536):
        reader = Reader()
        seen: tuple[list, list] = ([], [])  # type: ignore[type-arg]
        for k in range(0, len(stream), size):
            more, rest = reader.feed(stream[k : k + size])
            seen[0].extend(more)
            seen[1].extend(rest)
        assert seen == whole, size


def test_reader_keeps_a_cut_packet_for_the_next_read() -> None:
    publish = encode_publish(TOPIC, b"z" * 300, 1, packet_id=5)
    reader = Reader()
    # Cut inside the two-byte remaining length, then inside the body.
    assert reader.feed(publish[:2]) == ([], [])
    assert reader.feed(publish[2:40]) == ([], [])
    assert reader.feed(publish[40:] + publish[:1]) == ([(0x32, TOPIC, 5, b"z" * 300)], [])
    assert reader.feed(publish[1:]) == ([(0x32, TOPIC, 5, b"z" * 300)], [])


def test_malformed_publishes_are_refused() -> None:
    with pytest.raises(MalformedPacket):
        Reader().feed(b"\x36\x05\x00\x01t\x00\x01")  # QoS 3
    with pytest.raises(MalformedPacket):
        Reader().feed(b"\x30\x04\x00\x09ab")  # the topic runs past the packet
    with pytest.raises(MalformedPacket):
        Reader().feed(b"\x30\x05\x00\x01t\x09x")  # the properties run past the packet
    with pytest.raises(MalformedPacket):
        Reader(max_packet_bytes=1000).feed(b"\x30" + remaining_length(5000))
    with pytest.raises(MalformedPacket):
        Reader().feed(b"\x30\xff\xff\xff\xff\x01")


# --- acknowledgements and the QoS 2 flow --------------------------------------------------------


def test_pubacks_of_a_batch_are_one_write_of_short_form_packets() -> None:
    data = encode_pubacks([1, 300, 65_535])
    assert data == b"\x40\x02\x00\x01" + b"\x40\x02\x01\x2c" + b"\x40\x02\xff\xff"
    _, others = Reader().feed(data)
    assert [decode_ack(body) for first, body in others if first >> 4 == PUBACK] == [
        (1, 0),
        (300, 0),
        (65_535, 0),
    ]
    assert encode_pubacks([]) == b""


def test_qos2_flow_packets() -> None:
    """PUBLISH (QoS 2) -> PUBREC -> PUBREL -> PUBCOMP, with each packet's mandatory flags
    (MQTT 5.0 section 4.3.3 and table 2-2: PUBREL's are 0010)."""
    publish = encode_publish(TOPIC, b"p", 2, packet_id=77)
    [(first, topic, packet_id, payload)] = Reader().feed(publish)[0]
    assert first >> 1 & 3 == 2 and (topic, packet_id, payload) == (TOPIC, 77, b"p")
    stream = encode_pubrec(77) + encode_pubrel(77) + encode_pubcomp(77)
    _, others = Reader().feed(stream)
    assert [first for first, _ in others] == [PUBREC << 4, PUBREL << 4 | 0x02, PUBCOMP << 4]
    assert [decode_ack(body) for _, body in others] == [(77, 0)] * 3
    # A broker's PUBREL may carry a reason code and properties (section 3.6.2).
    assert decode_ack(b"\x00\x4d\x92\x00", "PUBREL") == (77, 0x92)


# --- DISCONNECT ----------------------------------------------------------------------------------


def test_disconnect_both_ways() -> None:
    assert encode_disconnect() == b"\xe0\x00"  # reason 0: normal, the session is kept
    assert decode_disconnect(b"") == (0, "")
    properties = b"\x1f" + encode_string("another client took over")
    body = b"\x8e" + remaining_length(len(properties)) + properties
    assert decode_disconnect(body) == (0x8E, "another client took over")
    assert decode_disconnect(b"\x8b") == (0x8B, "")
    assert reason_name(0x8E) == "session taken over (0x8E)"


# --- the outbound session state (cityneuron.mqtt5outbox) --------------------------------------------


def test_outbox_window_dup_and_packet_ids() -> None:
    outbox = Outbox()
    outbox.reconnected(2)
    for n in range(3):
        outbox.add("a/b", b"%d" % n)
    first = outbox.due()
    assert [Reader().feed(p)[0][0][2:] for p in first] == [(1, b"0"), (2, b"1")]  # window of 2
    assert outbox.due() == []
    outbox.acked([1])
    [third] = outbox.due()
    assert Reader().feed(third)[0][0][2:] == (3, b"2")
    # A SUBSCRIBE id never collides with a message still in flight.
    assert outbox.control_id() == 4
    outbox.reconnected(10)
    again = outbox.due()
    assert [(p[0] & 0x08, Reader().feed(p)[0][0][2]) for p in again] == [(0x08, 2), (0x08, 3)]
    outbox.acked([2, 3])
    assert len(outbox) == 0


def test_outbox_packet_ids_wrap_and_run_out() -> None:
    outbox = Outbox()
    outbox.reconnected(65_535)
    for _ in range(65_534):
        outbox.add("t", b"")
    outbox.acked([5])
    assert outbox.control_id() == 65_535
    assert outbox.control_id() == 5  # wrapped past the ids in use
    with pytest.raises(MqttError):
        outbox.add("t", b"")
