"""MQTT 5 packets for a subscribing service: pure encoders, decoders and a bulk reader.

What ingest needs (OASIS MQTT 5.0, 2019): CONNECT with session expiry and receive maximum,
CONNACK with its reason code and properties, SUBSCRIBE with subscription options, SUBACK,
UNSUBSCRIBE/UNSUBACK, PUBLISH in both directions, the QoS 1 and QoS 2 acknowledgements,
PINGREQ/PINGRESP and DISCONNECT in both directions. Socket handling lives in
``cityneuron.mqtt5client``; nothing here does I/O.

:class:`Reader` is the hot path: it cuts every complete packet out of one large read and
returns each PUBLISH as a plain tuple, skipping its properties by their length alone. Topic
aliases are not resolved: a client that sends no Topic Alias Maximum in CONNECT gets none
(MQTT 5.0 section 3.1.2.11.8), and this one never sends it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cityneuron.mqttwire import (
    MAX_REMAINING_LENGTH,
    U16,
    U32,
    MalformedPacket,
    decode_remaining_length,
    encode_string,
    frames,
    packet,
    remaining_length,
)

# Property identifiers (section 2.2.2.2) this client writes or reads.
SESSION_EXPIRY_INTERVAL = 0x11
ASSIGNED_CLIENT_IDENTIFIER = 0x12
SERVER_KEEP_ALIVE = 0x13
REASON_STRING = 0x1F
RECEIVE_MAXIMUM = 0x21
MAXIMUM_QOS = 0x24
USER_PROPERTY = 0x26
# Every property's type, to read or skip it: byte, two/four byte integer, variable byte
# integer, UTF-8 string, binary data, string pair.
_PROPERTY_TYPES = {
    0x01: "byte", 0x02: "u32", 0x03: "str", 0x08: "str", 0x09: "bin", 0x0B: "varint",
    0x11: "u32", 0x12: "str", 0x13: "u16", 0x15: "str", 0x16: "bin", 0x17: "byte",
    0x18: "u32", 0x19: "byte", 0x1A: "str", 0x1C: "str", 0x1F: "str", 0x21: "u16",
    0x22: "u16", 0x23: "u16", 0x24: "byte", 0x25: "byte", 0x26: "pair", 0x27: "u32",
    0x28: "byte", 0x29: "byte", 0x2A: "byte",
}  # fmt: skip

# Reason codes (section 2.4) a broker may send us, for log lines a person can act on.
REASON_NAMES = {
    0x00: "success",
    0x01: "granted QoS 1",
    0x02: "granted QoS 2",
    0x04: "disconnect with will message",
    0x10: "no matching subscribers",
    0x11: "no subscription existed",
    0x80: "unspecified error",
    0x81: "malformed packet",
    0x82: "protocol error",
    0x83: "implementation specific error",
    0x84: "unsupported protocol version",
    0x85: "client identifier not valid",
    0x86: "bad user name or password",
    0x87: "not authorized",
    0x88: "server unavailable",
    0x89: "server busy",
    0x8A: "banned",
    0x8B: "server shutting down",
    0x8C: "bad authentication method",
    0x8D: "keep alive timeout",
    0x8E: "session taken over",
    0x8F: "topic filter invalid",
    0x90: "topic name invalid",
    0x91: "packet identifier in use",
    0x92: "packet identifier not found",
    0x93: "receive maximum exceeded",
    0x94: "topic alias invalid",
    0x95: "packet too large",
    0x96: "message rate too high",
    0x97: "quota exceeded",
    0x98: "administrative action",
    0x99: "payload format invalid",
    0x9A: "retain not supported",
    0x9B: "QoS not supported",
    0x9C: "use another server",
    0x9D: "server moved",
    0x9E: "shared subscriptions not supported",
    0x9F: "connection rate exceeded",
    0xA0: "maximum connect time",
    0xA1: "subscription identifiers not supported",
    0xA2: "wildcard subscriptions not supported",
}
# Retain handling of a subscription (section 3.8.3.1).
RETAIN_SEND_ON_SUBSCRIBE, RETAIN_SEND_IF_NEW_SUB, RETAIN_DO_NOT_SEND = 0, 1, 2

_CONNECT_HEADER = b"\x00\x04MQTT\x05"  # protocol name and version 5 (section 3.1.2.1-2)
_NO_PROPERTIES = b"\x00"
_PINGREQ = b"\xc0\x00"
_DISCONNECT_NORMAL = b"\xe0\x00"  # remaining length 0: reason 0x00, normal disconnection


def reason_name(code: int) -> str:
    """``"bad user name or password (0x86)"``."""
    return f"{REASON_NAMES.get(code, 'unknown reason')} (0x{code:02X})"


def is_failure(code: int) -> bool:
    """Reason codes from 0x80 up are failures (section 2.4)."""
    return code >= 0x80


# --- properties --------------------------------------------------------------------------------


def encode_properties(properties: dict[int, int]) -> bytes:
    """The property block for integer properties (all this client ever sends)."""
    out = bytearray()
    for identifier, value in properties.items():
        kind = _PROPERTY_TYPES[identifier]
        out.append(identifier)
        if kind == "byte":
            out.append(value)
        elif kind == "u16":
            out += U16.pack(value)
        elif kind == "u32":
            out += U32.pack(value)
        else:
            raise ValueError(f"property 0x{identifier:02X} is not an integer property")
    return remaining_length(len(out)) + bytes(out)


def decode_properties(body: bytes, at: int) -> tuple[dict[int, object], int]:
    """(properties, index after them) from ``body[at:]``. Repeatable ones (user properties,
    subscription identifiers) keep the last value: this client reads only single ones."""
    decoded = decode_remaining_length(body, at)
    if decoded is None:
        raise MalformedPacket("property length cut short")
    length, at = decoded
    end = at + length
    if end > len(body):
        raise MalformedPacket("properties longer than their packet")
    properties: dict[int, object] = {}
    while at < end:
        identifier = body[at]
        kind = _PROPERTY_TYPES.get(identifier)
        at += 1
        value: object
        if kind == "byte":
            value, at = body[at], at + 1
        elif kind == "u16":
            value, at = U16.unpack_from(body, at)[0], at + 2
        elif kind == "u32":
            value, at = U32.unpack_from(body, at)[0], at + 4
        elif kind == "varint":
            varint = decode_remaining_length(body, at)
            if varint is None:
                raise MalformedPacket("property value cut short")
            value, at = varint
        elif kind in ("str", "bin"):
            value, at = _read_string(body, at, end, kind == "str")
        elif kind == "pair":
            name, at = _read_string(body, at, end, True)
            text, at = _read_string(body, at, end, True)
            value = (name, text)
        else:
            raise MalformedPacket(f"unknown property 0x{identifier:02X}")
        properties[identifier] = value
    if at != end:
        raise MalformedPacket("property value runs past the property block")
    return properties, end


def _read_string(body: bytes, at: int, end: int, text: bool) -> tuple[str | bytes, int]:
    if at + 2 > end:
        raise MalformedPacket("string length cut short")
    stop = at + 2 + U16.unpack_from(body, at)[0]
    if stop > end:
        raise MalformedPacket("string runs past its packet")
    data = body[at + 2 : stop]
    if not text:
        return data, stop
    try:
        return data.decode(), stop
    except UnicodeDecodeError as exc:
        raise MalformedPacket("string is not UTF-8") from exc


# --- encoders ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Subscription:
    """A topic filter with its subscription options (section 3.8.3.1)."""

    topic_filter: str
    qos: int = 1
    retain_handling: int = RETAIN_SEND_ON_SUBSCRIBE
    no_local: bool = False
    retain_as_published: bool = False

    def options(self) -> int:
        if self.qos not in (0, 1, 2) or self.retain_handling not in (0, 1, 2):
            raise ValueError(f"subscription to {self.topic_filter!r}: bad QoS or retain handling")
        return (
            self.qos
            | (0x04 if self.no_local else 0)
            | (0x08 if self.retain_as_published else 0)
            | self.retain_handling << 4
        )


def encode_connect(
    client_id: str,
    keepalive_s: int,
    *,
    clean_start: bool,
    session_expiry_s: int = 0,
    receive_maximum: int = 65_535,
    username: str | None = None,
    password: str | None = None,
) -> bytes:
    """CONNECT (section 3.1); unlike 3.1.1, MQTT 5 allows a password without a user name."""
    flags = 0x02 if clean_start else 0
    payload = [encode_string(client_id)]
    if username is not None:
        flags |= 0x80
        payload.append(encode_string(username))
    if password is not None:
        flags |= 0x40
        payload.append(encode_string(password))
    properties: dict[int, int] = {}
    if session_expiry_s:
        properties[SESSION_EXPIRY_INTERVAL] = session_expiry_s
    if receive_maximum != 65_535:  # the default when absent (section 3.1.2.11.3)
        properties[RECEIVE_MAXIMUM] = receive_maximum
    body = (
        _CONNECT_HEADER
        + bytes((flags,))
        + U16.pack(keepalive_s)
        + encode_properties(properties)
        + b"".join(payload)
    )
    return packet(0x10, body)


def encode_subscribe(packet_id: int, subscriptions: list[Subscription]) -> bytes:
    """SUBSCRIBE (section 3.8) with each filter's options."""
    if not subscriptions:
        raise ValueError("SUBSCRIBE needs at least one topic filter")
    body = U16.pack(packet_id) + _NO_PROPERTIES
    body += b"".join(encode_string(s.topic_filter) + bytes((s.options(),)) for s in subscriptions)
    return packet(0x82, body)


