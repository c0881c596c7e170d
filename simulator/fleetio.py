"""The per-device fleet's I/O: one thread, one epoll, every device's paho client.

paho's ``loop_start`` costs a thread and a select() per client, which stops near 340 clients in
one process. Here every paho client runs without a loop of its own: its socket callbacks
register the socket with one epoll, and a single I/O thread calls ``loop_read`` /
``loop_write`` when the kernel says so and ``loop_misc`` (keepalive) once a second. Every paho
call happens on that thread, so no paho client is ever touched by two threads; other threads
hand messages and work over through an inbox.

Connections open at a bounded rate; a refused or lost connection retries with exponential
back-off and jitter, so a broker restart does not become a reconnect storm of our own making.
A device the broker refuses for its credentials is not retried.
"""

from __future__ import annotations

import contextlib
import heapq
import logging
import math
import os
import select
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.reasoncodes import ReasonCode

from cityneuron.backoff import backoff_delay_s
from cityneuron.contract import encode_status, now_ms
from cityneuron.settings import MqttSettings
from simulator.commands import CommandBook
from simulator.fleetconn import COMMAND_QOS, STATUS_QOS, DeviceConnection, LinkState, new_client

log = logging.getLogger("cityneuron.simulator")

_BACKOFF_FIRST_S = 1.0
_MISC_EVERY_S = 1.0
_GOODBYE_ACK_WAIT_S = 5.0
# A cut waits this long at most for the device's messages in flight to be acknowledged.
_CUT_ACK_WAIT_S = 5.0
_POLL_MAX_S = 0.25
_EPOLL_IN = select.EPOLLIN | select.EPOLLERR | select.EPOLLHUP
_EPOLL_OUT = select.EPOLLOUT

# A message for the I/O thread to publish: connection, topic, payload, QoS, retain.
_Message = tuple[DeviceConnection, str, bytes, int, bool]


