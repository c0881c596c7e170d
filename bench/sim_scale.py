"""Simulator scale: can one process generate the 1:1 city (``shenzhen``, ~17 M devices) in real time?

    python bench/sim_scale.py [--preset shenzhen] [--scale 1.0] [--minutes 3] [--json]

Builds the city, its models and schedules, then for ``--minutes`` of wall time produces every
report as its slot passes, exactly as the simulator's loop does (values, topics and JSON
payloads), and hands the messages to a null publisher: this measures generation, not a broker
(one Mosquitto cannot take the whole city; see bench/sim_gateway.py for the publishing side).
Reports the CPU used per wall second, the peak resident memory and the pace: simulated time
produced per wall second and the largest lag behind the wall clock.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from typing import Any

from _common import machine

from cityneuron.contract import now_ms
from simulator.city import build_city
from simulator.drivers import Drivers
from simulator.kinds import build_models
from simulator.messages import telemetry_messages
from simulator.schedule import build_schedules

# As simulator/runner.py: a pass covers at most this many reports, then checks the clock.
_MAX_REPORTS_PER_PASS = 2_000
_TICK_S = 0.1


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # Linux: KiB


def run(preset: str, scale: float, minutes: float) -> dict[str, Any]:
    t0 = time.monotonic()
    city = build_city(preset, scale)
    t_city = time.monotonic() - t0
    models = build_models(city, Drivers(city.seed))
    schedules = build_schedules(city.tables)
    t_setup = time.monotonic() - t0
    rss_setup = _peak_rss_gib()
    reports_per_ms = sum(s.devices / s.interval_ms for s in schedules.values())
    max_pass_ms = max(1000, int(_MAX_REPORTS_PER_PASS / reports_per_ms))

    messages = readings = payload_bytes = 0
    max_lag_ms = 0
    start_ms = done_ms = now_ms()
    wall0 = time.monotonic()
    cpu0 = _cpu_s()
    deadline = wall0 + minutes * 60.0
    while time.monotonic() < deadline:
        target = now_ms()
        until = min(target, done_ms + max_pass_ms)
        if until > done_ms:
            for name, schedule in schedules.items():
                due = schedule.due(done_ms, until)
                for message in telemetry_messages(models[name], schedule, due):
                    # The null publisher: touch what a real one would send.
                    payload_bytes += len(message.payload) + len(message.topic)
                    messages += 1
                    readings += message.readings
            done_ms = until
        max_lag_ms = max(max_lag_ms, now_ms() - done_ms)
        if until >= target:
            time.sleep(_TICK_S)
    wall_s = time.monotonic() - wall0
    cpu_s = _cpu_s() - cpu0
    return {
        "preset": preset,
        "scale": scale,
        "devices": city.devices,
        "devices_by_kind": {name: len(t) for name, t in city.tables.items()},
        "build_city_s": round(t_city, 1),
        "setup_s": round(t_setup, 1),
        "rss_after_setup_gib": round(rss_setup, 2),
        "wall_s": round(wall_s, 1),
        "simulated_s": round((done_ms - start_ms) / 1000.0, 1),
        "pace": round((done_ms - start_ms) / 1000.0 / wall_s, 3),
        "max_lag_s": round(max_lag_ms / 1000.0, 2),
        "messages": messages,
        "readings": readings,
        "msgs_per_s": round(messages / wall_s, 1),
        "readings_per_s": round(readings / wall_s, 1),
        "payload_mib": round(payload_bytes / 1024**2, 1),
        "cpu_s": round(cpu_s, 1),
        "cpu_cores": round(cpu_s / wall_s, 3),
        "peak_rss_gib": round(_peak_rss_gib(), 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="shenzhen")
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    info = machine("n/a", None)
    result = run(args.preset, args.scale, args.minutes)
    if args.json:
        print(json.dumps({"machine": info, "result": result}, indent=2))
        return 0
    print(
        f"machine: {info['cpu']}, {info['cores']} cores, {info['ram_gib']} GiB RAM, Python {info['python']}"
    )
    for key, value in result.items():
        print(f"  {key}: {value}")
    ok = result["pace"] >= 0.99 and result["cpu_cores"] < 1.0 and result["peak_rss_gib"] < 8.0
    print("keeps pace with < 1 core and < 8 GiB" if ok else "does NOT meet the goal")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
