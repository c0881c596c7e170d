"""Fault episodes: when each fault type hits each device, decided per (seed, device, time window).

Every fault type divides time into fixed windows aligned to the epoch. In each window a device
starts at most one episode of the type, with probability ``rate x window``; the episode's start,
length and parameters are drawn from the same key. Whether a report at time t is hit is
therefore a pure function of (seed, kind, device key, t): the answer does not depend on the
order in which devices are stepped, on sharding or on when the run started. Everything is
vectorised; only faults that actually hit something reach Python loops, to be logged.
What the episodes do to reports, values and payloads is simulator.faults.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from cityneuron.catalog import DISTRICTS
from simulator import clock, rng
from simulator.city import DeviceTable
from simulator.faultconfig import (
    BATTERY_DEATH,
    CLOCK_JUMP,
    CLOCK_SKEW,
    DROPOUT,
    DUPLICATE,
    LATE,
    MALFORMED,
    OUT_OF_ORDER,
    FaultConfig,
)
from simulator.faultlog import FaultLog, FaultRecord, rfc3339
from simulator.kinds import KindModel
from simulator.schedule import KindSchedule

IntArray = NDArray[np.int64]
FloatArray = NDArray[np.float64]
BoolArray = NDArray[np.bool_]

# Independent draws of one episode, all keyed by (seed, type, kind, device, window).
_HAS, _START, _LENGTH, METRIC_DRAW, _SIGN, _SIZE = range(6)
# Per-report draws inside an episode, keyed by (seed, type, kind, device, report time).
REPORT_DRAW, REPORT_SIGN_DRAW, VARIANT_DRAW, ORDER_DRAW = range(10, 14)
# Faults that take a device off the network for a while (per-device mode cuts its connection).
OFFLINE_FAULTS = (DROPOUT, BATTERY_DEATH, LATE, OUT_OF_ORDER)
# Faults that exist only on the wire: a database stores the reading once, at its true time
# (late readings arrive all the same), so a direct load (simulator.direct) leaves them out.
WIRE_ONLY_FAULTS = (CLOCK_SKEW, CLOCK_JUMP, DUPLICATE, LATE, OUT_OF_ORDER, MALFORMED)


@dataclass(frozen=True, eq=False)
class Episodes:
    """For each queried report: inside an episode (``hit``) and that episode's start, end, window."""

    hit: BoolArray
    start: IntArray
    end: IntArray
    window: IntArray


