"""Per-device mode: one MQTT connection per device, all driven by one thread over epoll.

paho's ``loop_start`` costs a thread and a select() per client, which stops near 340 clients in
one process. Here every paho client runs without a loop of its own: its socket callbacks
register the socket with one epoll, and a single I/O thread calls ``loop_read`` /
``loop_write`` when the kernel says so and ``loop_misc`` (keepalive) once a second. Every paho
call happens on that thread, so no paho client is ever touched by two threads; other threads
hand messages over through an inbox.

Each device connects with its own client id (its device id), its own credentials (username =
device id, password derived from the device key) and its own last will (retained
``{"online": false}`` on its status topic). Connections open at a bounded rate; a refused or
lost connection retries with exponential back-off and jitter, so a broker restart does not
become a reconnect storm of our own making. A device the broker refuses for its credentials
is not retried.
"""

from __future__ import annotations

import contextlib
import heapq
import logging
import math
import os
import random
import resource
import select
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from enum import Enum
from types import TracebackType
from typing import Any, Self

import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.reasoncodes import ReasonCode

from cityneuron.contract import CMD, STATUS, device_topic, encode_status, now_ms
from cityneuron.credentials import device_password, read_device_key
from cityneuron.mqttclient import configure_client
from cityneuron.settings import MqttSettings, Settings
from simulator.city import City, DeviceTable
from simulator.commands import CommandBook
from simulator.errors import PublishError
from simulator.publisher import GatewayPool, Pool

log = logging.getLogger("cityneuron.simulator")

STATUS_QOS = 1
COMMAND_QOS = 1
# New connections per second, initial ramp and reconnects together (a local Mosquitto takes
# thousands per second; the limit is about not causing the storm we are meant to simulate).
CONNECT_RATE_PER_S = 1000.0
# Messages accepted by publish() but not yet acknowledged, over the whole fleet.
MAX_OUTSTANDING = 20_000
# File descriptors kept free for everything else in the process (logs, database, pipes).
FD_HEADROOM = 256
_BACKOFF_FIRST_S = 1.0
_MISC_EVERY_S = 1.0
_GOODBYE_ACK_WAIT_S = 5.0
# A cut waits this long at most for the device's messages in flight to be acknowledged.
_CUT_ACK_WAIT_S = 5.0
_POLL_MAX_S = 0.25
_EPOLL_IN = select.EPOLLIN | select.EPOLLERR | select.EPOLLHUP
_EPOLL_OUT = select.EPOLLOUT
# CONNACK codes meaning "these credentials will never work" (MQTT 3.1.1 section 3.2.2.3 codes
# 4 and 5; MQTT 5 reason codes 0x86 and 0x87).
_AUTH_REFUSALS = {"Bad user name or password", "Not authorized"}


class _State(Enum):
    IDLE = "idle"  # never connected, or waiting for its back-off to end
    CONNECTING = "connecting"  # socket open, waiting for CONNACK
    CONNECTED = "connected"
    REFUSED = "refused"  # the broker refused its credentials: not retried
    CLOSED = "closed"


