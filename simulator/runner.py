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
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from types import FrameType

from cityneuron.contract import now_ms
from cityneuron.settings import Settings, SimulatorSettings
from simulator.city import City, build_city
from simulator.commands import CommandBook
from simulator.drivers import Drivers
from simulator.effects import Effects, EffectsSpec, load_effects_spec
from simulator.fleet import DeviceFleet, make_pool
from simulator.kinds import KindModel, build_models
from simulator.links import LinkChange, LinkTracker
from simulator.messages import Message
from simulator.progress import ProgressReporter
from simulator.publisher import STATUS_QOS, Pool
from simulator.ramp import ANNOUNCE_AT_ONCE_MAX_DEVICES, StatusRamp
from simulator.schedule import KindSchedule, build_schedules

log = logging.getLogger("cityneuron.simulator")

_TICK_S = 0.1
_MAX_REPORTS_PER_PASS = 2_000
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
    # Readings handed to the broker per kind (bench/city_scale.py reconciles them with rows stored).
    readings_by_kind: dict[str, int] = field(default_factory=dict)

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
    """The city with its models and schedules, publishing through a gateway pool.

    ``spec``: the scenario and faults of the run (simulator.effects), applied to every message.
    With one connection per device (a :class:`DeviceFleet`), devices a scenario or a fault takes
    offline lose their link instead of publishing an offline status (simulator.links).
    """

    def __init__(
        self, city: City, pool: Pool, qos: int, stop: threading.Event, spec: EffectsSpec | None = None
    ) -> None:
        drivers = Drivers(city.seed, spec.weather if spec is not None else None)
        self.city = city
        self.pool = pool
        self.qos = qos
        self.stop = stop
        self._models: dict[str, KindModel] = build_models(city, drivers)
        self.schedules: dict[str, KindSchedule] = build_schedules(city.tables)
        self.effects = Effects(city, self._models, self.schedules, spec)
        self.fleet = pool if isinstance(pool, DeviceFleet) else None
        self.links = (
            LinkTracker(city, self.effects.scenario, self.effects.faults)
            if self.fleet is not None and self.effects.enabled
            else None
        )
        # A device's gateway is fixed by its number across the whole city.
        self._first_number: dict[str, int] = {}
        number = 0
        for name, table in city.tables.items():
            self._first_number[name] = number
            number += len(table)
        self.messages = 0
        self.readings = 0
        self.readings_by_kind: Counter[str] = Counter()

    @property
    def models(self) -> dict[str, KindModel]:
        return self._models

    @models.setter
    def models(self, models: dict[str, KindModel]) -> None:
        # Updated in place: the effects render through the same (possibly wrapped) models.
        replacement = dict(models)
        self._models.clear()
        self._models.update(replacement)

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
                self.readings_by_kind[kind] += message.readings

    def announce(self, ts_ms: int) -> None:
        """Retained status with registry facts for every device (offline in a scenario outage)."""
        for name in self.city.tables:
            self._send(name, self.effects.statuses(name, ts_ms), qos=STATUS_QOS, retain=True)
        self.effects.flush(ts_ms)

    def _relink(self, changes: list[LinkChange], *, online: bool) -> None:
        """Restore (``online``) or cut the links of the devices in ``changes``."""
        assert self.fleet is not None
        for change in changes:
            if change.online == online:
                numbers = (self._first_number[change.kind] + change.rows).tolist()
                (self.fleet.restore if online else self.fleet.cut)(numbers)

    def settle_links(self, ts_ms: int) -> None:
        """Per-device mode: cut the links of the devices that are offline at ``ts_ms``."""
        if self.links is not None:
            changes = self.links.start(ts_ms)
            self._relink(changes, online=False)
            self.effects.flush(ts_ms)
            log.info("%d device link(s) down at the start", self.links.offline_count())

    def publish_latest(self, at_ms: int) -> None:
        """One report per device: its latest slot at or before ``at_ms``."""
        for name, schedule in self.schedules.items():
            self._send(name, self.effects.telemetry(name, schedule.latest(at_ms)), qos=self.qos, retain=False)
        self.effects.flush(at_ms)

    def publish_window(self, after_ms: int, until_ms: int) -> None:
        """Every report with a slot in ``(after_ms, until_ms]``, and the scenario's status changes.

        Per-device mode: links that come back in the window are restored first (a reconnect
        storm's buffered readings follow), links that go down are cut after the window's
        reports (each device's reports before its cut are on the wire by then).
        """
        changes = self.links.changes(after_ms, until_ms) if self.links is not None else []
        if changes:
            self._relink(changes, online=True)
        for batch in self.effects.transitions(after_ms, until_ms):
            if batch.status and self.links is not None:
                continue  # the broker publishes the will; the device says "online" on reconnect
            qos, retain = (STATUS_QOS, True) if batch.status else (self.qos, False)
            self._send(batch.kind, batch.messages, qos=qos, retain=retain)
        for name, schedule in self.schedules.items():
            due = schedule.due(after_ms, until_ms)
            self._send(name, self.effects.telemetry(name, due), qos=self.qos, retain=False)
        if changes:
            self._relink(changes, online=False)
        self.effects.flush(until_ms)


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


