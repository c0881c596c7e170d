"""The outbound side of an MQTT 5 session: packet ids, and QoS 1 messages until their PUBACK.

No I/O and no lock of its own (``cityneuron.mqtt5client`` holds its lock around every call), so
the rules are easy to see: a message stays until acknowledged; after a reconnect every one still
here goes out again, with DUP if it was written before (MQTT 5.0 section 4.4); and no more than
the server's Receive Maximum are written and unacknowledged at any time (section 4.9).
"""

from __future__ import annotations

from collections import deque

from cityneuron.errors import MqttError
from cityneuron.mqtt5wire import encode_publish, with_dup
from cityneuron.mqttwire import MAX_PACKET_ID

# The server's receive maximum when its CONNACK names none (section 3.2.2.3.3).
DEFAULT_RECEIVE_MAXIMUM = 65_535


class Outbox:
    def __init__(self) -> None:
        # Every message until its PUBACK (in publishing order), those still to be written on this
        # connection, those written on it and unacknowledged, those ever written (DUP on resend).
        self._messages: dict[int, bytes] = {}
        self._queued: deque[int] = deque()
        self._in_window: set[int] = set()
        self._ever_written: set[int] = set()
        # SUBSCRIBE/UNSUBSCRIBE ids waiting for their answer: the same id space.
        self._control_ids: set[int] = set()
        self._last_id = 0
        self._window = DEFAULT_RECEIVE_MAXIMUM

    def __len__(self) -> int:
        return len(self._messages)

    def add(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        packet_id = self._next_packet_id()
        self._messages[packet_id] = encode_publish(
            topic.encode(), payload, 1, packet_id=packet_id, retain=retain
        )
        self._queued.append(packet_id)

    def control_id(self) -> int:
        """A packet id for SUBSCRIBE or UNSUBSCRIBE, in use until ``control_done``."""
        packet_id = self._next_packet_id()
        self._control_ids.add(packet_id)
        return packet_id

    def control_done(self, packet_id: int) -> None:
        self._control_ids.discard(packet_id)

    def reconnected(self, window: int) -> None:
        """A new connection, allowing ``window`` unacknowledged messages: everything still here
        is to be written again; unanswered SUBSCRIBEs died with the old connection."""
        self._window = max(1, window)
        self._queued = deque(self._messages)
        self._in_window.clear()
        self._control_ids.clear()

    def due(self) -> list[bytes]:
        """The PUBLISH packets to write now, in order, as far as the window allows."""
        out = []
        while self._queued and len(self._in_window) < self._window:
            packet_id = self._queued.popleft()
            publish = self._messages.get(packet_id)
            if publish is None:
                continue
            out.append(with_dup(publish) if packet_id in self._ever_written else publish)
            self._ever_written.add(packet_id)
            self._in_window.add(packet_id)
        return out

    def acked(self, packet_ids: list[int]) -> None:
        for packet_id in packet_ids:
            self._messages.pop(packet_id, None)
            self._in_window.discard(packet_id)
            self._ever_written.discard(packet_id)

    def _next_packet_id(self) -> int:
        """1..65535, wrapping, skipping ids in use."""
        if len(self._messages) + len(self._control_ids) >= MAX_PACKET_ID:
            raise MqttError(f"all {MAX_PACKET_ID} packet ids are in use")
        packet_id = self._last_id
        while True:
            packet_id = packet_id % MAX_PACKET_ID + 1
            if packet_id not in self._messages and packet_id not in self._control_ids:
                self._last_id = packet_id
                return packet_id
