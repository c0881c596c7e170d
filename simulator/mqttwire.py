"""MQTT 3.1.1 packets for publishers: pure encoders, decoders and an incremental parser.

Only what a publishing client needs (OASIS MQTT 3.1.1, 2014): CONNECT/CONNACK, PUBLISH at
QoS 0 and 1, PUBACK, SUBSCRIBE/SUBACK, PINGREQ/PINGRESP and DISCONNECT, and the receiving side
of QoS 2 (PUBREC, PUBREL, PUBCOMP) for a broker that sends it although we never ask for it.
The fixed header, strings and the incremental parser are shared with ingest's MQTT 5 client
(cityneuron.mqttwire) and re-exported here. Socket handling lives in ``simulator.wireclient``;
nothing here does I/O, so every function can be tested alone.
"""

from __future__ import annotations

from dataclasses import dataclass

from cityneuron.mqttwire import (
    CONNACK,
    CONNECT,
    DISCONNECT,
    MAX_PACKET_ID,
    MAX_REMAINING_LENGTH,
    PINGREQ,
    PINGRESP,
    PUBACK,
    PUBCOMP,
    PUBLISH,
    PUBREC,
    PUBREL,
    SUBACK,
    SUBSCRIBE,
    MalformedPacket,
    PacketParser,
    decode_remaining_length,
    remaining_length,
)
from cityneuron.mqttwire import U16 as _U16
from cityneuron.mqttwire import encode_string as _string
from simulator.errors import PublishError

__all__ = [
    "CONNACK",
    "CONNACK_REFUSALS",
    "CONNECT",
    "DISCONNECT",
    "MAX_PACKET_ID",
    "MAX_REMAINING_LENGTH",
    "MAX_SUBSCRIBE_QOS",
    "PINGREQ",
    "PINGRESP",
    "PUBACK",
    "PUBCOMP",
    "PUBLISH",
    "PUBREC",
    "PUBREL",
    "SUBACK",
    "SUBACK_FAILURE",
    "SUBSCRIBE",
    "ConnectRefused",
    "InboundPublish",
    "MalformedPacket",
    "PacketParser",
    "Will",
    "check_connack",
    "decode_connack",
    "decode_packet_id",
    "decode_publish",
    "decode_remaining_length",
    "decode_suback",
    "encode_connect",
    "encode_disconnect",
    "encode_pingreq",
    "encode_puback",
    "encode_pubcomp",
    "encode_publish",
    "encode_pubrec",
    "encode_subscribe",
    "remaining_length",
    "with_dup",
]

# A SUBACK return code for a refused subscription (section 3.9.3).
SUBACK_FAILURE = 0x80
# CONNACK return codes 1-5 (section 3.2.2.3, table 3.1).
CONNACK_REFUSALS = {
    1: "unacceptable protocol version",
    2: "client identifier rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorized",
}

_PROTOCOL = b"\x00\x04MQTT\x04"  # protocol name and level 4 = 3.1.1 (section 3.1.2.1-2)
_PINGREQ = b"\xc0\x00"
_DISCONNECT = b"\xe0\x00"
# Fixed-header flags of the packets that have mandatory ones (section 2.2.2).
_SUBSCRIBE_HEADER = 0x82
_PUBACK_HEADER = 0x40
_PUBREC_HEADER = 0x50
_PUBCOMP_HEADER = 0x70
# The highest QoS this client subscribes with: it publishes at most QoS 1 and acknowledges
# QoS 1 deliveries with PUBACK, so it asks for nothing more.
MAX_SUBSCRIBE_QOS = 1


class ConnectRefused(PublishError):
    """The broker answered CONNECT with a non-zero return code."""

    def __init__(self, return_code: int, context: str = "") -> None:
        self.return_code = return_code
        reason = CONNACK_REFUSALS.get(return_code, f"unknown return code {return_code}")
        super().__init__(f"{context}broker refused the connection: {reason} (CONNACK {return_code})")


@dataclass(frozen=True, slots=True)
class Will:
    """The message the broker publishes for a client whose connection dies without DISCONNECT."""

    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False