def ensure_fd_limit(needed: int) -> int:
    """Raise this process's soft RLIMIT_NOFILE to ``needed`` (and the hard one if we may).

    Returns the soft limit now in force; PublishError when it cannot be raised far enough.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return soft
    new_hard = hard if hard == resource.RLIM_INFINITY or hard >= needed else needed
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, new_hard))
    except (ValueError, OSError) as exc:
        raise PublishError(
            f"per-device mode needs {needed} open files but the limit is {soft} (hard {hard}) and"
            f" cannot be raised ({exc}): raise it (ulimit -n {needed}, or LimitNOFILE= in systemd)"
            " or simulate fewer devices"
        ) from None
    return needed


class DeviceConnection:
    """One device's MQTT connection; ``publish`` may be called from any thread."""

    __slots__ = (
        "attempts",
        "client",
        "command_topic",
        "connected_before",
        "cut_by",
        "deadline",
        "device_id",
        "fleet",
        "hold_until",
        "in_flight",
        "internal_mids",
        "number",
        "refusal",
        "row",
        "state",
        "status_topic",
        "table",
    )

    def __init__(self, fleet: DeviceFleet, number: int, table: DeviceTable, row: int) -> None:
        self.fleet = fleet
        self.number = number
        self.table = table
        self.row = row
        self.device_id = table.device_id(row)
        district, kind = table.district_slug(row), table.kind.name
        self.status_topic = device_topic(district, kind, self.device_id, STATUS)
        self.command_topic = device_topic(district, kind, self.device_id, CMD)
        self.client: mqtt.Client | None = None
        self.state = _State.IDLE
        self.attempts = 0
        self.deadline = 0.0
        self.hold_until = 0.0
        self.connected_before = False
        self.refusal = ""
        # Own messages handed to paho and not yet acknowledged (sent, for QoS 0).
        self.in_flight = 0
        # Set while a cut waits for ``in_flight`` to reach 0: the monotonic time it gives up.
        self.cut_by: float | None = None
        # Message ids of the device's own status and command acks: not counted as telemetry.
        self.internal_mids: set[int] = set()

    def publish(self, topic: str, payload: bytes, qos: int, *, retain: bool = False) -> bool:
        """Queue one message for this device's connection; False if the device was refused."""
        return self.fleet._submit(self, topic, payload, qos, retain)


