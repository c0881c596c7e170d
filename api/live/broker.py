"""The API's one MQTT 5 connection: live telemetry and alerts in, commands out, acks in.

paho's network thread decodes and hands results to the event loop with
``call_soon_threadsafe``; nothing on that thread touches the hub or the database. paho
reconnects by itself with back-off, so the API serves everything else while the broker is down
and the streams resume when it is back.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from api.errors import ApiError
from api.live.events import alert_event, reading_events
from api.live.hub import Hub
from cityneuron import contract
from cityneuron.errors import ContractError
from cityneuron.mqttclient import mqtt5_client
from cityneuron.settings import MqttSettings

log = logging.getLogger("cityneuron.api.live")

# How long a command publish may wait for the broker's PUBACK before the API gives up.
PUBLISH_TIMEOUT_S = 5.0
# How long the telemetry subscription outlives the last stream client.
TELEMETRY_LINGER_S = 10.0
_SUBSCRIBED_POLL_S = 0.05

AckHandler = Callable[[contract.DeviceTopic, contract.CommandAck], None]


class BrokerUnavailable(ApiError):
    status_code = 503
    code = "broker_unavailable"


def subscriptions() -> list[tuple[str, SubscribeOptions]]:
    """Alerts and command acks at QoS 1, always."""
    return [
        (f"{contract.ALERTS_TOPIC_ROOT}/#", SubscribeOptions(qos=1)),
        (contract.subscription(contract.CMD_ACK), SubscribeOptions(qos=1)),
    ]


def telemetry_subscription() -> tuple[str, SubscribeOptions]:
    """Telemetry at QoS 0 (a live view, missing one is harmless), only while a stream client
    listens: at 1:1 the city sends 2,850 messages/s, and receiving them for nobody cost the API
    about half a core."""
    return (contract.subscription(contract.TELEMETRY), SubscribeOptions(qos=0))


class BrokerLink:
    """Owns the paho client; ``start`` and ``stop`` from the application lifespan."""

    def __init__(
        self,
        mqtt: MqttSettings,
        hub: Hub,
        on_ack: AckHandler,
        client_id: str | None = None,
        telemetry_linger_s: float = TELEMETRY_LINGER_S,
    ) -> None:
        self._mqtt = mqtt
        self._hub = hub
        self._on_ack = on_ack
        # Unique per process: several API workers each keep their own connection.
        self.client_id = client_id or f"cityneuron-api-{uuid.uuid4().hex[:12]}"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._subscribed = threading.Event()
        # Telemetry: wanted while the hub has clients; subscribed once the broker said so.
        self._lock = threading.Lock()
        self._telemetry_wanted = False
        self._telemetry_mid: int | None = None
        self._telemetry_subscribed = threading.Event()
        self._telemetry_linger_s = telemetry_linger_s
        # Telemetry messages the broker delivered to this link (to see that idle costs nothing).
        self.telemetry_received = 0
        self._client = self._make_client()
        hub.on_demand(self._telemetry_demand)

    def _make_client(self) -> paho.Client:
        client = mqtt5_client(self.client_id, self._mqtt, "cityneuron.api.paho")
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        return client

    @property
    def connected(self) -> bool:
        return self._client.is_connected()

    @property
    def subscribed(self) -> bool:
        """Connected, with alerts and acks subscribed, and telemetry too while clients listen."""
        telemetry = self._telemetry_subscribed.is_set() or not self._telemetry_wanted
        return self._subscribed.is_set() and telemetry and self._client.is_connected()

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Connect in the background; paho retries until the broker answers."""
        self._loop = loop
        self._client.connect_async(self._mqtt.host, self._mqtt.port, keepalive=self._mqtt.keepalive_s)
        self._client.loop_start()

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    async def wait_subscribed(self, timeout_s: float) -> bool:
        """Whether the subscriptions are in place, waiting up to ``timeout_s`` for them."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while not self.subscribed and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(_SUBSCRIBED_POLL_S)
        return self.subscribed

    async def publish(self, topic: str, payload: bytes, *, qos: int = 1) -> None:
        """Publish and wait for the broker's acknowledgement; BrokerUnavailable when it cannot be had."""
        if not self._client.is_connected():
            raise BrokerUnavailable(
                f"MQTT broker {self._mqtt.host}:{self._mqtt.port} is unreachable; try again later"
            )
        info = self._client.publish(topic, payload, qos=qos)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise BrokerUnavailable(f"MQTT publish failed: {paho.error_string(info.rc)}")
        try:
            await asyncio.to_thread(info.wait_for_publish, PUBLISH_TIMEOUT_S)
        except (RuntimeError, ValueError) as exc:
            raise BrokerUnavailable(f"MQTT publish failed: {exc}") from exc
        if not info.is_published():
            raise BrokerUnavailable(f"the MQTT broker did not acknowledge within {PUBLISH_TIMEOUT_S:g} s")

    def _telemetry_demand(self, wanted: bool) -> None:
        """From the hub (event loop): the first client arrived or the last one left."""
        if wanted:
            with self._lock:
                self._telemetry_wanted = True
                if self._client.is_connected() and self._telemetry_mid is None:
                    self._subscribe_telemetry(self._client)
        elif self._loop is not None:
            # A client that reconnects at once (a dashboard changing its filter) keeps the feed.
            self._loop.call_later(self._telemetry_linger_s, self._drop_telemetry)

    def _drop_telemetry(self) -> None:
        if self._hub.has_subscribers:
            return
        with self._lock:
            self._telemetry_wanted = False
            self._telemetry_subscribed.clear()
            if self._telemetry_mid is not None and self._client.is_connected():
                self._client.unsubscribe(telemetry_subscription()[0])
            self._telemetry_mid = None

    def _subscribe_telemetry(self, client: paho.Client) -> None:
        # Called with self._lock held.
        self._telemetry_subscribed.clear()
        _, mid = client.subscribe([telemetry_subscription()])
        self._telemetry_mid = mid

    # --- paho callbacks (network thread) --------------------------------------------------------

    def _on_connect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            log.error("api mqtt connect refused by %s:%d: %s", self._mqtt.host, self._mqtt.port, reason_code)
            return
        log.info(
            "api mqtt connected host=%s port=%d client_id=%s",
            self._mqtt.host,
            self._mqtt.port,
            self.client_id,
        )
        client.subscribe(subscriptions())
        with self._lock:
            self._telemetry_mid = None
            if self._telemetry_wanted:
                self._subscribe_telemetry(client)

    def _on_subscribe(
        self,
        client: paho.Client,
        userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        failures = [str(code) for code in reason_codes if code.is_failure]
        if failures:
            log.error("api mqtt subscription refused: %s", ", ".join(failures))
            return
        with self._lock:
            if mid == self._telemetry_mid:
                self._telemetry_subscribed.set()
                return
        self._subscribed.set()

    def _on_disconnect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self._subscribed.clear()
        self._telemetry_subscribed.clear()
        if reason_code.is_failure:
            log.warning("api mqtt disconnected: %s; reconnecting", reason_code)

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            topic = msg.topic
        except UnicodeDecodeError:
            return
        try:
            if topic.startswith(contract.ALERTS_TOPIC_ROOT + "/"):
                if self._hub.has_subscribers and (event := alert_event(bytes(msg.payload))) is not None:
                    loop.call_soon_threadsafe(self._hub.publish, [event])
                return
            parsed = contract.parse_topic(topic)
            if parsed.channel == contract.CMD_ACK:
                ack = contract.decode_command_ack(bytes(msg.payload))
                loop.call_soon_threadsafe(self._on_ack, parsed, ack)
            elif parsed.channel == contract.TELEMETRY:
                self.telemetry_received += 1
                if self._hub.has_subscribers and (events := reading_events(parsed, bytes(msg.payload))):
                    loop.call_soon_threadsafe(self._hub.publish, events)
        except ContractError as exc:
            log.debug("api mqtt: %s skipped: %s", topic, exc)
        except RuntimeError:
            pass  # the loop closed between the check and the call: shutting down
