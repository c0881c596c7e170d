"""The publishing phase: open-loop sends through gateway connections, with injected faults.

With a reconnect storm, the storm district's devices publish through their own connections
instead (simulator/load/storm.py).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from cityneuron.contract import now_ms
from cityneuron.settings import MqttSettings
from simulator.city import City
from simulator.load.latency import LatencyHistogram
from simulator.load.payloads import LoadDevices, LoadMessage, MessageFactory, Style
from simulator.load.shapes import LoadProfile, OpenLoopSchedule
from simulator.load.storm import StormPlan, StormResult, StormRun
from simulator.publisher import GatewayPool

log = logging.getLogger("cityneuron.load")

# Build at most this much schedule at a time, so a stalled generator catches up in slices.
_SLICE_S = 0.05
_IDLE_WAIT_S = 0.002
MALFORMED_PAYLOAD = b'{"ts": 1, "m": {"broken'


@dataclass(frozen=True, slots=True)
class Injections:
    """Deliberate faults for checking the reconciler: every n-th message (0: never)."""

    drop_every: int = 0  # counted as published, never sent: must show up as missing
    duplicate_every: int = 0  # sent twice: must be stored once
    malformed_every: int = 0  # garbage payload: must be dead-lettered

    def pick(self, n: int, every: int) -> bool:
        return every > 0 and n % every == every - 1


@dataclass(frozen=True, slots=True)
class StormSetup:
    """A reconnect storm: the plan, and the city the load's devices come from (for the fleet)."""

    plan: StormPlan
    city: City


@dataclass
class Progress:
    elapsed_s: float
    target_rate: float
    achieved_rate: float
    sent: int
    in_flight: int
    errors: int
    lag_ms: float


@dataclass
class PublishResult:
    started_ms: int
    finished_ms: int
    duration_s: float
    scheduled: int
    messages_sent: int  # handed to the broker, resends included
    readings_expected: int  # readings that should be stored
    dropped: int
    duplicated: int
    malformed: int
    unacked: int
    errors: int
    send_lag: LatencyHistogram
    expected_keys: list[NDArray[np.int64]] = field(repr=False)  # (device, ts_ms) rows
    devices: LoadDevices = field(repr=False)
    storm: StormResult | None = None
    processes: int = 1


def publish_load(
    mqtt: MqttSettings,
    devices: LoadDevices,
    profile: LoadProfile,
    *,
    qos: int,
    style: Style,
    readings_per_message: int,
    connections: int,
    injections: Injections = Injections(),
    stop: threading.Event | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    progress_every_s: float = 1.0,
    storm: StormSetup | None = None,
    share: tuple[int, int] = (0, 1),
    ready: Callable[[], None] | None = None,
) -> PublishResult:
    """Send the profile's schedule open loop; the intended time of message n is fixed in advance.

    ``share=(k, N)``: send only messages k, k + N, ... of the schedule (process k of N).
    ``ready`` is called once every connection is up, just before the clock starts (a start
    line for several publishing processes).
    """
    stop = stop or threading.Event()
    schedule = OpenLoopSchedule(profile, share=share)
    send_lag = LatencyHistogram()
    expected: list[NDArray[np.int64]] = []
    sent = dropped = duplicated = malformed = 0
    client_prefix = f"cityneuron-load-{os.getpid()}-{now_ms() % 100000}"
    with contextlib.ExitStack() as connections_up:
        pool = connections_up.enter_context(GatewayPool(mqtt, connections, client_prefix, stop=stop))
        storm_run = None
        if storm is not None:
            storm_run = connections_up.enter_context(
                StormRun(mqtt, storm.city, devices, storm.plan, stop=stop)
            )
        if ready is not None:
            ready()
        # Device times count from here, once connected: connecting a fleet takes a while.
        started_ms = now_ms()
        factory = MessageFactory(devices, style, readings_per_message, started_ms)
        t0 = time.monotonic()
        next_progress = t0 + progress_every_s
        n = 0
        while not schedule.finished and not stop.is_set():
            elapsed = time.monotonic() - t0
            if storm_run is not None:
                storm_run.tick(elapsed)
            offsets = schedule.due_until(min(elapsed, schedule.done_s + _SLICE_S))
            if not len(offsets):
                time.sleep(_IDLE_WAIT_S)
                continue
            messages = factory.build(offsets)
            lags = np.empty(len(messages))
            for i, message in enumerate(messages):
                _record_expected(expected, message, malformed=injections.pick(n, injections.malformed_every))
                if injections.pick(n, injections.drop_every):
                    dropped += 1
                else:
                    payload = message.payload
                    if injections.pick(n, injections.malformed_every):
                        payload = MALFORMED_PAYLOAD
                        malformed += 1
                    own = storm_run.link_for(message.device) if storm_run is not None else None
                    gateway = own if own is not None else pool.gateway_for(message.device)
                    if storm_run is not None:
                        storm_run.note(message)
                    sent += gateway.publish(message.topic, payload, qos)
                    if injections.pick(n, injections.duplicate_every):
                        sent += gateway.publish(message.topic, payload, qos)
                        duplicated += 1
                lags[i] = time.monotonic() - t0 - message.intended_s
                n += 1
            send_lag.record(lags)
            now = time.monotonic()
            if on_progress is not None and now >= next_progress:
                next_progress = now + progress_every_s
                elapsed = now - t0
                in_flight = sum(g.outstanding for g in pool.gateways) if qos else 0
                if storm_run is not None:
                    in_flight += storm_run.outstanding
                on_progress(
                    Progress(
                        elapsed_s=elapsed,
                        target_rate=schedule.scheduled / max(elapsed, 1e-9),
                        achieved_rate=sent / max(elapsed, 1e-9),
                        sent=sent,
                        in_flight=in_flight,
                        errors=pool.errors + (storm_run.fleet.errors if storm_run is not None else 0),
                        lag_ms=float(lags[-1] * 1000) if len(lags) else 0.0,
                    )
                )
        duration_s = time.monotonic() - t0
    fleet = storm_run.fleet if storm_run is not None else None
    keys = np.concatenate(expected) if expected else np.empty((0, 2), dtype=np.int64)
    return PublishResult(
        started_ms=started_ms,
        finished_ms=now_ms(),
        duration_s=duration_s,
        scheduled=schedule.scheduled,
        messages_sent=sent,
        readings_expected=len(keys),
        dropped=dropped,
        duplicated=duplicated,
        malformed=malformed,
        unacked=pool.unacked + (fleet.unacked if fleet is not None else 0),
        errors=pool.errors + (fleet.errors if fleet is not None else 0),
        send_lag=send_lag,
        expected_keys=[keys],
        devices=devices,
        storm=storm_run.result() if storm_run is not None else None,
    )


def _record_expected(expected: list[NDArray[np.int64]], message: LoadMessage, *, malformed: bool) -> None:
    """Every reading is expected in the database, except those of a deliberately broken payload."""
    if malformed:
        return
    expected.append(message.keys())