class FleetIO:
    """Drives the connections of ``devices`` from one I/O thread and counts what happens.

    ``cond`` guards the counters and the inbox and is notified when a counter that callers
    wait for moves. Callers' threads use ``start``, ``submit``, ``drop``, ``cut``, ``restore``
    and ``close``; everything else runs on the I/O thread.
    """

    def __init__(
        self,
        settings: MqttSettings,
        devices: list[DeviceConnection],
        *,
        device_key: bytes | None,
        commands: CommandBook | None,
        stop: threading.Event,
        connect_rate_per_s: float,
        max_outstanding: int,
    ) -> None:
        self.settings = settings
        self.devices = devices
        self._device_key = device_key
        self._commands = commands
        self._stop = stop
        self._connect_rate_per_s = connect_rate_per_s
        self._max_outstanding = max_outstanding
        self.cond = threading.Condition()
        self._inbox: deque[_Message | Callable[[], None]] = deque()
        self._wake_pending = False
        self.sent = 0
        self.acked = 0
        self.failed = 0
        self.errors = 0  # messages refused at once: their device's credentials were refused
        self.connected = 0
        self.refused = 0
        self.disconnects = 0
        self.connects = 0
        # I/O-thread state.
        self._epoll: select.epoll | None = None
        self._wake_fd = -1
        self._by_fd: dict[int, DeviceConnection] = {}
        self._dial_queue: deque[DeviceConnection] = deque()
        self._retry_heap: list[tuple[float, int, DeviceConnection]] = []
        self._tokens = 1.0
        self._tokens_at = time.monotonic()
        self._closing = False
        self._leaving: list[DeviceConnection] = []
        self._cutting: set[DeviceConnection] = set()
        self._leave_by = 0.0
        self._exit = False
        self._thread: threading.Thread | None = None

    # --- callers' threads ------------------------------------------------------------------

    def start(self) -> None:
        """Start the I/O thread; it dials every device at the connection rate."""
        self._epoll = select.epoll()
        self._wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._epoll.register(self._wake_fd, select.EPOLLIN)
        self._dial_queue.extend(self.devices)
        self._thread = threading.Thread(target=self._io_main, name="sim-fleet-io", daemon=True)
        self._thread.start()

    def submit(self, conn: DeviceConnection, topic: str, payload: bytes, qos: int, retain: bool) -> bool:
        """Hand one message to the I/O thread, waiting while too many are outstanding."""
        with self.cond:
            if conn.state is LinkState.REFUSED:
                self.errors += 1
                return False
            while self.sent - self.acked - self.failed >= self._max_outstanding and not self._stop.is_set():
                self.cond.wait(0.5)
            self.sent += 1
            self._inbox.append((conn, topic, payload, qos, retain))
            self._wake_locked()
        return True

    def drop(self, device_numbers: Iterable[int], offline_for_s: float) -> None:
        """See ``DeviceFleet.drop``."""
        numbers = list(device_numbers)

        def _drop() -> None:
            hold = time.monotonic() + offline_for_s
            for n in numbers:
                conn = self.devices[n]
                conn.hold_until = hold
                conn.abort()

        self._call_soon(_drop)

    def cut(self, device_numbers: Iterable[int]) -> None:
        """See ``DeviceFleet.cut``."""
        numbers = list(device_numbers)

        def _cut() -> None:
            by = time.monotonic() + _CUT_ACK_WAIT_S
            for n in numbers:
                conn = self.devices[n]
                conn.hold_until = math.inf
                if conn.in_flight and conn.state is LinkState.CONNECTED:
                    conn.cut_by = by
                    self._cutting.add(conn)
                else:
                    conn.abort()

        self._call_soon(_cut)

    def restore(self, device_numbers: Iterable[int]) -> None:
        """See ``DeviceFleet.restore``."""
        numbers = list(device_numbers)

        def _restore() -> None:
            now = time.monotonic()
            for n in numbers:
                conn = self.devices[n]
                conn.hold_until = 0.0
                if conn.cut_by is not None:
                    # Back before its link was cut: on the wire it never left.
                    conn.cut_by = None
                    self._cutting.discard(conn)
                elif conn.state is LinkState.IDLE and not self._closing:
                    self._connect(conn, now)

        self._call_soon(_restore)

    def close(self, *, goodbye: bool, deadline: float) -> None:
        """Say goodbye (``goodbye``) or drop every link, then end the I/O thread.

        ``deadline`` (monotonic) is when the caller's drain gave up.
        """
        self._call_soon(lambda: self._shutdown(goodbye))
        if self._thread is not None:
            # Saying goodbye to thousands of devices takes a moment even after a long drain.
            self._thread.join(max(_GOODBYE_ACK_WAIT_S + 5.0, deadline - time.monotonic()))
            if self._thread.is_alive():
                self._exit = True
                self._thread.join(2.0)
        if self._epoll is not None:
            self._epoll.close()
        if self._wake_fd >= 0:
            os.close(self._wake_fd)
            self._wake_fd = -1

    def _call_soon(self, fn: Callable[[], None]) -> None:
        with self.cond:
            self._inbox.append(fn)
            self._wake_locked()

    def _wake_locked(self) -> None:
        if not self._wake_pending and self._wake_fd >= 0:
            self._wake_pending = True
            os.eventfd_write(self._wake_fd, 1)

    # --- the I/O thread --------------------------------------------------------------------

    def _io_main(self) -> None:
        assert self._epoll is not None
        next_misc = time.monotonic() + _MISC_EVERY_S
        while not self._exit:
            now = time.monotonic()
            self._run_inbox()
            self._dial(now)
            if now >= next_misc:
                next_misc = now + _MISC_EVERY_S
                self._misc(now)
            if self._leaving:
                self._disconnect_when_acked(now)
            if self._closing and not self._by_fd:
                break
            timeout = min(_POLL_MAX_S, max(0.0, next_misc - now))
            if self._dial_queue:
                timeout = min(timeout, 1.0 / self._connect_rate_per_s)
            for fd, events in self._epoll.poll(timeout):
                if fd == self._wake_fd:
                    continue
                conn = self._by_fd.get(fd)
                if conn is None or conn.client is None:
                    continue
                client = conn.client
                if events & _EPOLL_IN:
                    client.loop_read()
                    sock = client.socket()
                    while isinstance(sock, ssl.SSLSocket) and sock.pending() and client.socket() is sock:
                        client.loop_read()
                if events & _EPOLL_OUT and client.socket() is not None:
                    client.loop_write()
        self._close_sockets()

    def _run_inbox(self) -> None:
        with self.cond:
            if self._wake_pending:
                with contextlib.suppress(BlockingIOError):
                    os.eventfd_read(self._wake_fd)
                self._wake_pending = False
            work, self._inbox = self._inbox, deque()
        failed = 0
        for item in work:
            if callable(item):
                item()
                continue
            conn, topic, payload, qos, retain = item
            if conn.state is LinkState.CONNECTING:
                conn.held.append((topic, payload, qos, retain))
            elif not self._publish(conn, topic, payload, qos, retain):
                failed += 1
        self._count_failed(failed)

    def _publish(self, conn: DeviceConnection, topic: str, payload: bytes, qos: int, retain: bool) -> bool:
        info = self._client(conn).publish(topic, payload, qos=qos, retain=retain)
        # QoS 1 messages wait in paho for the (re)connect; QoS 0 ones are lost without a link.
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS and not (
            info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN and qos > 0
        ):
            return False
        conn.in_flight += 1
        return True

    def _count_failed(self, failed: int) -> None:
        if failed:
            with self.cond:
                self.failed += failed
                self.cond.notify_all()

    def _release_held(self, conn: DeviceConnection, *, refused: bool) -> None:
        held, conn.held = conn.held, []
        if refused:
            self._count_failed(len(held))
            return
        self._count_failed(sum(not self._publish(conn, *message) for message in held))

    def _dial(self, now: float) -> None:
        while self._retry_heap and self._retry_heap[0][0] <= now:
            _, _, conn = heapq.heappop(self._retry_heap)
            if conn.state is not LinkState.IDLE:
                continue
            if conn.hold_until > now:
                # Cut (or dropped) again since this retry was planned: wait for the hold.
                if math.isfinite(conn.hold_until):
                    heapq.heappush(self._retry_heap, (conn.hold_until, conn.number, conn))
                continue
            self._dial_queue.append(conn)
        rate = self._connect_rate_per_s
        self._tokens = min(max(1.0, rate / 10.0), self._tokens + (now - self._tokens_at) * rate)
        self._tokens_at = now
        # Stopping: no dialing, a broker that stopped first must not hold up the shutdown.
        while self._dial_queue and self._tokens >= 1.0 and not self._closing and not self._stop.is_set():
            conn = self._dial_queue.popleft()
            if conn.state is not LinkState.IDLE or conn.hold_until > now:
                continue
            self._tokens -= 1.0
            self._connect(conn, now)

    def _connect(self, conn: DeviceConnection, now: float) -> None:
        client = self._client(conn)
        s = self.settings
        conn.state = LinkState.CONNECTING
        conn.deadline = now + s.connect_timeout_s
        try:
            if conn.attempts == 0 and not conn.connected_before:
                client.connect(s.host, s.port, keepalive=s.keepalive_s)
            else:
                client.reconnect()
        except (OSError, ValueError) as exc:
            log.debug("%s: connect failed: %s", conn.device_id, exc)
            self._retry_later(conn, now)

    def _retry_later(self, conn: DeviceConnection, now: float) -> None:
        conn.state = LinkState.IDLE
        conn.attempts += 1
        cap = max(_BACKOFF_FIRST_S, self.settings.reconnect_max_delay_s)
        delay = backoff_delay_s(conn.attempts - 1, _BACKOFF_FIRST_S, cap)
        due = max(now + delay, conn.hold_until)
        if math.isfinite(due):  # a cut device waits for restore() instead
            heapq.heappush(self._retry_heap, (due, conn.number, conn))

    def _misc(self, now: float) -> None:
        for conn in [c for c in self._cutting if c.cut_by is not None and now >= c.cut_by]:
            self._cut_now(conn)
        for conn in list(self._by_fd.values()):
            client = conn.client
            if client is None:
                continue
            if conn.state is LinkState.CONNECTING and now > conn.deadline:
                log.debug("%s: no CONNACK within %.0f s", conn.device_id, self.settings.connect_timeout_s)
                conn.abort()
                continue
            client.loop_misc()
            # Belt and braces: never leave queued bytes unwritten for want of a write event.
            if client.want_write():
                client.loop_write()

    def _shutdown(self, goodbye: bool) -> None:
        """Say goodbye, disconnect, and let the loop end."""
        self._closing = True
        self._dial_queue.clear()
        self._retry_heap.clear()
        for conn in self._cutting:
            conn.cut_by = None
            conn.abort()
        self._cutting.clear()
        for conn in self.devices:
            client = conn.client
            if client is None or conn.state is not LinkState.CONNECTED or math.isinf(conn.hold_until):
                if client is not None and client.socket() is not None:
                    conn.abort()
                continue
            if goodbye:
                # A clean disconnect suppresses the will: say "offline" ourselves first.
                conn.say(conn.status_topic, encode_status(False, now_ms()), STATUS_QOS, retain=True)
                self._leaving.append(conn)
            else:
                conn.abort()
        self._leave_by = time.monotonic() + _GOODBYE_ACK_WAIT_S

    def _disconnect_when_acked(self, now: float) -> None:
        """DISCONNECT once every goodbye is acknowledged: closing a socket with unread input (a
        late PUBACK) sends a TCP reset, which can make the broker lose the DISCONNECT and fire
        the will of a device that left cleanly."""
        if now < self._leave_by and any(conn.internal_mids for conn in self._leaving):
            return
        for conn in self._leaving:
            if conn.client is not None and conn.state is LinkState.CONNECTED:
                conn.client.disconnect()
        self._leaving = []

    def _cut_now(self, conn: DeviceConnection) -> None:
        conn.cut_by = None
        self._cutting.discard(conn)
        if conn.client is not None and conn.client.want_write():
            conn.client.loop_write()
        conn.abort()

    def _close_sockets(self) -> None:
        for conn in list(self._by_fd.values()):
            sock = conn.client.socket() if conn.client is not None else None
            if isinstance(sock, socket.socket):
                sock.close()
        self._by_fd.clear()

    # --- paho clients and their callbacks (I/O thread) -------------------------------------

    def _client(self, conn: DeviceConnection) -> mqtt.Client:
        if conn.client is not None:
            return conn.client
        client = new_client(conn, self.settings, self._device_key)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_socket_register_write
        client.on_socket_unregister_write = self._on_socket_unregister_write
        conn.client = client
        return client

    def _on_socket_open(self, client: mqtt.Client, conn: DeviceConnection, sock: Any) -> None:
        assert self._epoll is not None
        fd = sock.fileno()
        self._by_fd[fd] = conn
        self._epoll.register(fd, _EPOLL_IN)

    def _on_socket_close(self, client: mqtt.Client, conn: DeviceConnection, sock: Any) -> None:
        assert self._epoll is not None
        fd = sock.fileno()
        if self._by_fd.pop(fd, None) is not None:
            with contextlib.suppress(OSError, ValueError):
                self._epoll.unregister(fd)

    def _on_socket_register_write(self, client: mqtt.Client, conn: DeviceConnection, sock: Any) -> None:
        assert self._epoll is not None
        fd = sock.fileno()
        if fd in self._by_fd:
            self._epoll.modify(fd, _EPOLL_IN | _EPOLL_OUT)

    def _on_socket_unregister_write(self, client: mqtt.Client, conn: DeviceConnection, sock: Any) -> None:
        assert self._epoll is not None
        fd = sock.fileno()
        if fd in self._by_fd:
            self._epoll.modify(fd, _EPOLL_IN)

    def _on_connect(
        self, client: mqtt.Client, conn: DeviceConnection, flags: Any, reason: ReasonCode, properties: Any
    ) -> None:
        if reason.is_failure:
            if conn.refused_by(reason):
                self._release_held(conn, refused=True)
                with self.cond:
                    self.refused += 1
                    self.cond.notify_all()
            log.debug("%s: broker refused the connection: %s", conn.device_id, reason)
            return
        conn.accepted(subscribe=self._commands is not None)
        self._release_held(conn, refused=False)
        with self.cond:
            self.connected += 1
            self.connects += 1
            self.cond.notify_all()

    def _on_disconnect(
        self, client: mqtt.Client, conn: DeviceConnection, flags: Any, reason: ReasonCode, properties: Any
    ) -> None:
        was_connected = conn.state is LinkState.CONNECTED
        if was_connected:
            with self.cond:
                self.connected -= 1
                if not self._closing:
                    self.disconnects += 1
        if self._closing:
            conn.state = LinkState.CLOSED
        elif conn.state is not LinkState.REFUSED:
            if was_connected:
                log.debug("%s lost its connection (%s); reconnecting", conn.device_id, reason)
            self._retry_later(conn, time.monotonic())

    def _on_publish(
        self, client: mqtt.Client, conn: DeviceConnection, mid: int, reason: ReasonCode, properties: Any
    ) -> None:
        if not conn.acknowledged(mid):
            return
        if conn.cut_by is not None and conn.in_flight == 0:
            self._cut_now(conn)
        with self.cond:
            self.acked += 1
            self.cond.notify_all()

    def _on_message(self, client: mqtt.Client, conn: DeviceConnection, message: mqtt.MQTTMessage) -> None:
        if self._commands is None:
            return
        ack = self._commands.handle(message.topic, bytes(message.payload))
        if ack is not None:
            conn.say(ack.topic, ack.payload, COMMAND_QOS)
