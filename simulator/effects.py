"""Faults and scenario events applied to the city's messages, between the models and the wire.

The runner asks :class:`Effects` for each kind's statuses and telemetry instead of rendering
them itself: outages and reconnect storms silence devices and flip their retained status,
faults drop, hold back, shift, alter, break or repeat reports, and every fault that hits a
message is written to the fault log. A direct load into the database (simulator.direct) asks
for the reports that would be stored and their values (:meth:`Effects.stored`,
:meth:`Effects.adjust_values`) through the same fault and scenario code.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import orjson

from cityneuron.settings import SimulatorSettings
from simulator.city import City
from simulator.drivers import WeatherOverlay
from simulator.faultconfig import DUPLICATE, MALFORMED, FaultConfig, load_fault_config
from simulator.faultepisodes import BoolArray
from simulator.faultlog import FaultLog, FaultRecord
from simulator.faults import FaultInjector
from simulator.kinds import KindModel, Values
from simulator.kinds.base import IntArray
from simulator.messages import Message, device_statuses, render_telemetry, status_messages
from simulator.scenario import Event, Scenario, load_scenario
from simulator.schedule import Due, KindSchedule

# Readings a device keeps while a reconnect storm holds it offline (a day of minute data).
_STORM_BUFFER_MAX = 1440
_GARBAGE = b"\x00\x17\xfe\xff\x03garbage\x81"


@dataclass(frozen=True)
class EffectsSpec:
    """What a run injects: a scenario, fault rates and where the fault log goes."""

    scenario: Scenario | None = None
    faults: FaultConfig | None = None
    fault_log: Path | None = None

    @property
    def weather(self) -> WeatherOverlay | None:
        return self.scenario.weather if self.scenario is not None else None


def load_effects_spec(options: SimulatorSettings, run_start_ms: int) -> EffectsSpec:
    """Read ``options.scenario_file`` and ``options.faults_file`` (SpecFileError when bad)."""
    scenario = load_scenario(options.scenario_file, run_start_ms) if options.scenario_file else None
    faults = load_fault_config(options.faults_file) if options.faults_file else None
    return EffectsSpec(scenario, faults, options.fault_log)


@dataclass(frozen=True)
class Batch:
    """Messages of one kind: retained statuses (``status``) or telemetry."""

    kind: str
    messages: list[Message]
    status: bool


def _malform(payload: bytes, variant: int) -> bytes:
    """A broken version of a telemetry payload, of the kinds seen in the field."""
    body = orjson.loads(payload)
    item = body[0] if isinstance(body, list) else body
    metrics = item["m"]
    first = next(iter(metrics), None)
    choice = variant % 6
    if choice == 0:
        return payload[: max(1, len(payload) // 2)]  # cut off mid-transfer
    if choice == 1:
        return _GARBAGE  # not JSON at all
    if choice == 2 and first is not None:
        metrics[first] = str(metrics[first])  # number as a string
    elif choice == 3:
        del item["ts"]
    elif choice == 4:
        item["ts"] = item["ts"] // 1000  # seconds instead of milliseconds
    elif first is not None:
        metrics[first] = float("nan")  # stdlib json writes NaN, which JSON does not allow
        return json.dumps(body, allow_nan=True).encode()
    return orjson.dumps(body)


class Effects:
    """Scenario and faults of a run over the city's models and schedules."""

    def __init__(
        self,
        city: City,
        models: Mapping[str, KindModel],
        schedules: Mapping[str, KindSchedule],
        spec: EffectsSpec | None = None,
    ) -> None:
        spec = spec or EffectsSpec()
        self.city = city
        self.models = models
        self.schedules = schedules
        self.scenario = spec.scenario
        self.log = FaultLog(spec.fault_log)
        self.faults = (
            FaultInjector(spec.faults, city.seed, models, schedules, self.log) if spec.faults else None
        )

    @property
    def enabled(self) -> bool:
        return self.scenario is not None or self.faults is not None

    # --- statuses -------------------------------------------------------------------------

    def statuses(self, kind: str, ts_ms: int) -> list[Message]:
        """Every device's retained status at the start: offline where the scenario says so."""
        table = self.models[kind].table
        if self.scenario is None:
            return list(status_messages(table, ts_ms))
        self.log_events(ts_ms - 1, ts_ms)
        rows = np.arange(len(table), dtype=np.int64)
        offline = self.scenario.offline(kind, table.district, np.full(len(table), ts_ms, dtype=np.int64))
        messages = device_statuses(table, rows[~offline], True, ts_ms)
        messages += device_statuses(table, rows[offline], False, ts_ms)
        return messages

    def transitions(self, after_ms: int, until_ms: int) -> list[Batch]:
        """Devices going offline or coming back (with buffered readings) in ``(after, until]``."""
        if self.scenario is None:
            return []
        self.log_events(after_ms, until_ms)
        batches: list[Batch] = []
        for event in self.scenario.events:
            window = event.offline_ms
            if window is None:
                continue
            for edge, online in ((window[0], False), (window[1], True)):
                if not after_ms < edge <= until_ms:
                    continue
                for kind in event.kinds:
                    if kind not in self.schedules:
                        continue
                    table = self.models[kind].table
                    rows = np.flatnonzero(event.in_district[table.district]).astype(np.int64)
                    if not rows.size:
                        continue
                    batches.append(Batch(kind, device_statuses(table, rows, online, edge), status=True))
                    if online and event.type == "reconnect_storm":
                        batches.append(Batch(kind, self._buffered(kind, rows, window), status=False))
        return batches

    def _buffered(self, kind: str, rows: IntArray, window: tuple[int, int]) -> list[Message]:
        """Readings of ``rows`` with slots inside ``window``, sent on reconnect (oldest first)."""
        schedule = self.schedules[kind]
        interval = schedule.interval_ms
        offset = schedule.offset_ms[rows]
        first = -((offset - window[0]) // interval) * interval + offset
        last = -((offset - window[1]) // interval) * interval + offset - interval
        first = np.maximum(first, last - (_STORM_BUFFER_MAX - 1) * interval)
        count = np.maximum(0, (last - first) // interval + 1)
        member = np.repeat(np.arange(rows.size), count)
        within = np.arange(int(count.sum()), dtype=np.int64) - np.repeat(np.cumsum(count) - count, count)
        times = first[member] + within * interval
        order = np.argsort(times, kind="stable")
        return self._render(kind, rows[member][order], times[order], None)

    def log_events(self, after_ms: int, until_ms: int) -> None:
        """Log the scenario events that overlap ``(after_ms, until_ms]`` (once per district)."""
        if self.scenario is None:
            return
        for n, event in enumerate(self.scenario.events):
            if event.start_ms <= until_ms and max(event.end_ms, event.start_ms + 1) > after_ms:
                for slug in event.districts:
                    self.log.add(("scenario", n, slug), _event_record(event, slug))

    # --- telemetry ------------------------------------------------------------------------

    def telemetry(self, kind: str, due: Due) -> list[Message]:
        """Messages for the reports in ``due`` after outages and faults."""
        model, schedule = self.models[kind], self.schedules[kind]
        if not self.enabled:
            return render_telemetry(model, schedule, due.rows, due.slot_ms)
        if not len(due):
            return []
        rows, t = due.rows, due.slot_ms
        keep = np.ones(len(rows), dtype=np.bool_)
        if self.scenario is not None:
            keep &= ~self.scenario.offline(kind, model.table.district[rows], t)
        shift = np.zeros(len(rows), dtype=np.int64)
        position = np.arange(len(rows), dtype=np.int64) * 2 + 1
        out_rows, out_t, out_shift = rows[keep], t[keep], shift[keep]
        if self.faults is not None and self.faults.active(kind):
            plan = self.faults.plan_reports(kind, rows, t)
            online = keep.copy()
            keep &= plan.keep
            shift = plan.ts_shift_ms
            released = plan.release
            sent = online[released.before]  # a device still offline cannot flush its buffer
            all_rows = np.concatenate([rows[keep], released.rows[sent]])
            all_t = np.concatenate([t[keep], released.slot_ms[sent]])
            all_shift = np.concatenate([shift[keep], np.zeros(int(sent.sum()), dtype=np.int64)])
            # Buffered readings go just before the reconnecting report, in buffer order.
            order = np.argsort(np.concatenate([position[keep], released.before[sent] * 2]), kind="stable")
            out_rows, out_t, out_shift = all_rows[order], all_t[order], all_shift[order]
        return self._render(kind, out_rows, out_t, out_shift)

    def stored(self, kind: str, rows: IntArray, t: IntArray) -> BoolArray:
        """Which reports (``rows`` at slots ``t``) a platform ends up storing: not those lost in a
        power cut, to a dropout or to a dead battery. Faults that only exist on the wire
        (``WIRE_ONLY_FAULTS``: the reading is stored once, at its true time) are left out and
        not logged; a reconnect storm's readings are stored when they are re-sent."""
        keep = np.ones(len(rows), dtype=np.bool_)
        if self.scenario is not None:
            keep &= ~self.scenario.offline(kind, self.models[kind].table.district[rows], t, resent=False)
        if self.faults is not None and self.faults.active(kind):
            keep &= self.faults.plan_reports(kind, rows, t, wire=False).keep
        return keep

    def adjust_values(self, kind: str, rows: IntArray, t: IntArray, values: Values) -> None:
        """Value faults and firmware metrics applied to readings (``rows`` at times ``t``), in place."""
        if self.faults is not None:
            self.faults.adjust_values(kind, rows, t, values)
        if self.scenario is not None:
            table = self.models[kind].table
            extra = self.scenario.firmware(kind, table.key[rows], table.district[rows], t, self.city.seed)
            for name, column in extra:
                values[name] = column

    def _render(self, kind: str, rows: IntArray, t: IntArray, shift: IntArray | None) -> list[Message]:
        model, schedule = self.models[kind], self.schedules[kind]
        adjust = partial(self.adjust_values, kind)
        shifted = shift if shift is not None and shift.any() else None
        messages = render_telemetry(model, schedule, rows, t, adjust=adjust, ts_shift_ms=shifted)
        if self.faults is None or not messages:
            return messages
        broken, variant = self.faults.payload_hits(kind, MALFORMED, rows, t)
        for i in np.flatnonzero(broken).tolist():
            m = messages[i]
            messages[i] = Message(m.row, m.topic, _malform(m.payload, int(variant[i])), m.readings)
        repeated, _ = self.faults.payload_hits(kind, DUPLICATE, rows, t)
        if repeated.any():
            # A QoS 1 resend: the same message again, right after the first.
            messages = [m for i, m in enumerate(messages) for _ in range(2 if repeated[i] else 1)]
        return messages

    def window(self, after_ms: int, until_ms: int) -> list[Batch]:
        """Everything due in ``(after_ms, until_ms]``: status changes first, then each kind's
        telemetry (what the runner publishes for one pass); the fault log is flushed."""
        batches = self.transitions(after_ms, until_ms)
        for name, schedule in self.schedules.items():
            batches.append(Batch(name, self.telemetry(name, schedule.due(after_ms, until_ms)), status=False))
        self.flush(until_ms)
        return batches

    def flush(self, now_ms: int) -> None:
        """Write the faults logged so far."""
        self.log.flush(now_ms)


def _event_record(event: Event, slug: str) -> FaultRecord:
    return FaultRecord(
        None,
        None,
        slug,
        f"scenario.{event.type}",
        event.start_ms,
        event.end_ms,
        event.describe(),
    )