def encode_unsubscribe(packet_id: int, topic_filters: list[str]) -> bytes:
    """UNSUBSCRIBE (section 3.10)."""
    if not topic_filters:
        raise ValueError("UNSUBSCRIBE needs at least one topic filter")
    body = U16.pack(packet_id) + _NO_PROPERTIES + b"".join(map(encode_string, topic_filters))
    return packet(0xA2, body)


def encode_publish(
    topic: bytes, payload: bytes, qos: int = 0, *, packet_id: int = 0, retain: bool = False, dup: bool = False
) -> bytes:
    """PUBLISH (section 3.3) without properties; ``topic`` already UTF-8 encoded."""
    if qos not in (0, 1, 2):
        raise ValueError(f"QoS {qos}")
    if len(topic) > 0xFFFF:
        raise ValueError(f"topic of {len(topic)} bytes exceeds 65,535")
    header = 0x30 | qos << 1 | (0x08 if dup else 0) | (0x01 if retain else 0)
    variable = U16.pack(len(topic)) + topic + (U16.pack(packet_id) if qos else b"") + _NO_PROPERTIES
    return bytes((header,)) + remaining_length(len(variable) + len(payload)) + variable + payload


def with_dup(publish: bytes) -> bytes:
    """The same PUBLISH with its DUP flag set: a re-delivery (section 3.3.1.1)."""
    return bytes((publish[0] | 0x08,)) + publish[1:]


