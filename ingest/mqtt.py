"""The MQTT side of ingest: a paho v5 client with a persistent session and manual acks.

The network thread only stamps and enqueues messages. Flow control comes from MQTT 5 itself:
the broker sends at most ``receive_maximum`` unacknowledged QoS 1 messages, and ingest acks only
after the batch holding them has committed, so a slow or absent database stops the broker from
sending more. The bounded queue is the second line (QoS 0 floods): a full queue blocks this
thread, which stops reading the socket, which is TCP backpressure.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from collections.abc import Iterable
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from cityneuron import contract
from cityneuron.decode import Message
from cityneuron.mqttclient import mqtt5_client
from cityneuron.settings import IngestSettings, MqttSettings
from ingest.alerts.engine import Transition
from ingest.observability import IngestMetrics
from ingest.paholoop import BufferedClient

log = logging.getLogger("cityneuron.ingest")

# Keep the session (subscriptions and queued messages) through 30 days of ingest downtime, like
# the broker's persistent_client_expiration for MQTT 3 clients (broker/conf.d).
SESSION_EXPIRY_S = 30 * 24 * 3600
# Up to this much random delay before a reconnect, so a fleet of ingest processes does not
# reconnect in lockstep after a broker restart.
_RECONNECT_JITTER_S = 1.0
_PUT_POLL_S = 0.5
# The share group every ingest used before one process subscribed plainly by default.
_FORMER_SHARE_GROUP = "cityneuron-ingest"


def telemetry_filter(share_group: str) -> str:
    """A plain subscription (no group), or a shared one: the broker spreads telemetry over every
    ingest process of the group.

    Only the plain one survives a broker restart: Mosquitto 2.0 saves a persistent session's
    subscriptions but not its shared ones (src/persist_write.c, persist__subs_save writes the
    normal leaves only; checked against 2.0.21), so after a restart it acknowledges and drops the
    readings that arrive before a grouped ingest has subscribed again."""
    if not share_group:
        return contract.subscription(contract.TELEMETRY)
    return f"$share/{share_group}/{contract.subscription(contract.TELEMETRY)}"


def status_filter() -> str:
    """Status is retained, and MQTT 5 sends no retained messages to shared subscriptions
    (MQTT 5.0 section 4.8.2), so every ingest process subscribes on its own; applying a status is
    idempotent."""
    return contract.subscription(contract.STATUS)


class MqttSource:
    """Receives telemetry and status into ``inbox``; acks what the writer has committed."""

    def __init__(
        self,
        mqtt: MqttSettings,
        ingest: IngestSettings,
        inbox: queue.Queue[Message],
        metrics: IngestMetrics,
    ) -> None:
        self._mqtt = mqtt
        self._ingest = ingest
        self._inbox = inbox
        self._metrics = metrics
        self._lock = threading.Lock()
        self._generation = 0
        self._subscribed = False
        self._connected_once = False
        self._stopping = threading.Event()
        self._received = {
            channel: metrics.received.labels(channel) for channel in (contract.TELEMETRY, contract.STATUS)
        }
        self._received_other = metrics.received.labels("other")
        self._client = self._make_client()

    def _make_client(self) -> BufferedClient:
        client = mqtt5_client(
            self._ingest.client_id, self._mqtt, "cityneuron.ingest.paho", client_class=BufferedClient
        )
        assert isinstance(client, BufferedClient)
        client.manual_ack_set(True)
        client.on_pre_connect = self._on_pre_connect
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        return client

    @property
    def subscribed(self) -> bool:
        return self._subscribed

    def start(self) -> None:
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = SESSION_EXPIRY_S
        properties.ReceiveMaximum = self._ingest.receive_maximum
        # clean_start=False: resume the session, so messages sent while ingest was down, and those
        # received but never acked, are delivered again.
        self._client.connect_async(
            self._mqtt.host,
            self._mqtt.port,
            keepalive=self._mqtt.keepalive_s,
            clean_start=False,
            properties=properties,
        )
        self._client.loop_start()

    def stop_receiving(self) -> None:
        """Stop enqueueing; later messages stay unacked and the broker delivers them again."""
        self._stopping.set()

    def stop(self) -> None:
        self._stopping.set()
        self._client.disconnect()
        self._client.loop_stop()
        self._subscribed = False

    def ack(self, messages: Iterable[Message]) -> int:
        """Acknowledge committed messages in order; return how many were acked.

        Messages from an earlier connection are not acked: the broker redelivers them with their
        packet ids on the new connection, where an old id may by now name another message.
        """
        with self._lock:
            generation = self._generation
            current = [m for m in messages if m.qos > 0 and m.generation == generation]
            self._client.ack_many(m.mid for m in current if m.qos == 1)
            for message in current:
                if message.qos > 1:
                    self._client.ack(message.mid, message.qos)
        return len(current)

    def publish_alerts(self, transitions: list[Transition]) -> None:
        """Publish committed alert transitions, QoS 1, on ``city/alerts/...``.

        paho keeps QoS 1 messages published while disconnected and sends them once the
        connection is back; the ``alerts`` table, written before this, is the record.
        """
        for t in transitions:
            topic = contract.alert_topic(t.district, t.kind, t.device_id, t.rule)
            payload = contract.encode_alert(
                state=t.state,
                rule=t.rule,
                severity=t.severity,
                device_id=t.device_id,
                kind=t.kind,
                district=t.district,
                ts_ms=t.ts_ms,
                value=t.value,
                detail=t.detail,
            )
            self._client.publish(topic, payload, qos=1)
            self._metrics.alerts_published.labels(t.state).inc()

    # --- paho callbacks (network thread) --------------------------------------------------------

    def _on_pre_connect(self, client: paho.Client, userdata: Any) -> None:
        if self._connected_once:
            time.sleep(random.uniform(0, _RECONNECT_JITTER_S))

    def _on_connect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        with self._lock:
            self._generation += 1
            self._subscribed = False
        if reason_code.is_failure:
            log.error("mqtt connect refused by %s:%d: %s", self._mqtt.host, self._mqtt.port, reason_code)
            return
        self._connected_once = True
        log.info(
            "mqtt connected host=%s port=%d client_id=%s session_present=%s",
            self._mqtt.host,
            self._mqtt.port,
            self._ingest.client_id,
            flags.session_present,
        )
        if flags.session_present and not self._ingest.share_group:
            # A session from before the plain default may still hold the group subscription it
            # had then: every reading would arrive twice. Harmless when there is none.
            client.unsubscribe(telemetry_filter(_FORMER_SHARE_GROUP))
        client.subscribe(
            [
                (telemetry_filter(self._ingest.share_group), SubscribeOptions(qos=1)),
                # Retained statuses once per session, not again on every reconnect.
                (
                    status_filter(),
                    SubscribeOptions(qos=1, retainHandling=SubscribeOptions.RETAIN_SEND_IF_NEW_SUB),
                ),
            ]
        )

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
            log.error("mqtt subscription refused: %s", ", ".join(failures))
            return
        self._subscribed = True
        log.info(
            "mqtt subscribed telemetry=%s status=%s",
            telemetry_filter(self._ingest.share_group),
            status_filter(),
        )

    def _on_disconnect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        with self._lock:
            self._generation += 1
            self._subscribed = False
        if not self._stopping.is_set():
            log.warning("mqtt disconnected: %s; reconnecting", reason_code)

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        try:
            topic = msg.topic
        except UnicodeDecodeError:
            topic = "<topic is not UTF-8>"
        message = Message(topic, bytes(msg.payload), msg.mid, msg.qos, time.time(), self._generation)
        self._received.get(topic.rsplit("/", 1)[-1], self._received_other).inc()
        while not self._stopping.is_set():
            try:
                self._inbox.put(message, timeout=_PUT_POLL_S)
                return
            except queue.Full:
                continue
