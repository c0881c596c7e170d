"""When each device reports: fixed slots ``n x interval + offset`` on the simulated clock.

Slots are aligned to the epoch, not to the simulator's start, so a device reports at the
same instants (and with the same ``seq``) whenever and however often the simulator runs.
Offsets spread each kind's devices evenly over its interval, which keeps the load smooth.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np
from numpy.typing import NDArray

from simulator import clock
from simulator.city import DeviceTable

IntArray = NDArray[np.int64]

# NB-IoT water and gas meters upload once a day a block of 24 hourly frozen readings, in a
# slot of ``serial mod 1440`` minutes after local midnight (DOMAIN.md section 2).
FROZEN_READINGS: Mapping[str, int] = MappingProxyType({"water_meter": 24, "gas_meter": 24})
FROZEN_STEP_MS = clock.MS_PER_H
_MINUTES_PER_DAY = 1440


@dataclass(frozen=True, eq=False)
class Due:
    """Reports due in a window: table rows and their slot times (epoch ms), in time order."""

    rows: IntArray
    slot_ms: IntArray

    def __len__(self) -> int:
        return len(self.rows)


class KindSchedule:
    """Report slots of every device of one kind."""

    def __init__(self, table: DeviceTable) -> None:
        self.table = table
        self.interval_ms = int(table.kind.interval_s) * 1000
        self.frozen_readings = FROZEN_READINGS.get(table.kind.name, 0)
        serial = table.serial
        if self.frozen_readings:
            minute = serial % _MINUTES_PER_DAY
            second = (serial // _MINUTES_PER_DAY) % 60
            local_ms = minute * clock.MS_PER_MIN + second * clock.MS_PER_S
            self.offset_ms = (local_ms - clock.UTC_OFFSET_MS) % self.interval_ms
        else:
            self.offset_ms = serial % self.interval_ms
        self._order = np.argsort(self.offset_ms, kind="stable")
        self._sorted = self.offset_ms[self._order]
        self._installed_slot = self._slot_number(np.arange(len(table)), table.installed_ms)

    @property
    def devices(self) -> int:
        return len(self.table)

    @property
    def readings_per_report(self) -> int:
        return max(1, self.frozen_readings)

    def _slot_number(self, rows: IntArray, t_ms: IntArray) -> IntArray:
        return (np.asarray(t_ms, dtype=np.int64) - self.offset_ms[rows]) // self.interval_ms

    def due(self, after_ms: int, until_ms: int) -> Due:
        """Every report with a slot time in ``(after_ms, until_ms]``."""
        rows: list[IntArray] = []
        times: list[IntArray] = []
        interval = self.interval_ms
        for cycle in range(after_ms // interval - 1, until_ms // interval + 1):
            base = cycle * interval
            lo = int(np.searchsorted(self._sorted, after_ms - base, side="right"))
            hi = int(np.searchsorted(self._sorted, until_ms - base, side="right"))
            if hi > lo:
                rows.append(self._order[lo:hi])
                times.append(base + self._sorted[lo:hi])
        if not rows:
            return Due(np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64))
        return Due(np.concatenate(rows), np.concatenate(times))

    def latest(self, at_ms: int) -> Due:
        """Each device's most recent slot at or before ``at_ms`` (one report per device)."""
        rows = np.arange(self.devices, dtype=np.int64)
        slot = self._slot_number(rows, np.full(self.devices, at_ms, dtype=np.int64))
        times = slot * self.interval_ms + self.offset_ms
        order = np.argsort(times, kind="stable")
        return Due(rows[order], times[order])

    def seq(self, rows: IntArray, slot_ms: IntArray) -> IntArray:
        """Per-device report counter: slots since the install date (0 for the first)."""
        return np.maximum(0, self._slot_number(rows, slot_ms) - self._installed_slot[rows])

    def frozen_times(self, slot_ms: IntArray) -> IntArray:
        """Times of the hourly frozen readings carried by uploads at ``slot_ms``: (reports, readings)."""
        last = (np.asarray(slot_ms, dtype=np.int64) // FROZEN_STEP_MS) * FROZEN_STEP_MS
        back = np.arange(self.frozen_readings - 1, -1, -1, dtype=np.int64) * FROZEN_STEP_MS
        return last[:, None] - back[None, :]

    def frozen_seq(self, rows: IntArray, frozen_ms: IntArray) -> IntArray:
        """Counter of hourly frozen readings since the install date."""
        installed = self.table.installed_ms[rows]
        return np.maximum(0, (frozen_ms - installed[:, None]) // FROZEN_STEP_MS)


def build_schedules(tables: Mapping[str, DeviceTable]) -> dict[str, KindSchedule]:
    return {name: KindSchedule(table) for name, table in tables.items()}
