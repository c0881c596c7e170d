"""Device links in per-device mode: which devices lose their connection in a pass, which get it back.

A scenario's power cut or reconnect storm and the offline faults (``OFFLINE_FAULTS``: dropout,
a dying battery's silence, the offline part of late and out-of-order delivery) hold devices
offline for a while. In gateway mode the gateway says so with retained statuses
(simulator.effects); with one connection per device the link itself goes: the runner cuts it
without a DISCONNECT, so the broker publishes the device's will, and lets the device reconnect
when it is back, as a whole district does after a power cut.

Only devices with an edge inside a pass are looked at: a scenario edge selects its districts'
devices, fault edges come from each window's episodes (drawn once per window, vectorised over
the kind's devices). A device's state is judged at the end of the pass, so an episode that
starts and ends inside one pass leaves its link alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from simulator.city import City
from simulator.faultepisodes import OFFLINE_FAULTS, BoolArray, IntArray
from simulator.faults import FaultInjector
from simulator.scenario import Scenario

_EMPTY = np.empty(0, dtype=np.int64)


@dataclass(frozen=True, eq=False)
class LinkChange:
    """Devices (table ``rows`` of ``kind``) whose link comes back (``online``) or goes down."""

    kind: str
    rows: IntArray
    online: bool


@dataclass(frozen=True, eq=False)
class _WindowEdges:
    """The offline periods of one fault type's episodes in one window: [down_ms, up_ms) per row."""

    rows: IntArray
    down_ms: IntArray
    up_ms: IntArray


class LinkTracker:
    """Each device's link state under a scenario and offline faults, changed pass by pass."""

    def __init__(self, city: City, scenario: Scenario | None, faults: FaultInjector | None) -> None:
        self.city = city
        self.scenario = scenario
        self.faults = faults
        self._offline: dict[str, BoolArray] = {
            name: np.zeros(len(table), dtype=np.bool_) for name, table in city.tables.items()
        }
        self._windows: dict[tuple[str, str, int], _WindowEdges] = {}

    def offline_count(self) -> int:
        """Devices whose link is down now."""
        return int(sum(int(state.sum()) for state in self._offline.values()))

    def start(self, ts_ms: int) -> list[LinkChange]:
        """Devices offline at ``ts_ms``, the run's start (every device is looked at once)."""
        changes: list[LinkChange] = []
        for kind, table in self.city.tables.items():
            changes += self._settle(kind, np.arange(len(table), dtype=np.int64), ts_ms)
        return changes

    def changes(self, after_ms: int, until_ms: int) -> list[LinkChange]:
        """Devices whose link goes down or comes back in ``(after_ms, until_ms]``."""
        changes: list[LinkChange] = []
        for kind in self.city.tables:
            candidates = self._candidates(kind, after_ms, until_ms)
            if candidates.size:
                changes += self._settle(kind, candidates, until_ms)
        return changes

    # --- which devices, and their state ---------------------------------------------------

    def _fault_types(self, kind: str) -> tuple[str, ...]:
        if self.faults is None:
            return ()
        return tuple(f for f in self.faults.active(kind) if f in OFFLINE_FAULTS)

    def _candidates(self, kind: str, after_ms: int, until_ms: int) -> IntArray:
        """Rows of ``kind`` with a scenario or fault edge in ``(after_ms, until_ms]``."""
        table = self.city.tables[kind]
        parts: list[IntArray] = []
        if self.scenario is not None:
            for event in self.scenario.events:
                offline = event.offline_ms
                if offline is None or kind not in event.kinds:
                    continue
                if any(after_ms < edge <= until_ms for edge in offline):
                    parts.append(np.flatnonzero(event.in_district[table.district]).astype(np.int64))
        for fault in self._fault_types(kind):
            assert self.faults is not None
            width = self.faults.config.types[fault].window_ms
            # An episode ends at the latest with its window: the window holding after_ms may
            # still have an edge in the pass.
            first, last = after_ms // width, until_ms // width
            for number in range(first, last + 1):
                edges = self._edges(kind, fault, number)
                hit = ((after_ms < edges.down_ms) & (edges.down_ms <= until_ms)) | (
                    (after_ms < edges.up_ms) & (edges.up_ms <= until_ms)
                )
                parts.append(edges.rows[hit])
            self._forget(kind, fault, first)
        parts = [p for p in parts if p.size]
        return np.unique(np.concatenate(parts)) if parts else _EMPTY

    def _edges(self, kind: str, fault: str, window: int) -> _WindowEdges:
        key = (kind, fault, window)
        edges = self._windows.get(key)
        if edges is None:
            assert self.faults is not None
            table = self.city.tables[kind]
            rows, start, end = self.faults.window_episodes(kind, fault, table.key, window)
            edges = _WindowEdges(rows.astype(np.int64), self.faults.offline_from(fault, start, end), end)
            self._windows[key] = edges
        return edges

    def _forget(self, kind: str, fault: str, before_window: int) -> None:
        stale = [k for k in self._windows if k[0] == kind and k[1] == fault and k[2] < before_window]
        for key in stale:
            del self._windows[key]

    def _settle(self, kind: str, rows: IntArray, t_ms: int) -> list[LinkChange]:
        """Compare the state of ``rows`` at ``t_ms`` with their link; return what changes."""
        table = self.city.tables[kind]
        t = np.full(len(rows), t_ms, dtype=np.int64)
        offline = np.zeros(len(rows), dtype=np.bool_)
        if self.scenario is not None:
            offline |= self.scenario.offline(kind, table.district[rows], t)
        fault_types = self._fault_types(kind)
        for fault in fault_types:
            assert self.faults is not None
            ep = self.faults.episodes(kind, fault, table.key[rows], t)
            offline |= ep.hit & (t >= self.faults.offline_from(fault, ep.start, ep.end))
        state = self._offline[kind]
        was = state[rows]
        down, up = rows[offline & ~was], rows[~offline & was]
        state[down] = True
        state[up] = False
        if down.size and self.faults is not None:
            # A cut link is a fault the platform sees (the will), even with no report inside it.
            for fault in fault_types:
                self.faults.log_offline(kind, fault, down, np.full(len(down), t_ms, dtype=np.int64))
        changes: list[LinkChange] = []
        if up.size:
            changes.append(LinkChange(kind, up, online=True))
        if down.size:
            changes.append(LinkChange(kind, down, online=False))
        return changes
