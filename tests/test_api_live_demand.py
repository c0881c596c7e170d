"""The API's broker link receives telemetry only while a stream client listens (real Mosquitto).

At 1:1 the city sends 2,850 messages/s; received for nobody they cost the API about half a core.
"""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
from mqtttest import publisher

from api.live.broker import BrokerLink
from api.live.hub import Hub, StreamFilter
from cityneuron import contract
from cityneuron.servers import MosquittoBroker
from cityneuron.settings import MqttSettings

T0_MS = 1_772_323_200_000
_TOPIC = contract.device_topic("futian", "smart_pole", "pole-futian-00001")
_SETTLE_S = 0.5


async def _received_after_publishing(link: BrokerLink, port: int, count: int) -> int:
    """Publish ``count`` readings at QoS 1 and return how many more the link received."""
    before = link.telemetry_received
    with publisher(port) as client:
        for seq in range(count):
            payload = contract.encode_reading(T0_MS + seq * 1000, {"lamp_level": 50.0}, seq)
            client.publish(_TOPIC, payload, qos=1).wait_for_publish(10)
    await asyncio.sleep(_SETTLE_S)
    return link.telemetry_received - before


async def _scenario(broker: MosquittoBroker) -> None:
    hub = Hub()
    link = BrokerLink(MqttSettings(port=broker.port), hub, lambda topic, ack: None, telemetry_linger_s=0.2)
    link.start(asyncio.get_running_loop())
    try:
        assert await link.wait_subscribed(10)
        assert await _received_after_publishing(link, broker.port, 5) == 0  # nobody listens

        with hub.subscribe(StreamFilter()) as subscriber:
            assert await link.wait_subscribed(10)
            assert await _received_after_publishing(link, broker.port, 5) == 5
            batch = await subscriber.next_batch(1.0)
            assert [e["device_id"] for e in batch.events] == ["pole-futian-00001"] * 5

        deadline = time.monotonic() + 10
        while link.telemetry_received and time.monotonic() < deadline:
            await asyncio.sleep(0.3)  # the linger passes and the unsubscribe is acknowledged
            if await _received_after_publishing(link, broker.port, 1) == 0:
                break
        else:
            raise AssertionError("telemetry still received after the last client left")
    finally:
        link.stop()


def test_telemetry_is_received_only_while_a_client_listens(broker: MosquittoBroker) -> None:
    asyncio.run(_scenario(broker))


def test_a_broker_outage_is_no_error_in_the_log(
    broker: MosquittoBroker, caplog: pytest.LogCaptureFixture
) -> None:
    """paho logs "Client is not connected" as an ERROR before each reconnect attempt while the
    broker is down (and at shutdown when the broker stops first): the link reports the outage as
    a warning, paho's line is demoted to DEBUG."""

    async def scenario() -> None:
        link = BrokerLink(MqttSettings(port=broker.port), Hub(), lambda topic, ack: None)
        link.start(asyncio.get_running_loop())
        try:
            assert await link.wait_subscribed(10)
            with caplog.at_level(logging.DEBUG, logger="cityneuron.api.paho"):
                broker.stop()
                await asyncio.sleep(3.5)  # paho retries after 1 s, then 2 s
        finally:
            link.stop()

    asyncio.run(scenario())
    paho_lines = [r for r in caplog.records if r.name == "cityneuron.api.paho"]
    assert any(r.getMessage().startswith("Client is not connected") for r in paho_lines)
    assert [r.getMessage() for r in paho_lines if r.levelno >= logging.ERROR] == []
