"""Gateway connections: light MQTT 3.1.1 clients that publish on behalf of many devices.

Each gateway (simulator.wireclient.WireClient: packets appended to a buffer and written in
batches, one reader thread) tracks its own acknowledgements (a message counts as acknowledged
on PUBACK at QoS 1 and once written to the socket at QoS 0) and blocks the caller while too many
messages are still outstanding, so the simulator never runs ahead of the broker. With a command
book, the gateways also subscribe (with wildcards) to the command topics of their devices and
answer each command for them.

``Pool`` is what the runner needs of a set of connections; ``simulator.fleet.DeviceFleet``
(one connection per device) is the other implementation.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from types import TracebackType
from typing import Any, Protocol, Self

import orjson

from cityneuron.contract import TOPIC_ROOT, encode_status, now_ms
from cityneuron.settings import MqttSettings
from simulator.commands import CommandBook, command_subscriptions
from simulator.mqttwire import InboundPublish, Will
from simulator.wireclient import WireClient

log = logging.getLogger("cityneuron.simulator")

# Messages handed to the client but not yet acknowledged (or, at QoS 0, not yet written) before
# publish() waits: bounds memory (and the duplicates re-sent after a reconnect) and keeps well
# clear of the 65,535 message ids. The wire client's bookkeeping is one dict entry per message, so
# a window of thousands costs nothing and lets the broker acknowledge whole batches; measured with
# bench/sim_gateway.py on the 2-core machine while loaded by other work (noisy): QoS 1 about
# 30-46 k msg/s with windows from 1,000 to 20,000 and 24-30 k with 100; QoS 0 43-86 k msg/s
# whatever the window; paho on the same run: 7.4 k QoS 0, 3.9 k QoS 1.
MAX_OUTSTANDING = 2000
STATUS_QOS = 1


class DeviceLink(Protocol):
    """The connection a device's messages go through."""

    def publish(self, topic: str, payload: bytes, qos: int, *, retain: bool = False) -> bool: ...


class Pool(Protocol):
    """Connections publishing for the devices of a city, numbered in city table order.

    A context manager: connect on enter; on exit drain, say goodbye and disconnect, leaving
    ``unacked`` (messages never acknowledged) set.
    """

    unacked: int

    @property
    def errors(self) -> int: ...

    def gateway_for(self, device_number: int) -> DeviceLink: ...

    def __enter__(self) -> Any: ...

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...


def gateway_topic(client_id: str) -> str:
    """Status topic of a gateway connection itself (outside the device topic tree)."""
    return f"{TOPIC_ROOT}/gateways/{client_id}/status"


