"""A light MQTT 3.1.1 publishing client: batched writes, a reader thread, reconnects.

paho spends several microseconds of Python per message and, with ``loop_start``, makes the
publishing thread and its network thread fight for the GIL. Here ``publish()`` only encodes
the packet and appends it to an output buffer; the publishing thread itself writes the buffer
in one ``sendall`` once it holds ``batch_packets`` packets or ``batch_bytes`` bytes, and a
flusher thread writes whatever is left after ``flush_delay_s`` so a slow trickle is not held
back. One reader thread parses what the broker sends (PUBACKs, SUBACK, command messages,
PINGRESP), sends PINGREQ when nothing went out for half the keepalive, and reconnects with
exponential back-off and jitter.

Delivery: QoS 1 messages stay in memory until acknowledged; after a reconnect (always a clean
session) the unacknowledged ones are sent again, so QoS 1 is at-least-once across broken
connections. DUP is set only on those that were written to a connection before (a re-delivery,
MQTT 3.1.1 section 3.3.1.1); one published while disconnected goes out the first time without it. QoS 0 messages published while disconnected are refused
(``publish`` returns False), and those still in the output buffer when the connection breaks
are reported through ``on_dropped``.

Subscriptions ask for QoS 0 or 1 (more is refused); a QoS 2 message a broker sends anyway gets
the QoS 2 answers (PUBREC, then PUBCOMP on PUBREL) and is handed on once.

Thread safety: one publishing thread plus the reader thread (which runs ``on_message`` and may
publish from it); the flusher only writes.
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
from cityneuron.mqttclient import tls_context
from cityneuron.settings import MqttSettings
from simulator.errors import PublishError
from simulator.mqttwire import (
    CONNACK,
    MAX_PACKET_ID,
    MAX_SUBSCRIBE_QOS,
    PINGRESP,
    PUBACK,
    PUBLISH,
    PUBREL,
    SUBACK,
    SUBACK_FAILURE,
    ConnectRefused,
    InboundPublish,
    MalformedPacket,
    PacketParser,
    Will,
    check_connack,
    decode_packet_id,
    decode_publish,
    decode_suback,
    encode_connect,
    encode_disconnect,
    encode_pingreq,
    encode_puback,
    encode_pubcomp,
    encode_publish,
    encode_pubrec,
    encode_subscribe,
    with_dup,
)

log = logging.getLogger("cityneuron.simulator")

# One sendall per this many packets or bytes: a few syscalls instead of one per message.
BATCH_PACKETS = 64
BATCH_BYTES = 64 * 1024
# A lone message waits at most about this long for company before it is written.
FLUSH_DELAY_S = 0.002
_RECONNECT_MIN_DELAY_S = 0.5
_READ_BYTES = 256 * 1024
# How often the reader looks at the keepalive and the closing flag while the line is quiet.
_TICK_S = 0.5

Callback = Callable[[int], None]


def _nothing(count: int) -> None:
    pass


class WireClient:
    """One MQTT 3.1.1 connection publishing QoS 0/1 messages (see the module docstring).

    ``on_delivered(n)``: n counted messages were written (QoS 0) or acknowledged (QoS 1);
    ``on_dropped(n)``: n counted QoS 0 messages were lost with a broken connection;
    ``on_message``: a message on one of ``subscriptions`` (reader thread; QoS 1 ones are
    acknowledged after it returns); ``on_connection(up)``: the connection came up or went down.
    Credentials default to the settings'; explicit ones win. Once ``stop`` (the owner's "shut
    down" event) is set, a lost connection is not dialed again: a broker that stopped first must
    not hold up the shutdown of everything publishing to it.
    """

    def __init__(
        self,
        settings: MqttSettings,
        client_id: str,
        *,
        username: str | None = None,
        password: str | None = None,
        will: Will | None = None,
        subscriptions: Sequence[tuple[str, int]] = (),
        on_delivered: Callback = _nothing,
        on_dropped: Callback = _nothing,
        on_message: Callable[[InboundPublish], None] | None = None,
        on_connection: Callable[[bool], None] | None = None,
        stop: threading.Event | None = None,
        batch_packets: int = BATCH_PACKETS,
        batch_bytes: int = BATCH_BYTES,
        flush_delay_s: float = FLUSH_DELAY_S,
    ) -> None:
        self.settings = settings
        self.client_id = client_id
        self._username = username if username is not None else settings.username
        self._password = password if username is not None else settings.password
        self._will = will
        for topic, qos in subscriptions:
            if qos not in range(MAX_SUBSCRIBE_QOS + 1):
                raise ValueError(
                    f"MQTT client {client_id}: subscription to {topic!r} at QoS {qos}: this client"
                    " acknowledges QoS 0 and 1 only; subscribe at QoS 0 or 1"
                )
        self._subscriptions = list(subscriptions)
        self._on_delivered = on_delivered
        self._on_dropped = on_dropped
        self._on_message = on_message
        self._on_connection = on_connection
        self._batch_packets = batch_packets
        self._batch_bytes = batch_bytes
        self._flush_delay_s = flush_delay_s
        self._tls = tls_context(settings)
        # _lock guards the buffer, the socket reference and the in-flight table; _send_lock
        # keeps writes in buffer order; TLS objects must not read and write at once.
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._tls_lock: AbstractContextManager[object] = threading.Lock() if self._tls else nullcontext()
        self._sock: socket.socket | None = None
        self._out: list[bytes] = []
        self._out_bytes = 0
        self._out_counted_qos0 = 0
        # Packet ids of the QoS 1 messages in _out, and of those ever handed to a socket (DUP
        # on a resend).
        self._out_ids: list[int] = []
        self._written: set[int] = set()
        self._inflight: dict[int, bytes] = {}
        # QoS 2 messages received and answered with PUBREC, until their PUBREL.
        self._qos2_received: set[int] = set()
        self._uncounted: set[int] = set()
        self._last_id = 0
        self._last_sent = time.monotonic()
        self._ping_sent_at: float | None = None
        self._wake = threading.Event()
        self._closing = threading.Event()
        self._stop = stop or threading.Event()
        self._threads: list[threading.Thread] = []
        self._reader_ident: int | None = None

    # --- API -------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._sock is not None

    @property
    def in_flight(self) -> int:
        """QoS 1 messages sent (or waiting to be) and not yet acknowledged."""
        return len(self._inflight)

    def connect(self) -> None:
        """Connect once (raising PublishError, ConnectRefused for a refusal) and start the threads."""
        sock, parser, pending = self._open()
        self._adopt(sock)
        reader = threading.Thread(
            target=self._read_loop,
            args=(sock, parser, pending),
            name=f"mqtt-read-{self.client_id}",
            daemon=True,
        )
        flusher = threading.Thread(target=self._flush_loop, name=f"mqtt-flush-{self.client_id}", daemon=True)
        self._threads = [reader, flusher]
        for thread in self._threads:
            thread.start()

    def publish(
        self, topic: str, payload: bytes, qos: int = 0, *, retain: bool = False, counted: bool = True
    ) -> bool:
        """Queue one message; False for QoS 0 while disconnected. ``counted`` ones are reported
        to on_delivered/on_dropped."""
        if qos not in (0, 1):
            raise ValueError(f"QoS {qos} is not supported (0 or 1)")
        encoded_topic = topic.encode()
        with self._lock:
            if qos:
                packet_id = self._next_packet_id()
                packet = encode_publish(encoded_topic, payload, 1, retain=retain, packet_id=packet_id)
                self._inflight[packet_id] = packet
                if not counted:
                    self._uncounted.add(packet_id)
                if self._sock is None:
                    return True  # sent after the reconnect
                self._out_ids.append(packet_id)
            else:
                if self._sock is None:
                    return False
                packet = encode_publish(encoded_topic, payload, 0, retain=retain)
                self._out_counted_qos0 += counted
            out = self._out
            out.append(packet)
            self._out_bytes += len(packet)
            full = len(out) >= self._batch_packets or self._out_bytes >= self._batch_bytes
            first = len(out) == 1
        if full and threading.get_ident() != self._reader_ident:
            self._flush()
        elif first or full:
            self._wake.set()
        return True

    def flush(self) -> None:
        """Write everything queued now."""
        self._flush()

    def close(self, *, disconnect: bool = True) -> None:
        """Stop the threads and close the socket; with ``disconnect`` say DISCONNECT first
        (the broker then drops the will), otherwise just drop the connection so it fires."""
        self._closing.set()
        sock = self._sock
        if disconnect and sock is not None:
            with self._lock:
                self._out.append(encode_disconnect())
            self._flush()
            try:
                # Half-close and let the reader see the broker close its side: closing a socket
                # with unread bytes resets the connection and could discard the DISCONNECT.
                with self._tls_lock:
                    sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            else:
                for thread in self._threads[:1]:
                    if thread.ident != threading.get_ident():
                        thread.join(timeout=self.settings.connect_timeout_s)
        with self._lock:
            sock, self._sock = self._sock, None
        if sock is not None:
            _shut(sock)
        self._wake.set()
        for thread in self._threads:
            if thread.ident != threading.get_ident():
                thread.join(timeout=5.0)

    # --- connecting ------------------------------------------------------------------------

    def _open(self) -> tuple[socket.socket, PacketParser, list[tuple[int, bytes]]]:
        """A new connection through CONNACK and SUBACK, with any packets that came after them."""
        s = self.settings
        where = f"MQTT client {self.client_id} at {s.host}:{s.port}"
        try:
            sock: socket.socket = socket.create_connection((s.host, s.port), timeout=s.connect_timeout_s)
        except OSError as exc:
            raise PublishError(f"{where}: cannot connect: {exc}") from exc
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._tls is not None:
                sock = self._tls.wrap_socket(sock, server_hostname=s.host)
            connect = encode_connect(
                self.client_id,
                s.keepalive_s,
                username=self._username,
                password=self._password,
                will=self._will,
            )
            sock.sendall(connect)
            parser = PacketParser()
            pending: list[tuple[int, bytes]] = []
            check_connack(_read_until(sock, parser, CONNACK, pending, where))
            if self._subscriptions:
                sock.sendall(encode_subscribe(self._fresh_subscribe_id(), self._subscriptions))
                self._check_suback(_read_until(sock, parser, SUBACK, pending, where))
            # Sends may block that long before the connection counts as dead.
            sock.settimeout(max(s.keepalive_s, s.connect_timeout_s))
        except ConnectRefused as exc:
            _shut(sock)
            raise ConnectRefused(exc.return_code, f"{where}: ") from None
        except PublishError:
            _shut(sock)
            raise
        except (OSError, ssl.SSLError, MalformedPacket) as exc:
            _shut(sock)
            raise PublishError(f"{where}: connection failed: {exc}") from exc
        return sock, parser, pending

    def _fresh_subscribe_id(self) -> int:
        with self._lock:
            return self._next_packet_id()

    def _check_suback(self, body: bytes) -> None:
        _, codes = decode_suback(body)
        for (topic, _qos), code in zip(self._subscriptions, codes, strict=False):
            if code == SUBACK_FAILURE:
                log.warning("MQTT client %s: broker refused the subscription to %s", self.client_id, topic)

    def _adopt(self, sock: socket.socket) -> None:
        """Make ``sock`` the connection and send every unacknowledged QoS 1 message again."""
        with self._lock:
            self._sock = sock
            written = self._written
            self._out = [
                with_dup(packet) if packet_id in written else packet
                for packet_id, packet in self._inflight.items()
            ]
            self._out_ids = list(self._inflight)
            self._out_bytes = sum(map(len, self._out))
            self._out_counted_qos0 = 0
            self._qos2_received.clear()  # a clean session: the broker forgot them too
            self._ping_sent_at = None
            self._last_sent = time.monotonic()
        if self._out:
            log.info(
                "MQTT client %s: sending %d unacknowledged message(s) again", self.client_id, len(self._out)
            )
        self._flush()
        if self._on_connection is not None:
            self._on_connection(True)

    def _reconnect(self) -> tuple[socket.socket, PacketParser] | None:
        """Back off and reconnect until it works or the client closes; the new socket."""
        limit = max(_RECONNECT_MIN_DELAY_S, self.settings.reconnect_max_delay_s)
        attempt = 0
        while not wait_unless_set(
            backoff_delay_s(attempt, _RECONNECT_MIN_DELAY_S, limit), self._closing, self._stop
        ):
            try:
                sock, parser, pending = self._open()
            except PublishError as exc:
                log.warning(
                    "MQTT client %s: reconnect attempt %d failed (%s); backing off",
                    self.client_id,
                    attempt + 1,
                    exc,
                )
                attempt += 1
                continue
            self._adopt(sock)
            self._handle(pending)
            log.info("MQTT client %s reconnected", self.client_id)
            return sock, parser
        return None

    def _lost(self, sock: socket.socket, why: object) -> None:
        """Forget a broken connection (once) and report the QoS 0 messages it took with it."""
        with self._lock:
            if self._sock is not sock:
                return
            self._sock = None
            dropped = self._out_counted_qos0
            self._out, self._out_bytes, self._out_counted_qos0 = [], 0, 0
            self._out_ids = []
        _shut(sock)
        if self._stop.is_set() and not self._closing.is_set():
            log.warning("MQTT client %s lost its connection while stopping (%s)", self.client_id, why)
        elif not self._closing.is_set():
            log.warning("MQTT client %s lost its connection (%s); reconnecting", self.client_id, why)
        if dropped:
            self._on_dropped(dropped)
        if self._on_connection is not None:
            self._on_connection(False)

    # --- writing ---------------------------------------------------------------------------

    def _next_packet_id(self) -> int:
        """1..65535, wrapping, skipping ids still in flight (caller holds _lock)."""
        if len(self._inflight) >= MAX_PACKET_ID:
            raise PublishError(f"MQTT client {self.client_id}: all {MAX_PACKET_ID} packet ids are in flight")
        packet_id = self._last_id
        while True:
            packet_id = packet_id % MAX_PACKET_ID + 1
            if packet_id not in self._inflight:
                self._last_id = packet_id
                return packet_id

    def _flush(self) -> None:
        with self._send_lock:
            with self._lock:
                if not self._out or self._sock is None:
                    return
                sock, chunk, counted = self._sock, self._out, self._out_counted_qos0
                self._out, self._out_bytes, self._out_counted_qos0 = [], 0, 0
                # Handed to the socket from now on: a resend of any of them is a re-delivery,
                # even if this write fails half-way.
                self._written.update(self._out_ids)
                self._out_ids = []
            try:
                with self._tls_lock:
                    sock.sendall(b"".join(chunk))
            except (OSError, ssl.SSLError) as exc:
                self._lost(sock, exc)
                if counted:
                    self._on_dropped(counted)
                return
            self._last_sent = time.monotonic()
        if counted:
            self._on_delivered(counted)

    def _flush_loop(self) -> None:
        while not self._closing.is_set():
            self._wake.wait()
            # Let a batch gather: one write for everything published in the next moment.
            time.sleep(self._flush_delay_s)
            self._wake.clear()
            self._flush()

    def _queue_control(self, packet: bytes) -> None:
        with self._lock:
            if self._sock is None:
                return
            self._out.append(packet)
            self._out_bytes += len(packet)
        self._wake.set()

    # --- reading ---------------------------------------------------------------------------

    def _read_loop(
        self, sock: socket.socket | None, parser: PacketParser, pending: list[tuple[int, bytes]]
    ) -> None:
        self._reader_ident = threading.get_ident()
        self._handle(pending)
        poller = _poller(sock)
        while not self._closing.is_set():
            if sock is None or self._sock is not sock:
                if self._stop.is_set():
                    # Stopping: wait for close() instead of dialing.
                    self._closing.wait(_TICK_S)
                    continue
                reconnected = self._reconnect()
                sock, parser = reconnected if reconnected is not None else (None, parser)
                poller = _poller(sock)
                continue
            try:
                data = self._receive(sock, poller)
            except (OSError, ssl.SSLError) as exc:
                self._lost(sock, exc)
                continue
            if data == b"":
                self._lost(sock, "closed by the broker")
                continue
            if data:
                try:
                    self._handle(parser.feed(data))
                except (PublishError, MalformedPacket) as exc:
                    self._lost(sock, exc)
                    continue
            self._keepalive(sock)

    def _receive(self, sock: socket.socket, poller: select.poll) -> bytes | None:
        """Bytes from the broker, b"" at end of stream, None when nothing came within a tick."""
        if not (isinstance(sock, ssl.SSLSocket) and sock.pending()) and not poller.poll(_TICK_S * 1000):
            return None
        with self._tls_lock:
            try:
                return sock.recv(_READ_BYTES)
            except ssl.SSLWantReadError:
                return None

    def _handle(self, packets: list[tuple[int, bytes]]) -> None:
        acked: list[int] = []
        for first, body in packets:
            kind = first >> 4
            if kind == PUBACK:
                acked.append(decode_packet_id(body))
            elif kind == PUBLISH:
                self._deliver(decode_publish(first, body))
            elif kind == PUBREL:
                packet_id = decode_packet_id(body, "PUBREL")
                self._qos2_received.discard(packet_id)
                self._queue_control(encode_pubcomp(packet_id))
            elif kind == PINGRESP:
                self._ping_sent_at = None
            elif kind == SUBACK:
                self._check_suback(body)
            else:
                log.debug("MQTT client %s: ignored packet type %d", self.client_id, kind)
        if not acked:
            return
        with self._lock:
            pop, uncounted = self._inflight.pop, self._uncounted
            counted = 0
            for packet_id in acked:
                if pop(packet_id, None) is not None:
                    self._written.discard(packet_id)
                    if uncounted and packet_id in uncounted:
                        uncounted.discard(packet_id)
                    else:
                        counted += 1
        if counted:
            self._on_delivered(counted)

    def _deliver(self, message: InboundPublish) -> None:
        if message.qos < 2:
            self._hand_on(message)
            if message.qos:
                self._queue_control(encode_puback(message.packet_id))
            return
        # QoS 2 although no subscription asked for it: answer PUBREC (a PUBACK would break the
        # broker's QoS 2 flow) and hand the message on once, not again when the broker repeats
        # it before its PUBREL (MQTT 3.1.1 section 4.3.3, method B).
        if message.packet_id not in self._qos2_received:
            log.warning(
                "MQTT client %s: the broker sent a QoS 2 message on %s although every subscription"
                " asked for QoS %d at most",
                self.client_id,
                message.topic,
                MAX_SUBSCRIBE_QOS,
            )
            self._qos2_received.add(message.packet_id)
            self._hand_on(message)
        self._queue_control(encode_pubrec(message.packet_id))

    def _hand_on(self, message: InboundPublish) -> None:
        if self._on_message is not None:
            try:
                self._on_message(message)
            except Exception:
                log.exception(
                    "MQTT client %s: handling a message on %s failed", self.client_id, message.topic
                )

    def _keepalive(self, sock: socket.socket) -> None:
        """PINGREQ after half a keepalive without sending; a missing PINGRESP means a dead link."""
        keepalive_s = self.settings.keepalive_s
        now = time.monotonic()
        if self._ping_sent_at is not None:
            if now - self._ping_sent_at > keepalive_s:
                self._lost(sock, f"no PINGRESP within {keepalive_s} s")
        elif now - self._last_sent >= keepalive_s / 2:
            self._ping_sent_at = now
            self._queue_control(encode_pingreq())


def _read_until(
    sock: socket.socket, parser: PacketParser, kind: int, others: list[tuple[int, bytes]], where: str
) -> bytes:
    """The body of the next packet of type ``kind``; packets read before or with it go to ``others``."""
    while True:
        data = sock.recv(_READ_BYTES)
        if not data:
            raise PublishError(f"{where}: connection closed while waiting for packet type {kind}")
        others += parser.feed(data)
        for i, (first, body) in enumerate(others):
            if first >> 4 == kind:
                del others[i]
                return body


def _poller(sock: socket.socket | None) -> select.poll:
    # poll, not select: select() fails on descriptors above 1023 (a process with many devices).
    poller = select.poll()
    if sock is not None:
        poller.register(sock, select.POLLIN)
    return poller


def _shut(sock: socket.socket) -> None:
    with suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()
