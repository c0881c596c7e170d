"""Threshold rules evaluated over a batch's stored readings, with hysteresis.

Per rule, numpy picks the few rows that can change anything (a value past the open threshold,
a positive contribution to a sum window, or a device that already has state); only those rows
run the per-device state machine in Python. Evaluation never mutates the engine: it returns a
:class:`Plan`, applied to the database in the batch transaction and adopted with :meth:`commit`
once that transaction commits, so a rolled-back batch leaves no trace in memory either.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np

from ingest.alerts.rules import RuleSet, ThresholdRule
from ingest.staging import StagedKind

log = logging.getLogger("cityneuron.ingest")


@dataclass(slots=True)
class DeviceRuleState:
    """One device under one rule: pending (condition holding, not yet long enough), open, or
    only a window of recent values."""

    last_ts_ms: int
    pending_since_ms: int | None = None
    open: bool = False
    peak: float | None = None
    window: deque[tuple[int, float]] | None = None

    def idle(self) -> bool:
        return not self.open and self.pending_since_ms is None and not self.window

    def copy(self) -> DeviceRuleState:
        return replace(self, window=deque(self.window) if self.window is not None else None)


@dataclass(frozen=True, slots=True)
class Transition:
    """An alert opening or closing; ``ts_ms`` is the opening or closing device time."""

    state: str  # "open" | "closed"
    rule: str
    severity: str
    device_id: str
    kind: str
    district: str
    ts_ms: int
    value: float | None
    detail: str = ""
    # Closing: the most extreme value while open (as far as this process saw).
    peak: float | None = None


def log_transitions(transitions: list[Transition]) -> None:
    for t in transitions:
        log.info(
            "alert %s rule=%s severity=%s device=%s kind=%s district=%s value=%s ts_ms=%d",
            "opened" if t.state == "open" else "closed",
            t.rule,
            t.severity,
            t.device_id,
            t.kind,
            t.district,
            "none" if t.value is None else f"{t.value:g}",
            t.ts_ms,
        )


@dataclass(slots=True)
class Plan:
    """What a batch changes: new states per (rule, device) (None: forget), transitions, peaks."""

    states: dict[tuple[str, str], DeviceRuleState | None] = field(default_factory=dict)
    transitions: list[Transition] = field(default_factory=list)
    # (rule, device) -> most extreme value so far of an alert that stays open.
    peaks: dict[tuple[str, str], float] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.states or self.transitions)


class AlertEngine:
    """In-memory alert state of one writer lane; the ``alerts`` table is the record.

    ``owns(device_id)``: whether the device is this lane's (ingest.writer.lane_of); state of
    other devices is not loaded.
    """

    def __init__(self, rules: RuleSet, owns: Callable[[str], bool] | None = None) -> None:
        self.rules = rules
        self._owns = owns or (lambda _device_id: True)
        self._states: dict[str, dict[str, DeviceRuleState]] = {r.name: {} for r in rules.thresholds}

    def open_count(self, rule: str) -> int:
        return sum(1 for s in self._states.get(rule, {}).values() if s.open)

    def load_open(self, open_alerts: list[tuple[str, str, int, float | None]]) -> None:
        """Adopt the open alerts of the table: (rule, device_id, opened_at ms, peak value)."""
        for states in self._states.values():
            for device_id in [d for d, s in states.items() if s.open]:
                del states[device_id]
        for rule, device_id, opened_ms, peak in open_alerts:
            rule_states = self._states.get(rule)
            if rule_states is None or not self._owns(device_id):
                continue  # a rule no longer in the file (its alerts stay open), or another lane's device
            state = rule_states.get(device_id) or DeviceRuleState(last_ts_ms=opened_ms)
            state.open, state.pending_since_ms, state.peak = True, None, peak
            rule_states[device_id] = state

    def load_window(self, rule: str, device_id: str, ts_ms: int, value: float) -> None:
        """Put a stored reading back into a window (at start, so a restart keeps the last hour)."""
        if not self._owns(device_id):
            return
        state = self._states[rule].setdefault(device_id, DeviceRuleState(last_ts_ms=ts_ms))
        if state.window is None:
            state.window = deque()
        state.window.append((ts_ms, value))
        state.last_ts_ms = max(state.last_ts_ms, ts_ms)

    def evaluate(self, staged: list[StagedKind]) -> Plan:
        plan = Plan()
        for kind_rows in staged:
            rules = self.rules.by_kind.get(kind_rows.kind.name, ())
            if not rules or not len(kind_rows):
                continue
            stored = ~kind_rows.duplicate
            ts = kind_rows.ts_ms()
            devices = kind_rows.device_ids()
            for rule in rules:
                self._evaluate_rule(rule, kind_rows, devices, ts, kind_rows.column(rule.metric), stored, plan)
        return plan

    def _evaluate_rule(
        self,
        rule: ThresholdRule,
        kind_rows: StagedKind,
        devices: list[str],
        ts: np.ndarray,
        values: np.ndarray,
        stored: np.ndarray,
        plan: Plan,
    ) -> None:
        known = self._states[rule.name]
        with np.errstate(invalid="ignore"):
            if rule.aggregate == "sum":
                interesting = values > 0 if rule.open_at >= 0 else ~np.isnan(values)
            elif rule.aggregate == "mean":
                interesting = ~np.isnan(values)
            else:
                interesting = values > rule.open_at if rule.direction == "above" else values < rule.open_at
        interesting &= stored
        # A device with state, or one that gains state in this batch, needs all its later rows
        # (they may close what an earlier one opened).
        hot = set(known).union(devices[i] for i in np.flatnonzero(interesting))
        if hot:
            interesting |= np.fromiter((d in hot for d in devices), dtype=bool, count=len(devices))
        interesting &= stored & ~np.isnan(values)
        for index in np.flatnonzero(interesting):
            device_id = devices[index]
            key = (rule.name, device_id)
            state = plan.states[key] if key in plan.states else known.get(device_id)
            state = state.copy() if state is not None else None
            new_state = self._step(
                rule, state, int(ts[index]), float(values[index]), device_id, kind_rows, plan
            )
            plan.states[key] = None if new_state is None or new_state.idle() else new_state

    @staticmethod
    def _step(
        rule: ThresholdRule,
        state: DeviceRuleState | None,
        ts_ms: int,
        value: float,
        device_id: str,
        kind_rows: StagedKind,
        plan: Plan,
    ) -> DeviceRuleState | None:
        if state is not None and ts_ms <= state.last_ts_ms:
            return state  # late reading: history, not the present state of the device
        state = state or DeviceRuleState(last_ts_ms=ts_ms)
        state.last_ts_ms = ts_ms
        observed = value
        if rule.window_s:
            window = state.window if state.window is not None else deque()
            if value or rule.aggregate == "mean":  # zeros add nothing to a sum
                window.append((ts_ms, value))
            horizon = ts_ms - rule.window_s * 1000
            while window and window[0][0] <= horizon:
                window.popleft()
            state.window = window
            total = sum(v for _, v in window)
            observed = total if rule.aggregate == "sum" else total / max(1, len(window))
        key = (rule.name, device_id)
        kind = kind_rows.kind.name
        district = kind_rows.districts[device_id]
        if state.open:
            if rule.closes(observed):
                plan.transitions.append(
                    Transition(
                        "closed",
                        rule.name,
                        rule.severity,
                        device_id,
                        kind,
                        district,
                        ts_ms,
                        observed,
                        peak=plan.peaks.pop(key, state.peak),
                    )
                )
                state.open, state.peak = False, None
                return state
            peak = observed if state.peak is None else rule.more_extreme(state.peak, observed)
            if peak != state.peak:
                state.peak = plan.peaks[key] = peak
            return state
        if not rule.opens(observed):
            state.pending_since_ms = None
            return state
        if state.pending_since_ms is None:
            state.pending_since_ms = ts_ms
        if ts_ms - state.pending_since_ms >= rule.min_duration_s * 1000:
            state.open, state.peak = True, observed
            detail = f"{rule.metric} {rule.aggregate if rule.window_s else ''} {observed:g} {rule.direction} {rule.open_at:g}"
            plan.transitions.append(
                Transition(
                    "open",
                    rule.name,
                    rule.severity,
                    device_id,
                    kind,
                    district,
                    state.pending_since_ms,
                    observed,
                    " ".join(detail.split()),
                )
            )
            state.pending_since_ms = None
        return state

    def commit(self, plan: Plan) -> None:
        """Adopt a plan whose transaction committed."""
        for (rule, device_id), state in plan.states.items():
            states = self._states[rule]
            if state is None:
                states.pop(device_id, None)
            else:
                states[device_id] = state