def encode_pubacks(packet_ids: list[int]) -> bytes:
    """One PUBACK per id, concatenated for one write; remaining length 2 means reason 0x00,
    success, without properties (section 3.4.2.1)."""
    return b"".join([b"\x40\x02" + U16.pack(packet_id) for packet_id in packet_ids])


def encode_pubrec(packet_id: int) -> bytes:
    """PUBREC (section 3.5): a QoS 2 message is ours; the broker answers PUBREL."""
    return b"\x50\x02" + U16.pack(packet_id)


def encode_pubrel(packet_id: int) -> bytes:
    """PUBREL (section 3.6), fixed-header flags 0010."""
    return b"\x62\x02" + U16.pack(packet_id)


def encode_pubcomp(packet_id: int) -> bytes:
    """PUBCOMP (section 3.7): the end of a QoS 2 delivery."""
    return b"\x70\x02" + U16.pack(packet_id)


def encode_pingreq() -> bytes:
    return _PINGREQ


def encode_disconnect(reason_code: int = 0) -> bytes:
    """DISCONNECT (section 3.14); reason 0x00 ends the connection normally, keeping the session."""
    return _DISCONNECT_NORMAL if reason_code == 0 else packet(0xE0, bytes((reason_code,)) + _NO_PROPERTIES)


