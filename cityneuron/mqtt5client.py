"""A lean MQTT 5 client for a service that receives in bulk and acknowledges after the fact.

paho's receive path cost ingest about 190 us of CPU per 3.4 kB message (bench/README.md), mostly
in per-packet reads and in building and clearing MQTT 5 property objects nobody reads. Here one
reader thread reads up to 256 kB per ``recv``, cuts every complete packet out of it
(cityneuron.mqtt5wire.Reader, properties of PUBLISH skipped by length) and hands the batch on in
one call. Acknowledgements are the owner's: ``ack`` writes the PUBACKs (QoS 1) and PUBRECs
(QoS 2) of many messages in one write, and only on the connection they arrived on.

The rest of what a service needs: persistent sessions (clean_start and session expiry),
a receive maximum, subscription options, QoS 1 publishing that survives a lost connection (kept
until PUBACK, sent again with DUP; at most the server's receive maximum in flight), keep-alive,
TLS and credentials from MqttSettings, and reconnecting forever with back-off and jitter.

Threads: the reader thread runs every callback; any thread may call ``ack``, ``publish``,
``subscribe`` and ``unsubscribe`` (writes are serialised; a TLS socket is never read and written
at once).
"""

from __future__ import annotations

import logging
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext, suppress

from cityneuron.backoff import backoff_delay_s, wait_unless_set
from cityneuron.errors import MqttError
from cityneuron.mqtt5outbox import DEFAULT_RECEIVE_MAXIMUM, Outbox
from cityneuron.mqtt5wire import (
    RECEIVE_MAXIMUM,
    SERVER_KEEP_ALIVE,
    ConnAck,
    RawPublish,
    Reader,
    Subscription,
    decode_ack,
    decode_connack,
    decode_disconnect,
    decode_suback,
    encode_connect,
    encode_disconnect,
    encode_pingreq,
    encode_pubacks,
    encode_pubcomp,
    encode_publish,
    encode_pubrec,
    encode_subscribe,
    encode_unsubscribe,
    is_failure,
    reason_name,
)
from cityneuron.mqttclient import tls_context
from cityneuron.mqttwire import (
    CONNACK,
    DISCONNECT,
    PINGRESP,
    PUBACK,
    PUBREL,
    SUBACK,
    UNSUBACK,
    MalformedPacket,
)
from cityneuron.settings import MqttSettings

_READ_BYTES = 256 * 1024
_RECONNECT_MIN_DELAY_S = 1.0
# How often the reader looks at the keep-alive and the closing flag while the line is quiet.
_TICK_S = 0.5


class ConnectRefused(MqttError):
    """The broker answered CONNECT with a failure reason code."""

    def __init__(self, reason_code: int, detail: str) -> None:
        self.reason_code = reason_code
        super().__init__(detail)


def _nothing(*args: object) -> None:
    pass


