"""The MQTT side of ingest: an MQTT 5 client with a persistent session and manual acks.

The client (cityneuron.mqtt5client) reads in bulk and hands each read's messages to the network
thread here, which only stamps and enqueues them. Flow control comes from MQTT 5 itself: the
broker sends at most ``receive_maximum`` unacknowledged QoS 1 messages, and ingest acks only
after the batch holding them has committed, so a slow or absent database stops the broker from
sending more. The bounded queue is the second line (QoS 0 floods): a full queue blocks this
thread, which stops reading the socket, which is TCP backpressure.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Iterable

from cityneuron import contract
from cityneuron.decode import Message
from cityneuron.mqtt5client import Mqtt5Client
from cityneuron.mqtt5wire import RETAIN_SEND_IF_NEW_SUB, RawPublish, Subscription, is_failure, reason_name
from cityneuron.settings import IngestSettings, MqttSettings
from ingest.alerts.engine import Transition
from ingest.observability import IngestMetrics

log = logging.getLogger("cityneuron.ingest")

# Keep the session (subscriptions and queued messages) through 30 days of ingest downtime, like
# the broker's persistent_client_expiration for MQTT 3 clients (broker/conf.d).
SESSION_EXPIRY_S = 30 * 24 * 3600
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
        self._subscribed = False
        self._subscribe_id = 0
        self._stopping = threading.Event()
        self._received = {
            channel: metrics.received.labels(channel) for channel in (contract.TELEMETRY, contract.STATUS)
        }
        self._received_other = metrics.received.labels("other")
        # clean_start=False: resume the session, so messages sent while ingest was down, and those
        # received but never acked, are delivered again.
        self._client = Mqtt5Client(
            mqtt,
            ingest.client_id,
            clean_start=False,
            session_expiry_s=SESSION_EXPIRY_S,
            receive_maximum=ingest.receive_maximum,
            on_connect=self._on_connect,
            on_subscribe=self._on_subscribe,
            on_publishes=self._on_publishes,
            on_disconnect=self._on_disconnect,
            logger=logging.getLogger("cityneuron.ingest.mqtt"),
        )

    @property
    def subscribed(self) -> bool:
        return self._subscribed

    def start(self) -> None:
        self._client.start()

    def stop_receiving(self) -> None:
        """Stop enqueueing; later messages stay unacked and the broker delivers them again."""
        self._stopping.set()

    def stop(self) -> None:
        self._stopping.set()
        self._subscribed = False
        self._client.close()

    def ack(self, messages: Iterable[Message]) -> int:
        """Acknowledge committed messages in one write; return how many were acked.

        Messages from an earlier connection are not acked: the broker redelivers them with their
        packet ids on the new connection, where an old id may by now name another message.
        """
        connection = self._client.connection
        qos1: list[int] = []
        qos2: list[int] = []
        for m in messages:
            if m.qos and m.generation == connection:
                (qos1 if m.qos == 1 else qos2).append(m.mid)
        if not (qos1 or qos2) or not self._client.ack(qos1, qos2, connection):
            return 0
        return len(qos1) + len(qos2)

    def publish_alerts(self, transitions: list[Transition]) -> None:
        """Publish committed alert transitions, QoS 1, on ``city/alerts/...``.

        The client keeps QoS 1 messages until the broker acknowledges them and sends them again
        after a reconnect; the ``alerts`` table, written before this, is the record.
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

    # --- client callbacks (network thread) ------------------------------------------------------

    def _on_connect(self, session_present: bool) -> None:
        self._subscribed = False
        if session_present and not self._ingest.share_group:
            # A session from before the plain default may still hold the group subscription it
            # had then: every reading would arrive twice. Harmless when there is none.
            self._client.unsubscribe([telemetry_filter(_FORMER_SHARE_GROUP)])
        self._subscribe_id = self._client.subscribe(
            [
                Subscription(telemetry_filter(self._ingest.share_group), qos=1),
                # Retained statuses once per session, not again on every reconnect.
                Subscription(status_filter(), qos=1, retain_handling=RETAIN_SEND_IF_NEW_SUB),
            ]
        )

    def _on_subscribe(self, packet_id: int, reason_codes: list[int]) -> None:
        if packet_id != self._subscribe_id:
            return
        failures = [reason_name(code) for code in reason_codes if is_failure(code)]
        if failures:
            log.error("mqtt subscription refused: %s", ", ".join(failures))
            return
        self._subscribed = True
        log.info(
            "mqtt subscribed telemetry=%s status=%s",
            telemetry_filter(self._ingest.share_group),
            status_filter(),
        )

    def _on_disconnect(self, reason: str) -> None:
        self._subscribed = False

    def _on_publishes(self, publishes: list[RawPublish], connection: int) -> None:
        if self._stopping.is_set():
            return
        now = time.time()
        messages = []
        channels: Counter[str] = Counter()
        for first, topic_bytes, packet_id, payload in publishes:
            try:
                topic = topic_bytes.decode()
            except UnicodeDecodeError:
                topic = "<topic is not UTF-8>"
            channels[topic[topic.rfind("/") + 1 :]] += 1
            messages.append(Message(topic, payload, packet_id, first >> 1 & 0x03, now, connection))
        for channel, count in channels.items():
            self._received.get(channel, self._received_other).inc(count)
        put = self._inbox.put
        for message in messages:
            while True:
                if self._stopping.is_set():
                    return
                try:
                    put(message, timeout=_PUT_POLL_S)
                    break
                except queue.Full:
                    continue
