"""Gateway mode from one process: messages per second into a local Mosquitto, QoS 0 and QoS 1.

    python bench/sim_gateway.py [--messages 200000] [--json]

Starts its own Mosquitto (cityneuron.servers.MosquittoBroker, broker/conf.d, no subscribers)
and, on the same simulator payloads (smart-pole telemetry of the "district" city), measures:

- ``paho``: a plain paho-mqtt client with its network thread (``loop_start``) publishing as
  fast as it can (QoS 1 with paho's default of 20 messages in flight and with 100);
- ``paho_manual``: the same client driven from the publishing thread (no network thread, so no
  fight for the GIL): the most paho gives from one thread;
- ``gateway``: one simulator gateway connection (simulator.publisher.Gateway on
  simulator.wireclient: batched writes, a reader thread) with the default window of
  outstanding messages and with the 100 of paho's days;
- ``simulator``: the whole simulator in one process (values, payloads, one gateway
  connection), running a backfill of the small city as fast as the broker takes it.

Rates count from the first publish until the last message is acknowledged (QoS 1) or
written to the socket (QoS 0).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import threading
import time
from typing import Any

import paho.mqtt.client as paho
from _common import build_workload, machine, scratch_dir
from paho.mqtt.enums import CallbackAPIVersion

from cityneuron.contract import now_ms
from cityneuron.servers import MosquittoBroker, free_port
from cityneuron.settings import MqttSettings, Settings
from simulator.backfill import backfill_broker
from simulator.publisher import MAX_OUTSTANDING, Gateway


def _paho(port: int, topics: list[str], payloads: list[bytes], qos: int, inflight: int) -> float:
    """A plain paho client; at QoS 1 it keeps at most ``inflight`` messages unacknowledged
    (more would queue inside paho, which walks its whole queue on every PUBACK)."""
    cond = threading.Condition()
    acked = 0
    total = len(payloads)

    def on_publish(*_: Any) -> None:
        nonlocal acked
        with cond:
            acked += 1
            cond.notify_all()

    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-paho-q{qos}-{inflight}")
    client.max_inflight_messages_set(inflight)
    client.on_publish = on_publish
    client.connect("127.0.0.1", port)
    client.loop_start()
    started = time.monotonic()
    for sent, (topic, payload) in enumerate(zip(topics, payloads, strict=True)):
        if qos:
            with cond:
                while sent - acked >= inflight:
                    cond.wait(1.0)
        client.publish(topic, payload, qos=qos)
    with cond:
        cond.wait_for(lambda: acked >= total, timeout=300)
    elapsed = time.monotonic() - started
    client.disconnect()
    client.loop_stop()
    return total / elapsed


def _paho_manual(port: int, topics: list[str], payloads: list[bytes], qos: int, inflight: int) -> float:
    """paho without a network thread: publish() writes at once, loop() reads the PUBACKs."""
    acked = 0
    total = len(payloads)

    def on_publish(*_: Any) -> None:
        nonlocal acked
        acked += 1

    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-paho-manual-q{qos}-{inflight}")
    client.max_inflight_messages_set(inflight)
    client.on_publish = on_publish
    client.connect("127.0.0.1", port)
    while not client.is_connected():
        client.loop(timeout=1.0)
    started = time.monotonic()
    for sent, (topic, payload) in enumerate(zip(topics, payloads, strict=True)):
        while qos and sent - acked >= inflight:
            client.loop(timeout=1.0)
        client.publish(topic, payload, qos=qos)
    deadline = started + 300
    while acked < total and time.monotonic() < deadline:
        client.loop(timeout=1.0)
    elapsed = time.monotonic() - started
    client.disconnect()
    return acked / elapsed


def _gateway(port: int, topics: list[str], payloads: list[bytes], qos: int, window: int) -> float:
    gateway = Gateway(MqttSettings(port=port), f"bench-gw-q{qos}-{window}", max_outstanding=window)
    gateway.connect()
    gateway.drain(time.monotonic() + 10)
    started = time.monotonic()
    for topic, payload in zip(topics, payloads, strict=True):
        gateway.publish(topic, payload, qos)
    unacked = gateway.drain(time.monotonic() + 300)
    elapsed = time.monotonic() - started
    gateway.close(goodbye=False, deadline=time.monotonic() + 5)
    return (len(payloads) - unacked) / elapsed


def _simulator(port: int, qos: int, hours: float) -> dict[str, Any]:
    settings = Settings(
        mqtt=MqttSettings(port=port),
        simulator={"connections": 1, "qos": qos, "client_id_prefix": f"bench-sim-q{qos}"},
    )
    end = now_ms() - 3_600_000
    summary = backfill_broker(settings, end - int(hours * 3_600_000), end, announce=False)
    return {
        "messages": summary.messages,
        "errors": summary.errors,
        "msgs_per_s": round(summary.messages / summary.elapsed_s, 1),
    }


def run(messages: int, sim_hours: float) -> dict[str, Any]:
    workload = build_workload("single", messages, seed=42)
    topics, payloads = workload.topics, workload.payloads
    root = scratch_dir("cityneuron-bench-gw-")
    results: dict[str, Any] = {
        "messages": messages,
        "payload_bytes_mean": round(workload.payload_bytes / messages),
    }
    try:
        with MosquittoBroker(root / "mosquitto", free_port(), anonymous=True) as broker:
            port = broker.port
            results["paho_qos0"] = round(_paho(port, topics, payloads, 0, 20))
            results["paho_qos1_inflight20"] = round(_paho(port, topics, payloads, 1, 20))
            results["paho_qos1_inflight100"] = round(_paho(port, topics, payloads, 1, 100))
            results["paho_manual_qos0"] = round(_paho_manual(port, topics, payloads, 0, 100))
            results["paho_manual_qos1_inflight100"] = round(_paho_manual(port, topics, payloads, 1, 100))
            # The default window against the narrow one paho needed (sessions 2-3).
            for qos in (0, 1):
                for window in (MAX_OUTSTANDING, 100):
                    results[f"gateway_qos{qos}_window{window}"] = round(
                        _gateway(port, topics, payloads, qos, window)
                    )
            results["simulator_qos0"] = _simulator(port, 0, sim_hours)
            results["simulator_qos1"] = _simulator(port, 1, sim_hours)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=200_000, help="messages per paho/gateway run")
    parser.add_argument("--sim-hours", type=float, default=3.0, help="simulated hours of the small city")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    info = machine("n/a", None)
    result = run(args.messages, args.sim_hours)
    if args.json:
        print(json.dumps({"machine": info, "result": result}, indent=2))
        return 0
    print(
        f"machine: {info['cpu']}, {info['cores']} cores, {info['ram_gib']} GiB RAM, Mosquitto {info['mosquitto']}"
    )
    for key, value in result.items():
        print(f"  {key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