class DeviceFleet:
    """One MQTT connection per device of ``city``, in city table order (the runner's numbering).

    ``device_key``: derive each device's password from it (username = device id); without
    it the settings' username/password (or none) serve every device. Entering connects every
    device at ``connect_rate_per_s`` and waits until all are connected or refused; leaving
    drains, publishes each device's retained "offline" (goodbye) and disconnects cleanly,
    or, after an exception, drops the sockets so the broker fires the wills.
    """

    def __init__(
        self,
        settings: MqttSettings,
        city: City,
        *,
        device_key: bytes | None = None,
        commands: CommandBook | None = None,
        stop: threading.Event | None = None,
        drain_timeout_s: float = 30.0,
        connect_rate_per_s: float = CONNECT_RATE_PER_S,
        max_outstanding: int = MAX_OUTSTANDING,
    ) -> None:
        self.settings = settings
        self._device_key = device_key
        self._commands = commands
        self._stop = stop or threading.Event()
        self.drain_timeout_s = drain_timeout_s
        self.connect_rate_per_s = float(connect_rate_per_s)
        self.max_outstanding = max_outstanding
        # Fail before building thousands of connection objects that could never all be open.
        ensure_fd_limit(city.devices + FD_HEADROOM)
        self.devices: list[DeviceConnection] = []
        for table in city.tables.values():
            for row in range(len(table)):
                self.devices.append(DeviceConnection(self, len(self.devices), table, row))
        self._rng = random.Random()
        # Counters; the lock guards them and the inbox.
        self._cond = threading.Condition()
        self._inbox: deque[tuple[DeviceConnection, str, bytes, int, bool] | Callable[[], None]] = deque()
        self._wake_pending = False
        self.sent = 0
        self.acked = 0
        self.failed = 0
        self._errors = 0
        self.connected = 0
        self.refused = 0
        self.disconnects = 0
        self.connects = 0
        self.unacked = 0
        self.commands_acked = 0
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

    # --- public API -----------------------------------------------------------------------

    def gateway_for(self, device_number: int) -> DeviceConnection:
        return self.devices[device_number]

    @property
    def errors(self) -> int:
        """Messages refused at once (the device's credentials were refused)."""
        with self._cond:
            return self._errors

    @property
    def outstanding(self) -> int:
        with self._cond:
            return self.sent - self.acked - self.failed

    def __enter__(self) -> Self:
        self._epoll = select.epoll()
        self._wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._epoll.register(self._wake_fd, select.EPOLLIN)
        self._dial_queue.extend(self.devices)
        self._thread = threading.Thread(target=self._io_main, name="sim-fleet-io", daemon=True)
        self._thread.start()
        try:
            self._await_ramp()
        except BaseException:
            self._close(goodbye=False, timeout_s=1.0)
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self._close(goodbye=True, timeout_s=self.drain_timeout_s)
        else:
            self._close(goodbye=False, timeout_s=1.0)

    def drop(self, device_numbers: Iterable[int], offline_for_s: float = 0.0) -> None:
        """Cut these devices' links without a DISCONNECT (the broker publishes their wills);
        each reconnects after its back-off, no sooner than ``offline_for_s`` from now."""
        numbers = list(device_numbers)

        def _drop() -> None:
            hold = time.monotonic() + offline_for_s
            for n in numbers:
                conn = self.devices[n]
                conn.hold_until = hold
                self._abort(conn)

        self._call_soon(_drop)

    def cut(self, device_numbers: Iterable[int]) -> None:
        """Take these devices off the network until :meth:`restore`: once each one's messages
        in flight are acknowledged (the power fails after the last report got through), its
        link is cut without a DISCONNECT, so the broker publishes its will."""
        numbers = list(device_numbers)

        def _cut() -> None:
            by = time.monotonic() + _CUT_ACK_WAIT_S
            for n in numbers:
                conn = self.devices[n]
                conn.hold_until = math.inf
                if conn.in_flight and conn.state is _State.CONNECTED:
                    conn.cut_by = by
                    self._cutting.add(conn)
                else:
                    self._abort(conn)

        self._call_soon(_cut)

    def restore(self, device_numbers: Iterable[int]) -> None:
        """Bring devices taken off by :meth:`cut` back: all of them dial at once, without the
        connection rate limit (a district whose power returns is the storm to simulate); each
        says it is online again when connected."""
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
                elif conn.state is _State.IDLE and not self._closing:
                    self._connect(conn, now)

        self._call_soon(_restore)

    # --- handing work to the I/O thread ----------------------------------------------------

    def _submit(self, conn: DeviceConnection, topic: str, payload: bytes, qos: int, retain: bool) -> bool:
        with self._cond:
            if conn.state is _State.REFUSED:
                self._errors += 1
                return False
            while self.sent - self.acked - self.failed >= self.max_outstanding and not self._stop.is_set():
                self._cond.wait(0.5)
            self.sent += 1
            self._inbox.append((conn, topic, payload, qos, retain))
            self._wake_locked()
        return True

    def _call_soon(self, fn: Callable[[], None]) -> None:
        with self._cond:
            self._inbox.append(fn)
            self._wake_locked()

    def _wake_locked(self) -> None:
        if not self._wake_pending and self._wake_fd >= 0:
            self._wake_pending = True
            os.eventfd_write(self._wake_fd, 1)

    # --- connecting and closing (caller's thread) ------------------------------------------

    def _await_ramp(self) -> None:
        n = len(self.devices)
        timeout = self.settings.connect_timeout_s + 2.0 * n / self.connect_rate_per_s
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.connected + self.refused < n and not self._stop.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(min(left, 0.5))
            connected, refused = self.connected, self.refused
        if refused:
            example = next(c for c in self.devices if c.state is _State.REFUSED)
            log.error(
                "the broker refused %d of %d device(s) (e.g. %s: %s): check simulator.device_key_file",
                refused,
                n,
                example.device_id,
                example.refusal,
            )
        if connected == 0 and not self._stop.is_set():
            s = self.settings
            raise PublishError(
                f"no device could connect to {s.host}:{s.port}"
                + (f" ({refused} refused: {example.refusal})" if refused else f" within {timeout:.0f} s")
            )
        if connected + refused < n:
            log.warning(
                "%d device(s) not connected yet after %.0f s; they keep trying",
                n - connected - refused,
                timeout,
            )
        log.info("connected %d device connection(s)", connected)

    def _close(self, *, goodbye: bool, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self.sent > self.acked + self.failed and time.monotonic() < deadline:
                self._cond.wait(min(0.5, max(0.0, deadline - time.monotonic())))
            self.unacked = max(0, self.sent - self.acked - self.failed)
        if self.unacked:
            log.warning("%d message(s) were not acknowledged within %.0f s", self.unacked, timeout_s)
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
                timeout = min(timeout, 1.0 / self.connect_rate_per_s)
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
        self._abort_sockets()

    def _run_inbox(self) -> None:
        with self._cond:
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
            info = self._client(conn).publish(topic, payload, qos=qos, retain=retain)
            # QoS 1 messages wait in paho for the (re)connect; QoS 0 ones are lost without a link.
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS and not (
                info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN and qos > 0
            ):
                failed += 1
            else:
                conn.in_flight += 1
        if failed:
            with self._cond:
                self.failed += failed
                self._cond.notify_all()

    def _dial(self, now: float) -> None:
        while self._retry_heap and self._retry_heap[0][0] <= now:
            _, _, conn = heapq.heappop(self._retry_heap)
            if conn.state is not _State.IDLE:
                continue
            if conn.hold_until > now:
                # Cut (or dropped) again since this retry was planned: wait for the hold.
                if math.isfinite(conn.hold_until):
                    heapq.heappush(self._retry_heap, (conn.hold_until, conn.number, conn))
                continue
            self._dial_queue.append(conn)
        rate = self.connect_rate_per_s
        self._tokens = min(max(1.0, rate / 10.0), self._tokens + (now - self._tokens_at) * rate)
        self._tokens_at = now
        while self._dial_queue and self._tokens >= 1.0 and not self._closing:
            conn = self._dial_queue.popleft()
            if conn.state is not _State.IDLE or conn.hold_until > now:
                continue
            self._tokens -= 1.0
            self._connect(conn, now)

    def _connect(self, conn: DeviceConnection, now: float) -> None:
        client = self._client(conn)
        s = self.settings
        conn.state = _State.CONNECTING
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
        conn.state = _State.IDLE
        conn.attempts += 1
        cap = max(_BACKOFF_FIRST_S, self.settings.reconnect_max_delay_s)
        # Exponential back-off with jitter, so devices that failed together do not retry together.
        delay = min(cap, _BACKOFF_FIRST_S * 2 ** min(conn.attempts - 1, 16)) * self._rng.uniform(0.5, 1.5)
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
            if conn.state is _State.CONNECTING and now > conn.deadline:
                log.debug("%s: no CONNACK within %.0f s", conn.device_id, self.settings.connect_timeout_s)
                sock = client.socket()
                if isinstance(sock, socket.socket):
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)
                continue
            client.loop_misc()
            # Belt and braces: never leave queued bytes unwritten for want of a write event.
            if client.want_write():
                client.loop_write()

    def _shutdown(self, goodbye: bool) -> None:
        """Runs on the I/O thread: say goodbye, disconnect, and let the loop end."""
        self._closing = True
        self._dial_queue.clear()
        self._retry_heap.clear()
        for conn in self._cutting:
            conn.cut_by = None
            self._abort(conn)
        self._cutting.clear()
        for conn in self.devices:
            client = conn.client
            if client is None or conn.state is not _State.CONNECTED or math.isinf(conn.hold_until):
                if client is not None and client.socket() is not None:
                    self._abort(conn)
                continue
            if goodbye:
                # A clean disconnect suppresses the will: say "offline" ourselves first.
                info = client.publish(
                    conn.status_topic, encode_status(False, now_ms()), qos=STATUS_QOS, retain=True
                )
                conn.internal_mids.add(info.mid)
                self._leaving.append(conn)
            else:
                self._abort(conn)
        self._leave_by = time.monotonic() + _GOODBYE_ACK_WAIT_S

    def _disconnect_when_acked(self, now: float) -> None:
        """DISCONNECT once every goodbye is acknowledged: closing a socket with unread input (a
        late PUBACK) sends a TCP reset, which can make the broker lose the DISCONNECT and fire
        the will of a device that left cleanly."""
        if now < self._leave_by and any(conn.internal_mids for conn in self._leaving):
            return
        for conn in self._leaving:
            if conn.client is not None and conn.state is _State.CONNECTED:
                conn.client.disconnect()
        self._leaving = []

    def _cut_now(self, conn: DeviceConnection) -> None:
        conn.cut_by = None
        self._cutting.discard(conn)
        if conn.client is not None and conn.client.want_write():
            conn.client.loop_write()
        self._abort(conn)

    def _abort(self, conn: DeviceConnection) -> None:
        sock = conn.client.socket() if conn.client is not None else None
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def _abort_sockets(self) -> None:
        for conn in list(self._by_fd.values()):
            sock = conn.client.socket() if conn.client is not None else None
            if isinstance(sock, socket.socket):
                sock.close()
        self._by_fd.clear()

    # --- paho clients and their callbacks (I/O thread) -------------------------------------

    def _client(self, conn: DeviceConnection) -> mqtt.Client:
        if conn.client is not None:
            return conn.client
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=conn.device_id,
            clean_session=True,
            protocol=mqtt.MQTTv311,
            userdata=conn,
        )
        client.max_queued_messages_set(0)
        if self._device_key is not None:
            configure_client(
                client,
                self.settings,
                username=conn.device_id,
                password=device_password(self._device_key, conn.device_id),
            )
        else:
            configure_client(client, self.settings)
        # No ts: the will fires long after it was set; a status without ts is stamped on receipt.
        client.will_set(conn.status_topic, orjson.dumps({"online": False}), qos=STATUS_QOS, retain=True)
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
            conn.refusal = str(reason)
            if str(reason) in _AUTH_REFUSALS:
                conn.state = _State.REFUSED
                with self._cond:
                    self.refused += 1
                    self._cond.notify_all()
            log.debug("%s: broker refused the connection: %s", conn.device_id, reason)
            return
        conn.state = _State.CONNECTED
        conn.attempts = 0
        if self._commands is not None:
            client.subscribe(conn.command_topic, qos=COMMAND_QOS)
        if conn.connected_before:
            # Back after a lost link: the will said "offline", so say "online" again, with the
            # registry facts, as the retained status carried them before the will replaced it.
            status = encode_status(True, now_ms(), device=conn.table.facts(conn.row))
            info = client.publish(conn.status_topic, status, qos=STATUS_QOS, retain=True)
            conn.internal_mids.add(info.mid)
        conn.connected_before = True
        with self._cond:
            self.connected += 1
            self.connects += 1
            self._cond.notify_all()

    def _on_disconnect(
        self, client: mqtt.Client, conn: DeviceConnection, flags: Any, reason: ReasonCode, properties: Any
    ) -> None:
        was_connected = conn.state is _State.CONNECTED
        if was_connected:
            with self._cond:
                self.connected -= 1
                if not self._closing:
                    self.disconnects += 1
        if self._closing:
            conn.state = _State.CLOSED
        elif conn.state is not _State.REFUSED:
            if was_connected:
                log.debug("%s lost its connection (%s); reconnecting", conn.device_id, reason)
            self._retry_later(conn, time.monotonic())

    def _on_publish(
        self, client: mqtt.Client, conn: DeviceConnection, mid: int, reason: ReasonCode, properties: Any
    ) -> None:
        if mid in conn.internal_mids:
            conn.internal_mids.discard(mid)
            return
        conn.in_flight = max(0, conn.in_flight - 1)
        if conn.cut_by is not None and conn.in_flight == 0:
            self._cut_now(conn)
        with self._cond:
            self.acked += 1
            self._cond.notify_all()

    def _on_message(self, client: mqtt.Client, conn: DeviceConnection, message: mqtt.MQTTMessage) -> None:
        if self._commands is None:
            return
        ack = self._commands.handle(message.topic, bytes(message.payload))
        if ack is not None:
            info = client.publish(ack.topic, ack.payload, qos=COMMAND_QOS)
            conn.internal_mids.add(info.mid)
            with self._cond:
                self.commands_acked += 1


def make_pool(
    settings: Settings,
    city: City,
    *,
    stop: threading.Event,
    commands: CommandBook | None = None,
    drain_timeout_s: float = 30.0,
) -> Pool:
    """The connections of ``settings.simulator.mode``: a few gateways, or one per device."""
    options = settings.simulator
    if options.mode == "device":
        key = read_device_key(options.device_key_file) if options.device_key_file is not None else None
        return DeviceFleet(
            settings.mqtt, city, device_key=key, commands=commands, stop=stop, drain_timeout_s=drain_timeout_s
        )
    return GatewayPool(
        settings.mqtt,
        options.connections,
        options.client_id_prefix,
        stop=stop,
        drain_timeout_s=drain_timeout_s,
        commands=commands,
    )
