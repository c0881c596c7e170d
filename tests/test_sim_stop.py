"""Stopping the simulator when its broker stopped first (a terminal's Ctrl-C, a broker crash).

The simulator used to dial the dead broker again and again and wait the whole drain timeout
(30 s) for acknowledgements that could never come; `cityneuron up` then killed it after 15 s.
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import pytest

from cityneuron.servers import MosquittoBroker
from cityneuron.settings import MqttSettings, Settings, SimulatorSettings
from simulator.runner import SimSummary, run

T_NOON_MS = 1_750_000_000_000 - 1_750_000_000_000 % 86_400_000 + 4 * 3_600_000


@pytest.mark.parametrize("mode", ["gateway", "device"])
def test_stop_after_the_broker_died_is_quick(broker: MosquittoBroker, mode: str) -> None:
    settings = Settings(
        mqtt=MqttSettings(port=broker.port, reconnect_max_delay_s=2.0),
        simulator=SimulatorSettings(
            client_id_prefix=f"sim-{uuid.uuid4().hex[:6]}",
            mode=mode,
            scale=0.05,
            speed=3600.0,
            qos=1,
        ),
    )
    stop = threading.Event()
    result: dict[str, Any] = {}
    worker = threading.Thread(
        target=lambda: result.update(summary=run(settings, start_ms=T_NOON_MS, stop_event=stop)), daemon=True
    )
    worker.start()
    time.sleep(2.0)
    assert worker.is_alive()
    broker.stop()
    # Long enough for the connections to notice and start dialing again (and keep publishing:
    # QoS 1 messages queue for the reconnect).
    time.sleep(2.0)
    stopped_at = time.monotonic()
    stop.set()
    worker.join(30)
    took_s = time.monotonic() - stopped_at
    assert not worker.is_alive()
    assert took_s < 5.0, f"stopping took {took_s:.1f} s"
    summary: SimSummary = result["summary"]
    assert summary.messages > 0
    # Honest accounting: what the dead broker never acknowledged is an error, not a success.
    assert summary.errors > 0
