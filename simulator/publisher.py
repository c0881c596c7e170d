"""Gateway connections: paho-mqtt clients that publish on behalf of many devices.

Each gateway tracks its own acknowledgements (on_publish fires on PUBACK for QoS 1 and once
the packet is written for QoS 0) and blocks the caller while too many messages are still
outstanding, so the simulator never runs ahead of the broker. With a command book, the
gateways also subscribe (with wildcards) to the command topics of their devices and answer
each command for them.

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
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.reasoncodes import ReasonCode

from cityneuron.contract import TOPIC_ROOT, encode_status, now_ms
from cityneuron.mqttclient import configure_client
from cityneuron.settings import MqttSettings
from simulator.commands import CommandBook, command_subscriptions
from simulator.errors import PublishError

log = logging.getLogger("cityneuron.simulator")

# paho keeps up to this many QoS 1 messages in flight before queueing locally; the broker
# acknowledges each as soon as it has stored it.
MAX_INFLIGHT = 1000
# Messages handed to paho but not yet acknowledged (or, at QoS 0, not yet written) before
# publish() waits: bounds memory and keeps well clear of the 65,535 message ids. A small window
# is faster, not slower: with thousands outstanding paho's per-message bookkeeping dominates
# (bench/sim_gateway.py: QoS 1 6.4 k msg/s with 100 vs 2.5 k with 5,000; QoS 0 about equal).
MAX_OUTSTANDING = 100
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
        self._command_topics = list(command_topics) if commands is not None else []
        # Once set, publish() stops waiting for room: a dead broker must not block a shutdown.
        self._stop = stop or threading.Event()
        self.client_id = client_id
        self.max_outstanding = max_outstanding
        self.sent = 0
        self.acked = 0
        self.errors = 0
        self._cond = threading.Condition()
        self._connected = threading.Event()
        self._refused: str | None = None
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=True,
            protocol=mqtt.MQTTv311,
        )
        self._client.max_inflight_messages_set(MAX_INFLIGHT)
        self._client.max_queued_messages_set(0)
        self._client.reconnect_delay_set(1, max(1, int(settings.reconnect_max_delay_s)))
        configure_client(self._client, settings)
        # The will reports the gateway offline if it vanishes without a clean disconnect. It has
        # no ts: it fires long after it was set, and a status without ts is stamped on receipt.
        self._client.will_set(
            gateway_topic(client_id), orjson.dumps({"online": False}), qos=STATUS_QOS, retain=True
        )
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_publish = self._on_publish
        self._client.on_message = self._on_message

    # --- paho callbacks (network thread) ---------------------------------------------------

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, properties: Any
    ) -> None:
        if reason.is_failure:
            self._refused = str(reason)
            log.error("gateway %s: broker refused the connection: %s", self.client_id, reason)
        else:
            log.debug("gateway %s connected", self.client_id)
            # A clean session forgets subscriptions: subscribe again on every connect.
            if self._command_topics:
                client.subscribe([(topic, 1) for topic in self._command_topics])
            self._connected.set()

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, properties: Any
    ) -> None:
        self._connected.clear()
        if reason.is_failure:
            log.warning("gateway %s lost its connection (%s); paho reconnects", self.client_id, reason)

    def _on_publish(
        self, client: mqtt.Client, userdata: Any, mid: int, reason: ReasonCode, properties: Any
    ) -> None:
        with self._cond:
            self.acked += 1
            self._cond.notify_all()

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        if self._commands is None:
            return
        ack = self._commands.handle(message.topic, bytes(message.payload))
        if ack is not None:
            # Straight to paho, not publish(): waiting for room here would block the very
            # thread that processes the acknowledgements. Acks are not device messages.
            client.publish(ack.topic, ack.payload, qos=1)

    # --- API -------------------------------------------------------------------------------

    @property
    def outstanding(self) -> int:
        with self._cond:
            return self.sent - self.acked

    def connect(self) -> None:
        """Connect, start the network thread and announce the gateway online (retained)."""
        s = self.settings
        try:
            self._client.connect(s.host, s.port, keepalive=s.keepalive_s)
        except OSError as exc:
            raise PublishError(
                f"gateway {self.client_id}: cannot connect to {s.host}:{s.port}: {exc}"
            ) from exc
        self._client.loop_start()
        if not self._connected.wait(s.connect_timeout_s) or self._refused:
            self._client.loop_stop()
            reason = self._refused or f"no CONNACK within {s.connect_timeout_s} s"
            raise PublishError(f"gateway {self.client_id}: {reason}")
        self.publish(gateway_topic(self.client_id), encode_status(True, now_ms()), STATUS_QOS, retain=True)

    def publish(self, topic: str, payload: bytes, qos: int, *, retain: bool = False) -> bool:
        """Hand one message to paho, first waiting while too many are outstanding."""
        with self._cond:
            while self.sent - self.acked >= self.max_outstanding and not self._stop.is_set():
                self._cond.wait(0.5)
            # Count before publishing: the acknowledgement may arrive before publish() returns.
            self.sent += 1
        # Not under our lock: paho calls on_publish while holding its own message lock.
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        # QoS 1 messages are queued while disconnected and sent after the reconnect;
        # QoS 0 messages are dropped then.
        if info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS or (
            info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN and qos > 0
        ):
            return True
        with self._cond:
            self.sent -= 1
            self.errors += 1
        log.debug("gateway %s: publish to %s failed: %s", self.client_id, topic, info.rc)
        return False

    def drain(self, deadline: float) -> int:
        """Wait until everything sent is acknowledged or ``deadline`` (monotonic) passes.

        Returns how many messages are still unacknowledged.
        """
        with self._cond:
            while self.sent > self.acked:
                left = deadline - time.monotonic()
                if left <= 0:
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
        self._client.disconnect()
        self._client.loop_stop()
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
        """Messages paho refused (QoS 0 while disconnected)."""
        return sum(g.errors for g in self.gateways)