@dataclass(frozen=True, slots=True)
class InboundPublish:
    """A PUBLISH the broker sent us (``packet_id`` is 0 at QoS 0)."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    dup: bool
    packet_id: int


def encode_connect(
    client_id: str,
    keepalive_s: int,
    *,
    clean_session: bool = True,
    username: str | None = None,
    password: str | None = None,
    will: Will | None = None,
) -> bytes:
    """CONNECT (section 3.1); a password without a user name is not allowed by 3.1.1."""
    if password is not None and username is None:
        raise ValueError("MQTT 3.1.1 allows a password only together with a user name")
    flags = 0x02 if clean_session else 0
    payload = [_string(client_id)]
    if will is not None:
        flags |= 0x04 | will.qos << 3 | (0x20 if will.retain else 0)
        payload += [_string(will.topic), _string(will.payload)]
    if username is not None:
        flags |= 0x80
        payload.append(_string(username))
    if password is not None:
        flags |= 0x40
        payload.append(_string(password))
    body = _PROTOCOL + bytes((flags,)) + _U16.pack(keepalive_s) + b"".join(payload)
    return b"\x10" + remaining_length(len(body)) + body


def encode_publish(
    topic: bytes, payload: bytes, qos: int = 0, *, retain: bool = False, packet_id: int = 0, dup: bool = False
) -> bytes:
    """PUBLISH (section 3.3) at QoS 0 or 1; ``topic`` already UTF-8 encoded."""
    if len(topic) > 0xFFFF:
        raise ValueError(f"topic of {len(topic)} bytes exceeds 65,535")
    header = 0x30 | qos << 1 | (0x08 if dup else 0) | (0x01 if retain else 0)
    variable = _U16.pack(len(topic)) + topic
    if qos:
        variable += _U16.pack(packet_id)
    return bytes((header,)) + remaining_length(len(variable) + len(payload)) + variable + payload


def with_dup(packet: bytes) -> bytes:
    """The same PUBLISH with its DUP flag set: a re-delivery (section 3.3.1.1)."""
    return bytes((packet[0] | 0x08,)) + packet[1:]


def encode_puback(packet_id: int) -> bytes:
    """PUBACK (section 3.4)."""
    return bytes((_PUBACK_HEADER, 2)) + _U16.pack(packet_id)


def encode_pubrec(packet_id: int) -> bytes:
    """PUBREC (section 3.5): the first answer to a QoS 2 PUBLISH."""
    return bytes((_PUBREC_HEADER, 2)) + _U16.pack(packet_id)


def encode_pubcomp(packet_id: int) -> bytes:
    """PUBCOMP (section 3.7): the answer to PUBREL, ending a QoS 2 delivery."""
    return bytes((_PUBCOMP_HEADER, 2)) + _U16.pack(packet_id)


def encode_subscribe(packet_id: int, topics: list[tuple[str, int]]) -> bytes:
    """SUBSCRIBE (section 3.8) for ``(filter, maximum QoS)`` pairs, QoS at most ``MAX_SUBSCRIBE_QOS``."""
    if not topics:
        raise ValueError("SUBSCRIBE needs at least one topic filter")
    for topic, qos in topics:
        if qos not in range(MAX_SUBSCRIBE_QOS + 1):
            raise ValueError(f"subscription to {topic!r} at QoS {qos}: this client subscribes at QoS 0 or 1")
    body = _U16.pack(packet_id) + b"".join(_string(topic) + bytes((qos,)) for topic, qos in topics)
    return bytes((_SUBSCRIBE_HEADER,)) + remaining_length(len(body)) + body


def encode_pingreq() -> bytes:
    """PINGREQ (section 3.12)."""
    return _PINGREQ


def encode_disconnect() -> bytes:
    """DISCONNECT (section 3.14): the broker then discards the will."""
    return _DISCONNECT


def decode_connack(body: bytes) -> tuple[bool, int]:
    """(session present, return code) of a CONNACK body (section 3.2)."""
    if len(body) != 2:
        raise MalformedPacket(f"CONNACK with {len(body)} bytes instead of 2")
    return bool(body[0] & 0x01), body[1]


def check_connack(body: bytes) -> bool:
    """The session-present flag of an accepting CONNACK; raises ConnectRefused otherwise."""
    session_present, code = decode_connack(body)
    if code:
        raise ConnectRefused(code)
    return session_present


def decode_packet_id(body: bytes, what: str = "PUBACK") -> int:
    """The packet id of a PUBACK (section 3.4), or of a PUBREL (section 3.6)."""
    if len(body) != 2:
        raise MalformedPacket(f"{what} with {len(body)} bytes instead of 2")
    return int(_U16.unpack(body)[0])


def decode_suback(body: bytes) -> tuple[int, list[int]]:
    """(packet id, granted QoS or 0x80 per filter) of a SUBACK (section 3.9)."""
    if len(body) < 3:
        raise MalformedPacket("SUBACK without return codes")
    return int(_U16.unpack_from(body)[0]), list(body[2:])


def decode_publish(first_byte: int, body: bytes) -> InboundPublish:
    """A PUBLISH from its fixed header's first byte and its body (section 3.3)."""
    qos = first_byte >> 1 & 0x03
    if qos == 3:
        raise MalformedPacket("PUBLISH with QoS 3")
    if len(body) < 2:
        raise MalformedPacket("PUBLISH without a topic")
    end = 2 + _U16.unpack_from(body)[0]
    packet_id = 0
    if qos:
        if len(body) < end + 2:
            raise MalformedPacket("PUBLISH shorter than its topic and packet id")
        packet_id = _U16.unpack_from(body, end)[0]
        payload_at = end + 2
    else:
        if len(body) < end:
            raise MalformedPacket("PUBLISH shorter than its topic")
        payload_at = end
    try:
        topic = body[2:end].decode()
    except UnicodeDecodeError as exc:
        raise MalformedPacket("PUBLISH topic is not UTF-8") from exc
    return InboundPublish(
        topic, body[payload_at:], qos, bool(first_byte & 0x01), bool(first_byte & 0x08), packet_id
    )
