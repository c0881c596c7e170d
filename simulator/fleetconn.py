"""One device's own MQTT link in per-device mode: its identity, its state and its paho client.

Each device connects with its own client id (its device id), its own credentials (username =
device id, password derived from the device key) and its own last will (retained
``{"online": false}`` on its status topic). The fleet's I/O thread (``simulator.fleetio``)
drives the client: every method here except ``publish`` runs on that thread only.
"""

from __future__ import annotations

import contextlib
import socket
from enum import Enum
from typing import TYPE_CHECKING

import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from cityneuron.contract import CMD, STATUS, device_topic, encode_status, now_ms
from cityneuron.credentials import device_password
from cityneuron.mqttclient import configure_client
from cityneuron.settings import MqttSettings
from simulator.city import DeviceTable

if TYPE_CHECKING:
    from simulator.fleet import DeviceFleet

STATUS_QOS = 1
COMMAND_QOS = 1
# CONNACK codes meaning "these credentials will never work" (MQTT 3.1.1 section 3.2.2.3 codes
# 4 and 5; MQTT 5 reason codes 0x86 and 0x87).
_AUTH_REFUSALS = {"Bad user name or password", "Not authorized"}


class LinkState(Enum):
    IDLE = "idle"  # never connected, or waiting for its back-off to end
    CONNECTING = "connecting"  # socket open, waiting for CONNACK
    CONNECTED = "connected"
    REFUSED = "refused"  # the broker refused its credentials: not retried
    CLOSED = "closed"


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
        "held",
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
        self.state = LinkState.IDLE
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
        # Telemetry handed over while the socket waits for its CONNACK: paho would write it right
        # behind the CONNECT, ahead of the "online" status that on_connect publishes.
        self.held: list[tuple[str, bytes, int, bool]] = []

    def publish(self, topic: str, payload: bytes, qos: int, *, retain: bool = False) -> bool:
        """Queue one message for this device's connection; False if the device was refused."""
        return self.fleet._submit(self, topic, payload, qos, retain)

    def say(self, topic: str, payload: bytes, qos: int, *, retain: bool = False) -> None:
        """Publish one of the device's own messages (a status, a command ack): not telemetry."""
        assert self.client is not None
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        self.internal_mids.add(info.mid)

    def accepted(self, *, subscribe: bool) -> None:
        """The broker accepted the connection: subscribe to commands (``subscribe``) and,
        back after a lost link, say "online" again."""
        assert self.client is not None
        self.state = LinkState.CONNECTED
        self.attempts = 0
        if subscribe:
            self.client.subscribe(self.command_topic, qos=COMMAND_QOS)
        if self.connected_before:
            # Back after a lost link: the will said "offline", so say "online" again, with the
            # registry facts, as the retained status carried them before the will replaced it.
            status = encode_status(True, now_ms(), device=self.table.facts(self.row))
            self.say(self.status_topic, status, STATUS_QOS, retain=True)
        self.connected_before = True

    def refused_by(self, reason: ReasonCode) -> bool:
        """The broker refused the connection; True if for the credentials (never retried)."""
        self.refusal = str(reason)
        if self.refusal in _AUTH_REFUSALS:
            self.state = LinkState.REFUSED
            return True
        return False

    def acknowledged(self, mid: int) -> bool:
        """Note the acknowledgement of message ``mid``; True if it was telemetry."""
        if mid in self.internal_mids:
            self.internal_mids.discard(mid)
            return False
        self.in_flight = max(0, self.in_flight - 1)
        return True

    def abort(self) -> None:
        """Cut the link without a DISCONNECT (the broker then publishes the will)."""
        sock = self.client.socket() if self.client is not None else None
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


def new_client(conn: DeviceConnection, settings: MqttSettings, device_key: bytes | None) -> mqtt.Client:
    """A paho client for ``conn`` with its own client id, credentials and will; no callbacks.

    ``device_key``: derive the password from it (username = device id); without it the
    settings' username/password (or none) serve.
    """
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=conn.device_id,
        clean_session=True,
        protocol=mqtt.MQTTv311,
        userdata=conn,
    )
    client.max_queued_messages_set(0)
    if device_key is not None:
        configure_client(
            client,
            settings,
            username=conn.device_id,
            password=device_password(device_key, conn.device_id),
        )
    else:
        configure_client(client, settings)
    # No ts: the will fires long after it was set; a status without ts is stamped on receipt.
    client.will_set(conn.status_topic, orjson.dumps({"online": False}), qos=STATUS_QOS, retain=True)
    return client
