"""A paho client whose receive path reads the socket in large chunks.

paho reads each packet with several ``recv`` calls (the command byte, then the remaining length
one byte at a time, then the body) and runs one ``select`` per packet: about six system calls
per PUBLISH. Here the socket is wrapped in a read buffer that fills with up to 256 kB per
``recv``; it reports its buffered bytes through ``pending()``, which paho's loop already honours
for TLS sockets (no waiting in ``select`` while bytes are buffered), and one loop pass reads every
complete packet the buffer holds (bounded, so acks and keep-alives still go out in between).

Acks of a committed batch go out as one queued write (:meth:`BufferedClient.ack_many`): paho
queues each ``ack()`` as its own packet, waking its loop and writing the socket once per message.

Everything else is paho's own: MQTT 5, shared subscriptions, manual acks, persistent sessions,
reconnects and TLS (the buffer sits above the TLS socket).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import MQTTErrorCode

_RECV_BYTES = 256 * 1024
# A QoS 1 PUBACK without reason code or properties (MQTT 5.0 section 3.4.2.1: remaining length 2
# means "Success"), as paho's _send_command_with_mid packs it.
_PUBACK = struct.Struct("!BBH")
_PUBACK_TYPE = 0x40
# Packets one loop pass may read from the buffer before paho writes and checks keep-alive again.
_MAX_PACKETS_PER_PASS = 500


class _BufferedSocket:
    """A socket (plain or TLS) with a read buffer; everything but reading goes to the socket."""

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self._buffer = b""
        self._at = 0  # read position in _buffer: slicing bytes copies once, no buffer shuffling

    def recv(self, bufsize: int) -> bytes:
        if self._at >= len(self._buffer):
            data: bytes = self._sock.recv(max(bufsize, _RECV_BYTES))
            if len(data) <= bufsize:
                return data
            self._buffer, self._at = data, 0
        chunk = self._buffer[self._at : self._at + bufsize]
        self._at += len(chunk)
        return chunk

    def pending(self) -> int:
        inner = getattr(self._sock, "pending", None)
        return len(self._buffer) - self._at + (inner() if inner is not None else 0)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class BufferedClient(paho.Client):
    """paho.Client reading through :class:`_BufferedSocket` (TCP and TLS transports)."""

    def _create_socket(self) -> Any:
        sock = super()._create_socket()
        if self._transport == "websockets":
            return sock
        return _BufferedSocket(sock)

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        rc = super().loop_read(max_packets)
        passes = 1
        while (
            rc == MQTTErrorCode.MQTT_ERR_SUCCESS
            and isinstance(self._sock, _BufferedSocket)
            and self._sock.pending() > 0
            and passes < _MAX_PACKETS_PER_PASS
        ):
            rc = super().loop_read(max_packets)
            passes += 1
        return rc

    def ack_many(self, mids: Iterable[int]) -> None:
        """Acknowledge QoS 1 messages (manual acks) with one queued write of their PUBACKs.

        Uses paho's internal ``_packet_queue``, the call ``ack()`` itself ends in; without it
        (another paho), each message is acked with ``ack()``.
        """
        mids = list(mids)
        if not mids or not self._manual_ack:
            return
        queue_packet = getattr(self, "_packet_queue", None)
        if queue_packet is None:
            for mid in mids:
                self.ack(mid, 1)
            return
        queue_packet(_PUBACK_TYPE, b"".join([_PUBACK.pack(_PUBACK_TYPE, 2, mid) for mid in mids]), 0, 0)
