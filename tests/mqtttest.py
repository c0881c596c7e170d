"""A plain paho client for tests that publish as a device or a gateway would."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion


@contextmanager
def publisher(port: int) -> Iterator[paho.Client]:
    """An MQTT 5 client connected (anonymously) to 127.0.0.1:``port``, its network loop running."""
    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        yield client
    finally:
        client.disconnect()
        client.loop_stop()
