"""Per-device mode: one MQTT connection per device, all driven by one thread over epoll.

``DeviceFleet`` is the ``Pool`` the runner publishes through: it builds one
``DeviceConnection`` per device (``simulator.fleetconn``: own client id, own credentials, own
last will), hands them to one I/O thread (``simulator.fleetio``: epoll, rate-limited dialing,
back-off, keepalive, goodbye), waits for the ramp on entry and drains on exit. Scenario
outages and reconnect storms take devices off the network with ``cut`` / ``restore`` / ``drop``.
"""

from __future__ import annotations

import logging
import resource
import threading
import time
from collections.abc import Iterable
from types import TracebackType
from typing import Self

from cityneuron.credentials import read_device_key
from cityneuron.settings import MqttSettings, Settings
from simulator.city import City
from simulator.commands import CommandBook
from simulator.errors import PublishError
from simulator.fleetconn import DeviceConnection, LinkState
from simulator.fleetio import FleetIO
from simulator.publisher import GatewayPool, Pool

__all__ = [
    "CONNECT_RATE_PER_S",
    "FD_HEADROOM",
    "MAX_OUTSTANDING",
    "DeviceConnection",
    "DeviceFleet",
    "ensure_fd_limit",
    "make_pool",
]

log = logging.getLogger("cityneuron.simulator")

# New connections per second, initial ramp and reconnects together (a local Mosquitto takes
# thousands per second; the limit is about not causing the storm we are meant to simulate).
CONNECT_RATE_PER_S = 1000.0
# Messages accepted by publish() but not yet acknowledged, over the whole fleet.
MAX_OUTSTANDING = 20_000
# File descriptors kept free for everything else in the process (logs, database, pipes).
FD_HEADROOM = 256


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
        self._io = FleetIO(
            settings,
            self.devices,
            device_key=device_key,
            commands=commands,
            stop=self._stop,
            connect_rate_per_s=self.connect_rate_per_s,
            max_outstanding=max_outstanding,
        )
        # Messages never acknowledged, set on leaving.
        self.unacked = 0

    # --- counters (the I/O thread keeps them) ------------------------------------------------

    @property
    def sent(self) -> int:
        return self._io.sent

    @property
    def acked(self) -> int:
        return self._io.acked

    @property
    def failed(self) -> int:
        return self._io.failed

    @property
    def connected(self) -> int:
        return self._io.connected

    @property
    def refused(self) -> int:
        return self._io.refused

    @property
    def connects(self) -> int:
        return self._io.connects

    @property
    def disconnects(self) -> int:
        """Links lost (not counting the goodbye on leaving)."""
        return self._io.disconnects

    @property
    def errors(self) -> int:
        """Messages refused at once (the device's credentials were refused)."""
        with self._io.cond:
            return self._io.errors

    @property
    def outstanding(self) -> int:
        with self._io.cond:
            return self._io.sent - self._io.acked - self._io.failed

    # --- public API -----------------------------------------------------------------------

    def gateway_for(self, device_number: int) -> DeviceConnection:
        return self.devices[device_number]

    def __enter__(self) -> Self:
        self._io.start()
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
        self._io.drop(device_numbers, offline_for_s)

    def cut(self, device_numbers: Iterable[int]) -> None:
        """Take these devices off the network until :meth:`restore`: once each one's messages
        in flight are acknowledged (the power fails after the last report got through), its
        link is cut without a DISCONNECT, so the broker publishes its will."""
        self._io.cut(device_numbers)

    def restore(self, device_numbers: Iterable[int]) -> None:
        """Bring devices taken off by :meth:`cut` back: all of them dial at once, without the
        connection rate limit (a district whose power returns is the storm to simulate); each
        says it is online again when connected."""
        self._io.restore(device_numbers)

    def _submit(self, conn: DeviceConnection, topic: str, payload: bytes, qos: int, retain: bool) -> bool:
        return self._io.submit(conn, topic, payload, qos, retain)

    # --- connecting and closing -------------------------------------------------------------

    def _await_ramp(self) -> None:
        io = self._io
        n = len(self.devices)
        timeout = self.settings.connect_timeout_s + 2.0 * n / self.connect_rate_per_s
        deadline = time.monotonic() + timeout
        with io.cond:
            while io.connected + io.refused < n and not self._stop.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                io.cond.wait(min(left, 0.5))
            connected, refused = io.connected, io.refused
        if refused:
            example = next(c for c in self.devices if c.state is LinkState.REFUSED)
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

    def _acknowledgeable(self) -> bool:
        """Whether a connected device still waits for acknowledgements: while stopping, nothing
        is dialed again (simulator.fleetio), so the others' messages never will be."""
        return any(c.in_flight and c.state is LinkState.CONNECTED for c in self.devices)

    def _close(self, *, goodbye: bool, timeout_s: float) -> None:
        io = self._io
        deadline = time.monotonic() + timeout_s
        with io.cond:
            while io.sent > io.acked + io.failed and time.monotonic() < deadline:
                if self._stop.is_set() and not self._acknowledgeable():
                    break
                io.cond.wait(min(0.5, max(0.0, deadline - time.monotonic())))
            self.unacked = max(0, io.sent - io.acked - io.failed)
        if self.unacked:
            log.warning("%d message(s) were not acknowledged within %.0f s", self.unacked, timeout_s)
        io.close(goodbye=goodbye, deadline=deadline)


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