class FaultEpisodes:
    """The episodes of a :class:`FaultConfig` over a city's devices, and their log entries."""

    def __init__(
        self,
        config: FaultConfig,
        seed: int,
        models: Mapping[str, KindModel],
        schedules: Mapping[str, KindSchedule],
        log: FaultLog,
    ) -> None:
        self.config = config
        self.seed = int(seed)
        self.models = models
        self.schedules = schedules
        self.log = log

    def active(self, kind: str) -> tuple[str, ...]:
        return self.config.active(kind)

    # --- deterministic draws --------------------------------------------------------------

    def _u(self, kind: str, fault: str, keys: IntArray, tick: IntArray, draw: int) -> FloatArray:
        return rng.uniform(self.seed, rng.stream_id(f"fault.{fault}"), rng.stream_id(kind), keys, tick, draw)

    def _draw(
        self, kind: str, fault: str, keys: IntArray, window: IntArray
    ) -> tuple[IntArray, IntArray, IntArray]:
        """Positions of the devices ``keys`` with an episode in ``window``, and its start and end."""
        spec = self.config.types[fault]
        width = spec.window_ms
        chance = self.config.rate(kind, fault) * width / clock.MS_PER_DAY
        shortest, longest = spec.duration_ms
        idx = np.flatnonzero(self._u(kind, fault, keys, window, _HAS) < chance)
        k, w = keys[idx], window[idx]
        length = shortest + (self._u(kind, fault, k, w, _LENGTH) * (longest - shortest)).astype(np.int64)
        s = w * width + (self._u(kind, fault, k, w, _START) * (width - length)).astype(np.int64)
        return idx, s, s + length

    def episodes(self, kind: str, fault: str, keys: IntArray, t_ms: IntArray) -> Episodes:
        """The episode of ``fault`` (if any) each device ``keys`` is in at ``t_ms``.

        An episode lies wholly inside its window, so episodes of one type never overlap and
        only the window of ``t_ms`` needs looking at.
        """
        n = len(keys)
        hit = np.zeros(n, dtype=np.bool_)
        start = np.zeros(n, dtype=np.int64)
        end = np.zeros(n, dtype=np.int64)
        window = np.asarray(t_ms, dtype=np.int64) // self.config.types[fault].window_ms
        idx, s, e = self._draw(kind, fault, keys, window)
        if idx.size:
            inside = (s <= t_ms[idx]) & (t_ms[idx] < e)
            sel = idx[inside]
            hit[sel], start[sel], end[sel] = True, s[inside], e[inside]
        return Episodes(hit, start, end, window)

    def window_episodes(
        self, kind: str, fault: str, keys: IntArray, window: int
    ) -> tuple[IntArray, IntArray, IntArray]:
        """Every episode of ``fault`` in epoch-aligned ``window``: (position in ``keys``, start,
        end), vectorised over all of ``keys``."""
        return self._draw(kind, fault, keys, np.full(len(keys), window, dtype=np.int64))

    def offline_from(self, fault: str, start: IntArray, end: IntArray) -> IntArray:
        """When an episode of an offline fault (``OFFLINE_FAULTS``) cuts the device's link: at its
        start, or once a dying battery falls silent; the link comes back at the episode's end."""
        if fault == BATTERY_DEATH:
            share = self.config.types[fault].fade_share
            return start + (share * (end - start)).astype(np.int64)
        return start

    def _sign(self, kind: str, fault: str, keys: IntArray, tick: IntArray, draw: int = _SIGN) -> FloatArray:
        return np.where(self._u(kind, fault, keys, tick, draw) < 0.5, -1.0, 1.0)

    def _size(self, kind: str, fault: str, keys: IntArray, window: IntArray) -> FloatArray:
        low, high = self.config.types[fault].magnitude
        return low + (high - low) * self._u(kind, fault, keys, window, _SIZE)

    # --- logging --------------------------------------------------------------------------

    def _log(
        self,
        kind: str,
        fault: str,
        table: DeviceTable,
        rows: IntArray,
        ep: Episodes,
        idx: IntArray,
        params: list[dict[str, object]] | None = None,
    ) -> None:
        """Log the episodes at positions ``idx`` that are not logged yet."""
        keys = table.key[rows[idx]]
        for n, i in enumerate(idx.tolist()):
            identity = (fault, kind, int(keys[n]), int(ep.window[i]))
            if self.log.seen(identity):
                continue
            row = int(rows[i])
            record = FaultRecord(
                table.device_id(row),
                kind,
                DISTRICTS[int(table.district[row])].slug,
                fault,
                int(ep.start[i]),
                int(ep.end[i]),
                params[n] if params is not None else {},
            )
            self.log.add(identity, record)

    def log_offline(self, kind: str, fault: str, rows: IntArray, t_ms: IntArray) -> None:
        """Log the episodes of offline fault ``fault`` that hold devices ``rows`` offline at
        ``t_ms`` (a dropped connection shows a fault even when no report fell inside it)."""
        table = self.models[kind].table
        ep = self.episodes(kind, fault, table.key[rows], t_ms)
        silent = self.offline_from(fault, ep.start, ep.end)
        idx = np.flatnonzero(ep.hit & (t_ms >= silent))
        params = battery_params(silent[idx]) if fault == BATTERY_DEATH else None
        self._log(kind, fault, table, rows, ep, idx, params)


def battery_params(silent: IntArray) -> list[dict[str, object]]:
    """Fault log parameters of battery deaths falling silent at ``silent`` (epoch ms)."""
    return [{"silent_from": rfc3339(s), "silent_from_ms": s} for s in silent.tolist()]