class Mqtt5Client:
    """One MQTT 5 connection, re-established whenever it breaks (see the module docstring).

    Callbacks (reader thread): ``on_connect(session_present)`` after every accepted CONNECT,
    the place to subscribe; ``on_subscribe(packet_id, reason_codes)`` per SUBACK;
    ``on_publishes(batch, connection)`` per read with messages; ``on_disconnect(reason)`` when a
    connection is lost (not after ``close``). ``connection`` numbers connections from 1; a
    packet id means something only on its own connection.
    """

    def __init__(
        self,
        settings: MqttSettings,
        client_id: str,
        *,
        clean_start: bool = True,
        session_expiry_s: int = 0,
        receive_maximum: int = DEFAULT_RECEIVE_MAXIMUM,
        on_connect: Callable[[bool], None] = _nothing,
        on_subscribe: Callable[[int, list[int]], None] = _nothing,
        on_publishes: Callable[[list[RawPublish], int], None] = _nothing,
        on_disconnect: Callable[[str], None] = _nothing,
        logger: logging.Logger | None = None,
    ) -> None:
        self.settings = settings
        self.client_id = client_id
        self._connect_packet = encode_connect(
            client_id,
            settings.keepalive_s,
            clean_start=clean_start,
            session_expiry_s=session_expiry_s,
            receive_maximum=receive_maximum,
            username=settings.username or None,
            password=settings.password if settings.username else None,
        )
        self._on_connect = on_connect
        self._on_subscribe = on_subscribe
        self._on_publishes = on_publishes
        self._on_disconnect = on_disconnect
        self._log = logger or logging.getLogger("cityneuron.mqtt")
        self._where = f"{settings.host}:{settings.port}"
        self._tls = tls_context(settings)
        # _lock guards the state below; _send_lock keeps writes whole and in order (reentrant:
        # a write made while deciding what to write); a TLS socket must not read and write at once.
        self._lock = threading.Lock()
        self._send_lock = threading.RLock()
        self._tls_lock: AbstractContextManager[object] = threading.Lock() if self._tls else nullcontext()
        self._sock: socket.socket | None = None
        self._connection = 0
        self._keepalive_s = settings.keepalive_s
        self._last_sent = time.monotonic()
        self._ping_sent_at: float | None = None
        self._outbox = Outbox()
        # Inbound QoS 2 messages answered with PUBREC and not yet released by PUBREL: a PUBLISH
        # with one of these ids is a duplicate of a message already handed on (section 4.3.3).
        self._qos2_unreleased: set[int] = set()
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None

    # --- API -------------------------------------------------------------------------------

    @property
    def connection(self) -> int:
        """The number of the current connection; 0 while disconnected."""
        return self._connection if self._sock is not None else 0

    @property
    def in_flight(self) -> int:
        """QoS 1 messages published and not yet acknowledged by the broker."""
        return len(self._outbox)

    def start(self) -> None:
        """Connect (and keep reconnecting) on the reader thread."""
        self._thread = threading.Thread(target=self._run, name=f"mqtt5-{self.client_id}", daemon=True)
        self._thread.start()

    def subscribe(self, subscriptions: Sequence[Subscription]) -> int:
        """Send SUBSCRIBE on the current connection; the packet id its SUBACK will carry."""
        with self._lock:
            packet_id = self._outbox.control_id()
        self._write(encode_subscribe(packet_id, list(subscriptions)))
        return packet_id

    def unsubscribe(self, topic_filters: Sequence[str]) -> int:
        with self._lock:
            packet_id = self._outbox.control_id()
        self._write(encode_unsubscribe(packet_id, list(topic_filters)))
        return packet_id

    def ack(self, qos1_ids: Sequence[int], qos2_ids: Sequence[int], connection: int) -> bool:
        """Acknowledge received messages in one write: PUBACK for QoS 1, PUBREC for QoS 2 (the
        broker answers PUBREL, and the reader PUBCOMP). Only on ``connection``, the one they
        arrived on: False (nothing written) once that connection is gone."""
        data = encode_pubacks(list(qos1_ids))
        if qos2_ids:
            data += b"".join(encode_pubrec(packet_id) for packet_id in qos2_ids)
        if not data:
            return True
        with self._send_lock:
            with self._lock:
                if self._sock is None or connection != self._connection:
                    return False
                self._qos2_unreleased.update(qos2_ids)
            return self._write(data, connection)

    def publish(self, topic: str, payload: bytes, qos: int = 1, *, retain: bool = False) -> bool:
        """QoS 1: kept until the broker's PUBACK, across reconnects (True). QoS 0: written now if
        connected (False otherwise)."""
        if qos == 0:
            return self._write(encode_publish(topic.encode(), payload, 0, retain=retain))
        if qos != 1:
            raise ValueError(f"QoS {qos} is not supported for publishing (0 or 1)")
        with self._lock:
            self._outbox.add(topic, payload, retain=retain)
        self._pump()
        return True

    def close(self) -> None:
        """DISCONNECT (reason 0: the session stays), wait for the broker to close, stop."""
        self._closing.set()
        # The broker closes the connection on DISCONNECT (MQTT 5.0 section 3.14.4); the reader
        # waits for that before the socket is closed: closing it with unread bytes would reset
        # the connection and could discard the DISCONNECT.
        self._write(encode_disconnect())
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(self.settings.connect_timeout_s + 2 * _TICK_S)
        with self._lock:
            sock, self._sock = self._sock, None
        if sock is not None:
            _shut(sock)

    # --- connecting ------------------------------------------------------------------------

    def _run(self) -> None:
        attempt = 0
        limit_s = max(_RECONNECT_MIN_DELAY_S, self.settings.reconnect_max_delay_s)
        while not self._closing.is_set():
            try:
                sock, reader, connack, pending = self._open()
            except ConnectRefused as exc:
                self._log.error("mqtt connect refused by %s: %s; retrying", self._where, exc)
            except MqttError as exc:
                self._log.warning("mqtt connect to %s failed (attempt %d): %s", self._where, attempt + 1, exc)
            else:
                attempt = 0
                if self._closing.is_set():
                    _shut(sock)
                    return
                self._adopt(sock, connack)
                reason = self._serve(sock, reader, pending)
                self._drop(sock, reason)
            # Back off, with jitter so a fleet of clients does not reconnect in lockstep.
            if wait_unless_set(backoff_delay_s(attempt, _RECONNECT_MIN_DELAY_S, limit_s), self._closing):
                return
            attempt += 1

    def _open(
        self,
    ) -> tuple[socket.socket, Reader, ConnAck, tuple[list[RawPublish], list[tuple[int, bytes]]]]:
        """A new connection through an accepting CONNACK, with whatever came after it."""
        s = self.settings
        try:
            sock = socket.create_connection((s.host, s.port), timeout=s.connect_timeout_s)
        except OSError as exc:
            raise MqttError(f"cannot connect: {exc}") from exc
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._tls is not None:
                sock = self._tls.wrap_socket(sock, server_hostname=s.host)
            sock.sendall(self._connect_packet)
            reader = Reader()
            publishes: list[RawPublish] = []
            others: list[tuple[int, bytes]] = []
            while not others:
                data = sock.recv(_READ_BYTES)
                if not data:
                    raise MqttError("the broker closed the connection before CONNACK")
                more, others = reader.feed(data)
                publishes += more
            first, body = others.pop(0)
            if first >> 4 != CONNACK:
                raise MalformedPacket(f"packet type {first >> 4} before CONNACK")
            connack = decode_connack(body)
            if is_failure(connack.reason_code):
                detail = reason_name(connack.reason_code)
                if connack.reason_string:
                    detail += f": {connack.reason_string}"
                raise ConnectRefused(connack.reason_code, detail)
            # A write may block that long before the connection counts as dead.
            sock.settimeout(max(s.keepalive_s, s.connect_timeout_s))
        except MqttError:
            _shut(sock)
            raise
        except (OSError, ssl.SSLError) as exc:
            _shut(sock)
            raise MqttError(str(exc) or type(exc).__name__) from exc
        return sock, reader, connack, (publishes, others)

    def _adopt(self, sock: socket.socket, connack: ConnAck) -> None:
        """Make ``sock`` the connection, send unacknowledged QoS 1 messages again, call on_connect."""
        properties = connack.properties
        with self._send_lock, self._lock:
            self._sock = sock
            self._connection += 1
            server_keepalive = properties.get(SERVER_KEEP_ALIVE)
            self._keepalive_s = (
                int(server_keepalive) if isinstance(server_keepalive, int) else self.settings.keepalive_s
            )
            receive_maximum = properties.get(RECEIVE_MAXIMUM, DEFAULT_RECEIVE_MAXIMUM)
            self._outbox.reconnected(receive_maximum if isinstance(receive_maximum, int) else 1)
            if not connack.session_present:
                self._qos2_unreleased.clear()  # a new session: the broker forgot them too
            self._ping_sent_at = None
            self._last_sent = time.monotonic()
            resend = len(self._outbox)
        self._log.info(
            "mqtt connected host=%s client_id=%s session_present=%s",
            self._where,
            self.client_id,
            connack.session_present,
        )
        if resend:
            self._log.info("mqtt sending %d unacknowledged message(s) again", resend)
        self._pump()
        self._on_connect(connack.session_present)

    def _drop(self, sock: socket.socket, reason: str) -> None:
        with self._send_lock, self._lock:
            if self._sock is sock:
                self._sock = None
        _shut(sock)
        if not self._closing.is_set():
            self._log.warning("mqtt connection to %s lost (%s); reconnecting", self._where, reason)
            self._on_disconnect(reason)

    # --- writing ---------------------------------------------------------------------------

    def _write(self, data: bytes, connection: int = 0) -> bool:
        """Write ``data`` on the current connection (on ``connection`` only, if given)."""
        with self._send_lock:
            with self._lock:
                sock = self._sock
                if sock is None or (connection and connection != self._connection):
                    return False
            try:
                with self._tls_lock:
                    sock.sendall(data)
            except (OSError, ssl.SSLError) as exc:
                # The reader sees the shut socket and reconnects.
                self._log.warning("mqtt write to %s failed: %s", self._where, exc)
                with suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                return False
            self._last_sent = time.monotonic()
            return True

    def _pump(self) -> None:
        """Write queued QoS 1 messages while the server's receive maximum allows."""
        with self._send_lock:
            with self._lock:
                if self._sock is None:
                    return
                out = self._outbox.due()
            if out:
                self._write(b"".join(out))

    # --- reading ---------------------------------------------------------------------------

    def _serve(
        self, sock: socket.socket, reader: Reader, pending: tuple[list[RawPublish], list[tuple[int, bytes]]]
    ) -> str:
        """Read and handle packets until the connection ends; why it ended."""
        reason = self._handle(*pending)
        if reason:
            return reason
        poller = select.poll()  # not select(): it fails on descriptors above 1023
        poller.register(sock, select.POLLIN)
        closing_deadline: float | None = None
        while True:
            if self._closing.is_set():
                # close() sent DISCONNECT: read on until the broker closes, but not for ever.
                if closing_deadline is None:
                    closing_deadline = time.monotonic() + self.settings.connect_timeout_s
                elif time.monotonic() > closing_deadline:
                    return "closed"
            if (isinstance(sock, ssl.SSLSocket) and sock.pending()) or poller.poll(_TICK_S * 1000):
                try:
                    with self._tls_lock:
                        data = sock.recv(_READ_BYTES)
                except ssl.SSLWantReadError:
                    data = None
                except (OSError, ssl.SSLError) as exc:
                    return f"read failed: {exc}"
                if data == b"":
                    return "closed by the broker"
                if data:
                    try:
                        reason = self._handle(*reader.feed(data))
                    except MalformedPacket as exc:
                        return f"malformed packet: {exc}"
                    if reason:
                        return reason
            reason = self._keepalive()
            if reason:
                return reason

    def _handle(self, publishes: list[RawPublish], others: list[tuple[int, bytes]]) -> str:
        """Act on what one read brought; a reason when the connection must end."""
        replies: list[bytes] = []
        if publishes and not self._closing.is_set():
            if any(first & 0x04 for first, _, _, _ in publishes):
                publishes = self._new_qos2_only(publishes, replies)
            if publishes:
                self._on_publishes(publishes, self._connection)
        acked: list[int] = []
        reason = ""
        for first, body in others:
            kind = first >> 4
            if kind == PUBACK:
                packet_id, code = decode_ack(body)
                acked.append(packet_id)
                if is_failure(code):
                    self._log.warning("mqtt broker refused published message: %s", reason_name(code))
            elif kind == PUBREL:
                packet_id, _ = decode_ack(body, "PUBREL")
                with self._lock:
                    self._qos2_unreleased.discard(packet_id)
                replies.append(encode_pubcomp(packet_id))
            elif kind == PINGRESP:
                self._ping_sent_at = None
            elif kind in (SUBACK, UNSUBACK):
                packet_id, codes = decode_suback(body)
                with self._lock:
                    self._outbox.control_done(packet_id)
                if kind == SUBACK:
                    self._on_subscribe(packet_id, codes)
                else:
                    self._log.debug("mqtt unsubscribed: %s", ", ".join(map(reason_name, codes)))
            elif kind == DISCONNECT:
                code, text = decode_disconnect(body)
                reason = f"the broker sent DISCONNECT: {reason_name(code)}" + (f": {text}" if text else "")
                break
            else:
                reason = f"unexpected packet type {kind}"
                break
        if acked:
            with self._lock:
                self._outbox.acked(acked)
            self._pump()
        if replies:
            self._write(b"".join(replies))
        return reason

    def _new_qos2_only(self, publishes: list[RawPublish], replies: list[bytes]) -> list[RawPublish]:
        """Drop QoS 2 messages already answered with PUBREC (answering PUBREC again): the broker
        resends a PUBLISH until it sees PUBREC, and a message must be handed on once."""
        with self._lock:
            unreleased = set(self._qos2_unreleased)
        fresh = []
        for publish in publishes:
            first, _, packet_id, _ = publish
            if first & 0x06 == 0x04 and packet_id in unreleased:
                replies.append(encode_pubrec(packet_id))
            else:
                fresh.append(publish)
        return fresh

    def _keepalive(self) -> str:
        """PINGREQ after half a keep-alive without writing; no PINGRESP within one means a dead link."""
        keepalive_s = self._keepalive_s
        if not keepalive_s:
            return ""
        now = time.monotonic()
        if self._ping_sent_at is not None:
            if now - self._ping_sent_at > keepalive_s:
                return f"no PINGRESP within {keepalive_s} s"
        elif now - self._last_sent >= keepalive_s / 2:
            self._ping_sent_at = now
            self._write(encode_pingreq())
        return ""


def _shut(sock: socket.socket) -> None:
    with suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()
