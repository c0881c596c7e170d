"""The simulator's main loop: announce every device, then publish telemetry on schedule.

Simulated time runs at ``settings.simulator.speed`` times the wall clock from ``start_ms``
(default: now). Each pass publishes every report whose slot fell into the simulated time
that passed since the previous pass; a pass never covers more than about
``_MAX_REPORTS_PER_PASS`` reports, so a slow broker slows the simulation instead of
filling memory.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from types import FrameType

from cityneuron.contract import now_ms
from cityneuron.settings import Settings, SimulatorSettings
from simulator.city import City, build_city
from simulator.drivers import Drivers
from simulator.kinds import KindModel, build_models
from simulator.messages import Message, status_messages, telemetry_messages
from simulator.publisher import STATUS_QOS, GatewayPool
from simulator.schedule import KindSchedule, build_schedules

log = logging.getLogger("cityneuron.simulator")

_TICK_S = 0.1
_MAX_REPORTS_PER_PASS = 2_000
_PROGRESS_EVERY_S = 30.0
_DRAIN_TIMEOUT_S = 30.0


@dataclass
class SimSummary:
    """What a run published.

    ``messages``: device messages (statuses and telemetry) the broker took (QoS 1: acknowledged);
    ``readings``: readings inside the telemetry; ``errors``: messages refused or never acknowledged.
    """

    devices: int
    messages: int
    readings: int
    errors: int
    elapsed_s: float

    def as_dict(self) -> dict[str, int | float]:
        return asdict(self)


class SimClock:
    """Simulated epoch ms: ``start_ms`` plus the wall time since creation times ``speed``,
    never ahead of the wall clock (an accelerated run catches up, then keeps pace)."""

    def __init__(self, start_ms: int, speed: float) -> None:
        self.start_ms = int(start_ms)
        self.speed = float(speed)
        self._t0 = time.monotonic()

    def now_ms(self) -> int:
        simulated = self.start_ms + int((time.monotonic() - self._t0) * self.speed * 1000.0)
        return min(simulated, max(now_ms(), self.start_ms))


def _start_ms(options: SimulatorSettings, explicit_ms: int | None) -> int:
    if explicit_ms is not None:
        return explicit_ms
    if options.start is not None:
        return int(options.start.timestamp() * 1000)
    if options.speed > 1:
        return now_ms() - int(options.catch_up_hours * 3_600_000)
    return now_ms()


class _Simulation:
    """The city with its models and schedules, publishing through a gateway pool."""

    def __init__(self, city: City, pool: GatewayPool, qos: int, stop: threading.Event) -> None:
        drivers = Drivers(city.seed)
        self.city = city
        self.pool = pool
        self.qos = qos
        self.stop = stop
        self.models: dict[str, KindModel] = build_models(city, drivers)
        self.schedules: dict[str, KindSchedule] = build_schedules(city.tables)
        # A device's gateway is fixed by its number across the whole city.
        self._first_number: dict[str, int] = {}
        number = 0
        for name, table in city.tables.items():
            self._first_number[name] = number
            number += len(table)
        self.messages = 0
        self.readings = 0

    def reports_per_ms(self) -> float:
        return sum(s.devices / s.interval_ms for s in self.schedules.values())

    def _send(self, kind: str, messages: Iterable[Message], *, qos: int, retain: bool) -> None:
        first = self._first_number[kind]
        for message in messages:
            if self.stop.is_set():
                return
            gateway = self.pool.gateway_for(first + message.row)
            if gateway.publish(message.topic, message.payload, qos, retain=retain):
                self.messages += 1
                self.readings += message.readings

    def announce(self, ts_ms: int) -> None:
        """Retained "online" status with registry facts for every device."""
        for name, table in self.city.tables.items():
            self._send(name, status_messages(table, ts_ms), qos=STATUS_QOS, retain=True)

    def publish_latest(self, at_ms: int) -> None:
        """One report per device: its latest slot at or before ``at_ms``."""
        for name, schedule in self.schedules.items():
            due = schedule.latest(at_ms)
            self._send(name, telemetry_messages(self.models[name], schedule, due), qos=self.qos, retain=False)

    def publish_window(self, after_ms: int, until_ms: int) -> None:
        """Every report with a slot in ``(after_ms, until_ms]``."""
        for name, schedule in self.schedules.items():
            due = schedule.due(after_ms, until_ms)
            self._send(name, telemetry_messages(self.models[name], schedule, due), qos=self.qos, retain=False)


@contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """Set ``stop`` on SIGINT/SIGTERM while inside; only possible on the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _handler(signum: int, frame: FrameType | None) -> None:
        log.info("received %s: stopping", signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, _handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _loop(sim: _Simulation, clock: SimClock, stop: threading.Event, deadline: float | None) -> None:
    max_pass_ms = max(1000, int(_MAX_REPORTS_PER_PASS / max(sim.reports_per_ms(), 1e-12)))
    done_ms = clock.start_ms
    next_progress = time.monotonic() + _PROGRESS_EVERY_S
    while not stop.is_set():
        wall = time.monotonic()
        if deadline is not None and wall >= deadline:
            break
        target = clock.now_ms()
        until = min(target, done_ms + max_pass_ms)
        if until > done_ms:
            sim.publish_window(done_ms, until)
            done_ms = until
        if wall >= next_progress:
            next_progress = wall + _PROGRESS_EVERY_S
            lag_s = (clock.now_ms() - done_ms) / 1000.0
            log.info(
                "published %d messages (%d readings); simulated time lags by %.1f s",
                sim.messages,
                sim.readings,
                lag_s,
            )
        if until >= target:
            wait = _TICK_S if deadline is None else max(0.0, min(_TICK_S, deadline - time.monotonic()))
            stop.wait(wait)


def run(
    settings: Settings,
    *,
    duration_s: float | None = None,
    once: bool = False,
    start_ms: int | None = None,
    stop_event: threading.Event | None = None,
) -> SimSummary:
    """Simulate the city of ``settings.simulator`` against ``settings.mqtt``.

    ``once``: publish one report per device (meters: their 24 frozen readings) and return.
    Otherwise run for ``duration_s`` wall seconds, or until ``stop_event`` is set or (on the
    main thread) SIGINT/SIGTERM arrives. Every device first gets its retained online status.
    Returns after every QoS 1 message has been acknowledged (or the drain timed out).
    """
    started = time.monotonic()
    options = settings.simulator
    city = build_city(options.preset, options.scale, options.seed)
    stop = stop_event or threading.Event()
    clock = SimClock(_start_ms(options, start_ms), options.speed)
    log.info(
        "simulating preset=%s scale=%s devices=%d connections=%d qos=%d speed=%s once=%s",
        options.preset,
        options.scale,
        city.devices,
        options.connections,
        options.qos,
        options.speed,
        once,
    )
    pool = GatewayPool(
        settings.mqtt,
        options.connections,
        options.client_id_prefix,
        stop=stop,
        drain_timeout_s=_DRAIN_TIMEOUT_S,
    )
    with _stop_on_signals(stop), pool:
        sim = _Simulation(city, pool, options.qos, stop)
        sim.announce(clock.start_ms)
        # Every device's most recent report first, as from a fleet that was already running: a
        # dashboard sees all kinds at once, not an air station an hour and a meter a day later.
        sim.publish_latest(clock.start_ms)
        if not once:
            deadline = None if duration_s is None else started + duration_s
            _loop(sim, clock, stop, deadline)
    unacked = pool.unacked
    summary = SimSummary(
        devices=city.devices,
        messages=max(0, sim.messages - unacked),
        readings=sim.readings,
        errors=pool.errors + unacked,
        elapsed_s=round(time.monotonic() - started, 3),
    )
    log.info("simulator finished: %s", summary)
    return summary
