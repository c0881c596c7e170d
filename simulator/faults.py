"""What fault episodes (simulator.faultepisodes) do: reports dropped, held back, released or
re-stamped, values altered, payloads broken or repeated; every fault that hits is logged."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from simulator import clock
from simulator.faultconfig import (
    BATTERY_DEATH,
    BUFFER_FAULTS,
    CLOCK_FAULTS,
    DRIFT,
    DROPOUT,
    DUPLICATE,
    MALFORMED,
    OUT_OF_ORDER,
    SPIKES,
    STUCK_AT,
    VALUE_FAULTS,
)
from simulator.faultepisodes import (
    METRIC_DRAW,
    OFFLINE_FAULTS,
    ORDER_DRAW,
    REPORT_DRAW,
    REPORT_SIGN_DRAW,
    VARIANT_DRAW,
    WIRE_ONLY_FAULTS,
    BoolArray,
    Episodes,
    FaultEpisodes,
    IntArray,
    battery_params,
)
from simulator.kinds import KindModel, Values
from simulator.schedule import KindSchedule

__all__ = ["OFFLINE_FAULTS", "WIRE_ONLY_FAULTS", "Episodes", "FaultInjector", "Release", "ReportPlan"]

# A dying Li-SOCl2 cell leaves its 3.6 V plateau and sags below the low-battery warning.
_FADE_V = (3.45, 3.0)


@dataclass(frozen=True, eq=False)
class Release:
    """Readings a device kept while offline, sent just before report ``before`` of the batch."""

    rows: IntArray
    slot_ms: IntArray
    before: IntArray


@dataclass(frozen=True, eq=False)
class ReportPlan:
    """What faults do to one batch of due reports."""

    keep: BoolArray
    ts_shift_ms: IntArray
    release: Release


class FaultInjector(FaultEpisodes):
    """Applies a fault configuration to a city's reports and logs every fault that hits one."""

    # --- reports: dropped, held back, released, shifted ----------------------------------

    def plan_reports(self, kind: str, rows: IntArray, t_ms: IntArray, *, wire: bool = True) -> ReportPlan:
        """Which due reports go out, their clock offset, and buffered readings to release.

        ``wire=False``: only the faults that change what a database ends up storing (reports
        never sent); ``WIRE_ONLY_FAULTS`` are neither applied nor logged.
        """
        table = self.models[kind].table
        keys = table.key[rows]
        keep = np.ones(len(rows), dtype=np.bool_)
        shift = np.zeros(len(rows), dtype=np.int64)
        releases: list[Release] = []
        active = self.active(kind)
        schedule = self.schedules[kind]
        for fault in active:
            if fault in VALUE_FAULTS or fault in (DUPLICATE, MALFORMED):
                continue
            if not wire and fault in WIRE_ONLY_FAULTS:
                continue
            ep = self.episodes(kind, fault, keys, t_ms)
            idx = np.flatnonzero(ep.hit)
            if fault in CLOCK_FAULTS and idx.size:
                offset = (
                    self._sign(kind, fault, keys[idx], ep.window[idx])
                    * self._size(kind, fault, keys[idx], ep.window[idx])
                ).astype(np.int64)
                shift[idx] += offset
                self._log(kind, fault, table, rows, ep, idx, [{"offset_ms": int(o)} for o in offset.tolist()])
            elif fault == DROPOUT and idx.size:
                keep[idx] = False
                self._log(kind, fault, table, rows, ep, idx)
            elif fault == BATTERY_DEATH and idx.size:
                keep[idx] &= self._battery_keeps(schedule, rows[idx], t_ms[idx], ep, idx, fault)
                silent = self.offline_from(fault, ep.start[idx], ep.end[idx])
                self._log(kind, fault, table, rows, ep, idx, battery_params(silent))
            elif fault in BUFFER_FAULTS:
                if idx.size:
                    keep[idx] = False
                    self._log(kind, fault, table, rows, ep, idx)
                releases.append(self._release(kind, fault, schedule, rows, t_ms))
        return ReportPlan(keep, shift, _concat(releases))

    def _battery_keeps(
        self, schedule: KindSchedule, rows: IntArray, t_ms: IntArray, ep: Episodes, idx: IntArray, fault: str
    ) -> BoolArray:
        """While the cell fades the device reports every 2nd, 4th, then 8th slot; then nothing."""
        share = self.config.types[fault].fade_share
        progress = (t_ms - ep.start[idx]) / np.maximum(1, ep.end[idx] - ep.start[idx])
        fading = progress < share
        step = 2 ** (1 + np.floor(3.0 * progress / max(share, 1e-9))).astype(np.int64)
        slot = (t_ms - schedule.offset_ms[rows]) // schedule.interval_ms
        return fading & (slot % step == 0)

    def _release(
        self, kind: str, fault: str, schedule: KindSchedule, rows: IntArray, t_ms: IntArray
    ) -> Release:
        """Reconnect: a report right after an offline episode first sends what was buffered.

        The previous slot was inside the episode and the episode is over by this one.
        """
        table = self.models[kind].table
        interval = schedule.interval_ms
        keys = table.key[rows]
        ep = self.episodes(kind, fault, keys, t_ms - interval)
        done = np.flatnonzero(ep.hit & (ep.end <= t_ms))
        if not done.size:
            return _empty_release()
        self._log(kind, fault, table, rows, ep, done)
        offset = schedule.offset_ms[rows[done]]
        first = -((offset - ep.start[done]) // interval) * interval + offset  # first slot >= start
        last = t_ms[done] - interval
        cap = self.config.types[fault].buffer_max
        first = np.maximum(first, last - (cap - 1) * interval)
        count = (last - first) // interval + 1
        member = np.repeat(np.arange(done.size), count)
        within = np.arange(int(count.sum()), dtype=np.int64) - np.repeat(np.cumsum(count) - count, count)
        times = first[member] + within * interval
        out_rows = rows[done][member]
        if fault == OUT_OF_ORDER:
            # Shuffled inside each device's buffer: sort by a hash of (device, slot).
            shuffle = self._u(kind, fault, table.key[out_rows], times, ORDER_DRAW)
            order = np.lexsort((shuffle, member))
            out_rows, times, member = out_rows[order], times[order], member[order]
        return Release(out_rows, times, done[member])

    # --- values ---------------------------------------------------------------------------

    def adjust_values(self, kind: str, rows: IntArray, t_ms: IntArray, values: Values) -> None:
        """Apply value faults (and a fading battery's voltage) to readings, in place."""
        active = self.active(kind)
        if not active:
            return
        model = self.models[kind]
        table = model.table
        keys = table.key[rows]
        if BATTERY_DEATH in active and "battery_v" in values:
            ep = self.episodes(kind, BATTERY_DEATH, keys, t_ms)
            idx = np.flatnonzero(ep.hit)
            if idx.size:
                share = max(self.config.types[BATTERY_DEATH].fade_share, 1e-9)
                progress = np.minimum(
                    1.0, (t_ms[idx] - ep.start[idx]) / ((ep.end[idx] - ep.start[idx]) * share)
                )
                volts = values["battery_v"].copy()
                volts[idx] = _FADE_V[0] + (_FADE_V[1] - _FADE_V[0]) * progress
                values["battery_v"] = volts
        for fault in active:
            if fault in VALUE_FAULTS:
                self._value_fault(kind, fault, model, rows, t_ms, keys, values)

    def _value_fault(
        self,
        kind: str,
        fault: str,
        model: KindModel,
        rows: IntArray,
        t_ms: IntArray,
        keys: IntArray,
        values: Values,
    ) -> None:
        spec = self.config.types[fault]
        ep = self.episodes(kind, fault, keys, t_ms)
        idx = np.flatnonzero(ep.hit)
        if not idx.size:
            return
        candidates = spec.candidates(model.kind)
        k, w = keys[idx], ep.window[idx]
        pick = np.minimum(
            (self._u(kind, fault, k, w, METRIC_DRAW) * len(candidates)).astype(np.int64), len(candidates) - 1
        )
        # The value each device measured when its episode began: what sticks, and the scale.
        start_values = model.step(rows[idx], ep.start[idx])
        for m, name in enumerate(candidates):
            chosen_metric = pick == m
            sel = idx[chosen_metric]
            if not sel.size:
                continue
            current = values[name][sel]
            at_start = start_values[name][chosen_metric]
            metric = model.kind.metric_by_name[name]
            scale = np.maximum(np.abs(at_start), 0.01 * (metric.high - metric.low))
            ks, ws = keys[sel], ep.window[sel]
            sign = self._sign(kind, fault, ks, ws)
            size = self._size(kind, fault, ks, ws)
            hits = ~np.isnan(current) & ~np.isnan(at_start)
            params: list[dict[str, object]]
            if fault == STUCK_AT:
                new = at_start
                params = [{"metric": name, "value": round(v, 4)} for v in at_start.tolist()]
            elif fault == DRIFT:
                per_day = sign * size / 100.0 * scale
                new = current + per_day * (t_ms[sel] - ep.start[sel]) / clock.MS_PER_DAY
                params = [{"metric": name, "drift_per_day": round(v, 4)} for v in per_day.tolist()]
            elif fault == SPIKES:
                spiking = self._u(kind, fault, ks, t_ms[sel], REPORT_DRAW) < spec.probability
                spike_sign = self._sign(kind, fault, ks, t_ms[sel], REPORT_SIGN_DRAW)
                new = np.where(spiking, current + spike_sign * size * scale, current)
                hits &= spiking
                params = [
                    {"metric": name, "factor": round(v, 3), "probability": spec.probability}
                    for v in size.tolist()
                ]
            else:  # bias
                offset = sign * size / 100.0 * scale
                new = current + offset
                params = [{"metric": name, "offset": round(v, 4)} for v in offset.tolist()]
            column = values[name].copy()
            column[sel] = np.where(hits, new, current)
            values[name] = column
            chosen = np.flatnonzero(hits)
            self._log(kind, fault, model.table, rows, ep, sel[chosen], [params[i] for i in chosen.tolist()])

    # --- payloads -------------------------------------------------------------------------

    def payload_hits(
        self, kind: str, fault: str, rows: IntArray, t_ms: IntArray
    ) -> tuple[BoolArray, IntArray]:
        """Reports hit by ``fault`` (duplicate or malformed) and a per-report variant number."""
        n = len(rows)
        if fault not in self.active(kind) or not n:
            return np.zeros(n, dtype=np.bool_), np.zeros(n, dtype=np.int64)
        table = self.models[kind].table
        keys = table.key[rows]
        ep = self.episodes(kind, fault, keys, t_ms)
        spec = self.config.types[fault]
        hit = ep.hit & (self._u(kind, fault, keys, t_ms, REPORT_DRAW) < spec.probability)
        variant = (self._u(kind, fault, keys, t_ms, VARIANT_DRAW) * 1_000_000).astype(np.int64)
        idx = np.flatnonzero(hit)
        if idx.size:
            self._log(kind, fault, table, rows, ep, idx, [{"probability": spec.probability}] * idx.size)
        return hit, variant


def _empty_release() -> Release:
    empty = np.empty(0, dtype=np.int64)
    return Release(empty, empty, empty)


def _concat(releases: list[Release]) -> Release:
    releases = [r for r in releases if len(r.rows)]
    if not releases:
        return _empty_release()
    return Release(
        np.concatenate([r.rows for r in releases]),
        np.concatenate([r.slot_ms for r in releases]),
        np.concatenate([r.before for r in releases]),
    )