# --- decoders ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConnAck:
    """A CONNACK (section 3.2): the session flag, the reason code and what the server asks of us."""

    session_present: bool
    reason_code: int
    properties: dict[int, object] = field(default_factory=dict)

    @property
    def reason_string(self) -> str:
        return str(self.properties.get(REASON_STRING, ""))


def decode_connack(body: bytes) -> ConnAck:
    if len(body) < 2:
        raise MalformedPacket(f"CONNACK with {len(body)} bytes")
    properties = decode_properties(body, 2)[0] if len(body) > 2 else {}
    return ConnAck(bool(body[0] & 0x01), body[1], properties)


def decode_ack(body: bytes, what: str = "PUBACK") -> tuple[int, int]:
    """(packet id, reason code) of a PUBACK, PUBREC, PUBREL or PUBCOMP (sections 3.4-3.7)."""
    if len(body) < 2:
        raise MalformedPacket(f"{what} with {len(body)} bytes")
    return int(U16.unpack_from(body)[0]), body[2] if len(body) > 2 else 0


def decode_suback(body: bytes) -> tuple[int, list[int]]:
    """(packet id, reason code per filter) of a SUBACK (section 3.9) or UNSUBACK (3.11)."""
    if len(body) < 3:
        raise MalformedPacket("SUBACK without reason codes")
    at = decode_properties(body, 2)[1]
    return int(U16.unpack_from(body)[0]), list(body[at:])


def decode_disconnect(body: bytes) -> tuple[int, str]:
    """(reason code, reason string) of a server's DISCONNECT (section 3.14)."""
    if not body:
        return 0, ""
    properties = decode_properties(body, 1)[0] if len(body) > 1 else {}
    return body[0], str(properties.get(REASON_STRING, ""))


# (first byte of the fixed header, topic as sent, packet id or 0, payload); QoS is bits 1-2 of
# the first byte. A tuple, not an object: the reader makes one per message.
RawPublish = tuple[int, bytes, int, bytes]


class Reader:
    """Cuts a byte stream into packets: PUBLISHes as :data:`RawPublish`, the rest as
    (first byte, body). Packets cut by the end of a read wait for the next one."""

    def __init__(self, max_packet_bytes: int = MAX_REMAINING_LENGTH) -> None:
        self._rest = b""
        self._max_packet_bytes = max_packet_bytes

    def feed(self, data: bytes) -> tuple[list[RawPublish], list[tuple[int, bytes]]]:
        buffer = self._rest + data if self._rest else data
        publishes: list[RawPublish] = []
        others: list[tuple[int, bytes]] = []
        found, at = frames(buffer, self._max_packet_bytes)
        for first, body, end in found:
            if first >> 4 == 3:
                publishes.append(_publish(buffer, first, body, end))
            else:
                others.append((first, buffer[body:end]))
        size = len(buffer)
        self._rest = buffer[at:] if at < size else b""
        return publishes, others


def _publish(buffer: bytes, first: int, at: int, end: int) -> RawPublish:
    """One PUBLISH from ``buffer[at:end]`` (its body), properties skipped (section 3.3.2)."""
    if end - at < 3:
        raise MalformedPacket("PUBLISH shorter than its topic and properties")
    topic_end = at + 2 + (buffer[at] << 8 | buffer[at + 1])
    qos = first >> 1 & 0x03
    if qos:
        if qos == 3:
            raise MalformedPacket("PUBLISH with QoS 3")
        packet_id = buffer[topic_end] << 8 | buffer[topic_end + 1] if topic_end + 2 <= end else -1
        properties = topic_end + 2
    else:
        packet_id = 0
        properties = topic_end
    if properties >= end or packet_id < 0:
        raise MalformedPacket("PUBLISH shorter than its topic, packet id and properties")
    skip = buffer[properties]
    if skip < 128:
        payload = properties + 1 + skip
    else:
        decoded = decode_remaining_length(buffer, properties)
        if decoded is None:
            raise MalformedPacket("PUBLISH property length cut short")
        payload = decoded[1] + decoded[0]
    if payload > end:
        raise MalformedPacket("PUBLISH properties run past the packet")
    return first, buffer[at + 2 : topic_end], packet_id, buffer[payload:end]