def _loop(
    sim: _Simulation,
    clock: SimClock,
    stop: threading.Event,
    deadline: float | None,
    *,
    until_ms: int | None = None,
    ramp: StatusRamp | None = None,
    json_progress: bool = False,
) -> None:
    """Publish every report as its slot passes on ``clock`` until ``deadline`` (monotonic),
    ``until_ms`` (simulated: a backfill's end) or ``stop``; report progress on stderr."""
    max_pass_ms = max(1000, int(_MAX_REPORTS_PER_PASS / max(sim.reports_per_ms(), 1e-12)))
    done_ms = clock.start_ms
    progress = ProgressReporter(sim.city.devices, json_lines=json_progress)
    try:
        while not stop.is_set():
            wall = time.monotonic()
            if deadline is not None and wall >= deadline:
                break
            if until_ms is not None and done_ms >= until_ms:
                break
            target = clock.now_ms() if until_ms is None else min(clock.now_ms(), until_ms)
            until = min(target, done_ms + max_pass_ms)
            if until > done_ms:
                sim.publish_window(done_ms, until)
                done_ms = until
            if ramp is not None and not ramp.done:
                for kind, statuses in ramp.take().items():
                    sim._send(kind, statuses, qos=STATUS_QOS, retain=True)
            lag_s = (clock.now_ms() - done_ms) / 1000.0
            progress.update(sim.messages, sim.readings, sim.pool.errors, done_ms, lag_s)
            if until >= target:
                wait = _TICK_S if deadline is None else max(0.0, min(_TICK_S, deadline - time.monotonic()))
                stop.wait(wait)
    finally:
        progress.close()


def run(
    settings: Settings,
    *,
    duration_s: float | None = None,
    once: bool = False,
    start_ms: int | None = None,
    stop_event: threading.Event | None = None,
    until_ms: int | None = None,
    announce: bool = True,
    json_progress: bool = False,
) -> SimSummary:
    """Simulate the city of ``settings.simulator`` against ``settings.mqtt``.

    ``once``: publish one report per device (meters: their 24 frozen readings) and return.
    Otherwise run for ``duration_s`` wall seconds, or until ``stop_event`` is set or (on the
    main thread) SIGINT/SIGTERM arrives. Every device first gets its retained online status.
    Returns after every QoS 1 message has been acknowledged (or the drain timed out).
    ``until_ms``: stop once simulated time reaches it (a backfill through the broker).
    ``announce=False``: no statuses (the registry was loaded with ``--registry direct``); a
    city above ``ANNOUNCE_AT_ONCE_MAX_DEVICES`` ramps its statuses out (simulator.ramp).
    ``json_progress``: progress reports as JSON lines on stderr.
    """
    started = time.monotonic()
    options = settings.simulator
    city = build_city(options.preset, options.scale, options.seed, options.shard_index_count())
    stop = stop_event or threading.Event()
    clock = SimClock(_start_ms(options, start_ms), options.speed)
    log.info(
        "simulating preset=%s scale=%s devices=%d mode=%s connections=%d qos=%d speed=%s once=%s",
        options.preset,
        options.scale,
        city.devices,
        options.mode,
        city.devices if options.mode == "device" else options.connections,
        options.qos,
        options.speed,
        once,
    )
    # Devices obey downlink commands from the simulated instant they arrive (simulator.commands).
    commands = CommandBook(city, clock.now_ms)
    # Scenario and fault files are checked before any connection is made.
    spec = load_effects_spec(options, clock.start_ms)
    pool = make_pool(settings, city, stop=stop, commands=commands, drain_timeout_s=_DRAIN_TIMEOUT_S)
    with _stop_on_signals(stop), pool:
        sim = _Simulation(city, pool, options.qos, stop, spec)
        sim.models = commands.wrap(sim.models)
        ramped = city.devices > ANNOUNCE_AT_ONCE_MAX_DEVICES and not once
        if announce and not ramped:
            sim.announce(clock.start_ms)
        if not ramped:
            # Every device's most recent report first, as from a fleet that was already running: a
            # dashboard sees all kinds at once, not an air station an hour and a meter a day later.
            sim.publish_latest(clock.start_ms)
        sim.settle_links(clock.start_ms)
        if not once:
            deadline = None if duration_s is None else started + duration_s
            ramp = StatusRamp(city, clock.start_ms) if announce and ramped else None
            _loop(sim, clock, stop, deadline, until_ms=until_ms, ramp=ramp, json_progress=json_progress)
    unacked = pool.unacked
    summary = SimSummary(
        devices=city.devices,
        messages=max(0, sim.messages - unacked),
        readings=sim.readings,
        readings_by_kind=dict(sim.readings_by_kind),
        errors=pool.errors + unacked,
        elapsed_s=round(time.monotonic() - started, 3),
    )
    log.info("simulator finished: %s", summary)
    return summary
