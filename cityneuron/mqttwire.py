"""What MQTT 3.1.1 and MQTT 5 packets have in common: pure encoders, decoders and a parser.

The fixed header (packet type, flags, remaining length) and the length-prefixed strings are the
same in both versions (OASIS MQTT 3.1.1 section 2, MQTT 5.0 section 2), so the simulator's 3.1.1
publisher (simulator.mqttwire) and ingest's MQTT 5 subscriber (cityneuron.mqtt5wire) share them.
Nothing here does I/O.
"""

from __future__ import annotations

import struct

from cityneuron.errors import MqttError

# Control packet types (section 2.2.1), as the high nibble of the fixed header's first byte.
CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP, SUBSCRIBE, SUBACK = 1, 2, 3, 4, 5, 6, 7, 8, 9
UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT = 10, 11, 12, 13, 14
# The remaining length is at most four bytes of 7 bits (section 2.2.3).
MAX_REMAINING_LENGTH = 268_435_455
MAX_PACKET_ID = 65_535

U16 = struct.Struct("!H")
U32 = struct.Struct("!I")


class MalformedPacket(MqttError):
    """The broker sent bytes that are not a valid MQTT packet."""


def remaining_length(n: int) -> bytes:
    """The variable-length encoding of a packet's remaining length (section 2.2.3); MQTT 5 uses
    the same "variable byte integer" for property lengths (MQTT 5.0 section 1.5.5)."""
    if n < 128:
        return bytes((n,))
    if n < 16_384:
        return bytes((n & 0x7F | 0x80, n >> 7))
    if not 0 <= n <= MAX_REMAINING_LENGTH:
        raise ValueError(f"remaining length {n} outside 0..{MAX_REMAINING_LENGTH}")
    out = bytearray()
    while True:
        digit, n = n & 0x7F, n >> 7
        out.append(digit | 0x80 if n else digit)
        if not n:
            return bytes(out)


def decode_remaining_length(data: bytes | bytearray, start: int) -> tuple[int, int] | None:
    """(length, index after it) read from ``data[start:]``; None while bytes are missing."""
    value = 0
    for i in range(4):
        if start + i >= len(data):
            return None
        byte = data[start + i]
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            return value, start + i + 1
    raise MalformedPacket("remaining length longer than four bytes")


def encode_string(text: str | bytes) -> bytes:
    """A length-prefixed UTF-8 string or binary field (section 1.5.3)."""
    data = text.encode() if isinstance(text, str) else text
    if len(data) > 0xFFFF:
        raise ValueError(f"MQTT string of {len(data)} bytes exceeds 65,535")
    return U16.pack(len(data)) + data


def packet(first_byte: int, body: bytes) -> bytes:
    """A whole packet: fixed header, then ``body``."""
    return bytes((first_byte,)) + remaining_length(len(body)) + body


def frames(buffer: bytes | bytearray, max_packet_bytes: int) -> tuple[list[tuple[int, int, int]], int]:
    """The complete packets at the start of ``buffer`` as (first byte of the fixed header, body
    start, body end), and where the incomplete rest begins."""
    found: list[tuple[int, int, int]] = []
    at = 0
    size = len(buffer)
    while size - at >= 2:
        length = buffer[at + 1]
        if length < 128:
            body_at = at + 2
        else:
            decoded = decode_remaining_length(buffer, at + 1)
            if decoded is None:
                break
            length, body_at = decoded
            if length > max_packet_bytes:
                raise MalformedPacket(f"packet of {length} bytes exceeds {max_packet_bytes}")
        end = body_at + length
        if end > size:
            break
        found.append((buffer[at], body_at, end))
        at = end
    return found, at


class PacketParser:
    """Cuts a byte stream into packets, whatever the chunks it arrives in."""

    def __init__(self, max_packet_bytes: int = MAX_REMAINING_LENGTH) -> None:
        self._buffer = bytearray()
        self._max_packet_bytes = max_packet_bytes

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        """The complete packets now available, as (first byte of the fixed header, body)."""
        buffer = self._buffer
        buffer += data
        found, at = frames(buffer, self._max_packet_bytes)
        packets = [(first, bytes(buffer[body:end])) for first, body, end in found]
        if at:
            del buffer[:at]
        return packets