class Gateway:
    """One MQTT connection publishing for many devices, with acknowledgement accounting."""

    def __init__(
        self,
        settings: MqttSettings,
        client_id: str,
        *,
        max_outstanding: int = MAX_OUTSTANDING,
        stop: threading.Event | None = None,
        commands: CommandBook | None = None,
        command_topics: Sequence[str] = (),
    ) -> None:
        self.settings = settings
        self._commands = commands
        command_topics = list(command_topics) if commands is not None else []
        # Once set, publish() stops waiting for room: a dead broker must not block a shutdown.
        self._stop = stop or threading.Event()
        self.client_id = client_id
        self.max_outstanding = max_outstanding
        self.sent = 0
        self.acked = 0
        self.errors = 0
        self._cond = threading.Condition(threading.Lock())
        self._connected = threading.Event()
        # The will reports the gateway offline if it vanishes without a clean disconnect. It has
        # no ts: it fires long after it was set, and a status without ts is stamped on receipt.
        will = Will(gateway_topic(client_id), orjson.dumps({"online": False}), qos=STATUS_QOS, retain=True)
        self._client = WireClient(
            settings,
            client_id,
            will=will,
            subscriptions=[(topic, 1) for topic in command_topics],
            on_delivered=self._on_delivered,
            on_dropped=self._on_dropped,
            on_message=self._on_message if commands is not None else None,
            on_connection=self._on_connection,
            stop=self._stop,
        )

    # --- client callbacks (reader, flusher or publishing thread) ----------------------------

    def _on_delivered(self, count: int) -> None:
        with self._cond:
            self.acked += count
            self._cond.notify_all()

    def _on_dropped(self, count: int) -> None:
        # QoS 0 messages accepted but lost with the connection: count them as failed publishes.
        with self._cond:
            self.sent -= count
            self.errors += count
            self._cond.notify_all()

    def _on_connection(self, up: bool) -> None:
        if up:
            self._connected.set()
        else:
            self._connected.clear()

    def _on_message(self, message: InboundPublish) -> None:
        if self._commands is None:
            return
        ack = self._commands.handle(message.topic, message.payload)
        if ack is not None:
            # Not publish(): waiting for room here would block the very thread that processes
            # the acknowledgements. Acks are not device messages, so they are not counted.
            self._client.publish(ack.topic, ack.payload, 1, counted=False)

    # --- API -------------------------------------------------------------------------------

    @property
    def outstanding(self) -> int:
        with self._cond:
            return self.sent - self.acked

    def connect(self) -> None:
        """Connect (subscribing to the command topics) and announce the gateway online (retained)."""
        # Errors name the client id and say why (simulator.errors.PublishError).
        self._client.connect()
        self.publish(gateway_topic(self.client_id), encode_status(True, now_ms()), STATUS_QOS, retain=True)

    def publish(self, topic: str, payload: bytes, qos: int, *, retain: bool = False) -> bool:
        """Queue one message, first waiting while too many are outstanding.

        QoS 1 messages are kept while disconnected and sent after the reconnect; QoS 0 ones are
        refused then (False, counted in ``errors``).
        """
        with self._cond:
            while self.sent - self.acked >= self.max_outstanding and not self._stop.is_set():
                self._cond.wait(0.5)
            # Count before publishing: the acknowledgement may arrive before publish() returns.
            self.sent += 1
        if self._client.publish(topic, payload, qos, retain=retain):
            return True
        with self._cond:
            self.sent -= 1
            self.errors += 1
        log.debug("gateway %s: publish to %s failed: not connected", self.client_id, topic)
        return False

    def drain(self, deadline: float) -> int:
        """Wait until everything sent is acknowledged or ``deadline`` (monotonic) passes.

        While stopping, a lost connection is not dialed again (simulator.wireclient), so nothing
        more can be acknowledged: stop waiting then. Returns how many messages are still
        unacknowledged.
        """
        self._client.flush()
        with self._cond:
            while self.sent > self.acked:
                left = deadline - time.monotonic()
                if left <= 0 or (self._stop.is_set() and not self._client.connected):
                    break
                self._cond.wait(min(left, 0.5))
            return max(0, self.sent - self.acked)

    def close(self, *, goodbye: bool, deadline: float) -> int:
        """Drain, optionally announce the gateway offline, disconnect; return unacknowledged count."""
        if goodbye and self._connected.is_set():
            # A clean disconnect suppresses the will, so say "offline" ourselves.
            self.publish(
                gateway_topic(self.client_id), encode_status(False, now_ms()), STATUS_QOS, retain=True
            )
        unacked = self.drain(deadline)
        self._client.close()
        return unacked


class GatewayPool:
    """``connections`` gateways; a device always goes through the same one.

    Leaving the context waits up to ``drain_timeout_s`` in all for acknowledgements, says
    goodbye on each gateway's status topic and disconnects cleanly. With ``commands``, the
    command topics of the book's city are shared out over the gateways as wildcards, one per
    (district, kind).
    """

    def __init__(
        self,
        settings: MqttSettings,
        connections: int,
        client_id_prefix: str,
        *,
        stop: threading.Event | None = None,
        drain_timeout_s: float = 30.0,
        commands: CommandBook | None = None,
    ) -> None:
        topics = command_subscriptions(commands.city) if commands is not None else []
        self.gateways = [
            Gateway(
                settings,
                f"{client_id_prefix}-{n + 1}",
                stop=stop,
                commands=commands,
                command_topics=topics[n::connections],
            )
            for n in range(connections)
        ]
        self.drain_timeout_s = drain_timeout_s
        self.unacked = 0

    def __enter__(self) -> Self:
        try:
            for gateway in self.gateways:
                gateway.connect()
        except BaseException:
            self._close(goodbye=False, timeout_s=1.0)
            raise
        log.info("connected %d gateway connection(s)", len(self.gateways))
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._close(goodbye=True, timeout_s=self.drain_timeout_s)

    def _close(self, *, goodbye: bool, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        self.unacked = sum(g.close(goodbye=goodbye, deadline=deadline) for g in self.gateways)
        if self.unacked:
            log.warning("%d message(s) were not acknowledged within %.0f s", self.unacked, timeout_s)

    def gateway_for(self, device_number: int) -> Gateway:
        return self.gateways[device_number % len(self.gateways)]

    @property
    def errors(self) -> int:
        """Messages refused or lost (QoS 0 while disconnected)."""
        return sum(g.errors for g in self.gateways)
