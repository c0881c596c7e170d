"""Load shapes and the open-loop schedule: when each message is *meant* to be sent.

Latency is measured from these intended times, so a generator that stalls cannot hide the
delay (the coordinated-omission problem): a message due at t and sent at t + 2 s already
carries 2 s of latency before it reaches the broker.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
from numpy.typing import NDArray


class Shape(StrEnum):
    STEADY = "steady"
    RAMP = "ramp"
    SPIKE = "spike"
    SOAK = "soak"
    RECONNECT_STORM = "reconnect-storm"


@dataclass(frozen=True, slots=True)
class LoadProfile:
    """Target rate over time: ``rate_per_s`` after a linear ramp of ``ramp_s`` (RAMP ramps the
    whole run); SPIKE multiplies the rate by ``spike_factor`` for ``spike_s`` in the middle.
    RECONNECT_STORM keeps the steady rate: the storm is an event on the connections
    (simulator/load/storm.py), not a change of rate."""

    shape: Shape
    rate_per_s: float
    duration_s: float
    ramp_s: float = 0.0
    spike_factor: float = 10.0
    spike_s: float = 10.0

    def __post_init__(self) -> None:
        if self.rate_per_s <= 0 or self.duration_s <= 0:
            raise ValueError("rate and duration must be positive")
        if self.ramp_s < 0 or self.spike_factor < 1 or self.spike_s < 0:
            raise ValueError("ramp_s >= 0, spike_factor >= 1 and spike_s >= 0 are required")

    @property
    def spike_window_s(self) -> tuple[float, float]:
        start = max(0.0, (self.duration_s - self.spike_s) / 2)
        return start, min(self.duration_s, start + self.spike_s)

    def rate_at(self, t_s: NDArray[np.float64]) -> NDArray[np.float64]:
        """Target messages per second at offsets ``t_s`` into the run."""
        t = np.asarray(t_s, dtype=np.float64)
        ramp_s = self.duration_s if self.shape is Shape.RAMP else self.ramp_s
        rate = np.full_like(t, self.rate_per_s)
        if ramp_s > 0:
            rate = rate * np.clip(t / ramp_s, 0.0, 1.0)
        if self.shape is Shape.SPIKE:
            start, end = self.spike_window_s
            rate = np.where((t >= start) & (t < end), rate * self.spike_factor, rate)
        return np.where((t >= 0) & (t < self.duration_s), rate, 0.0)


class OpenLoopSchedule:
    """Intended send offsets of a profile, handed out window by window.

    Message n (from 0) is due when the integral of the rate first exceeds n + 1 - 1e-9, so
    consecutive windows partition the schedule exactly and the count does not drift.

    ``share=(k, N)`` keeps only the messages n with n mod N == k: N publishing processes
    together send exactly the one schedule (each about rate / N, with the same shape).
    """

    def __init__(
        self, profile: LoadProfile, resolution_s: float = 0.001, share: tuple[int, int] = (0, 1)
    ) -> None:
        part, parts = share
        if not 0 <= part < parts:
            raise ValueError(f"share must satisfy 0 <= k < N, got {part}/{parts}")
        self.profile = profile
        self.resolution_s = resolution_s
        self._part, self._parts = part, parts
        # Integer grid steps, so windows of any size add up to exactly the same schedule.
        self._total_steps = math.ceil(profile.duration_s / resolution_s - 1e-9)
        self._done_steps = 0
        self._integral = 0.0
        self._total = 0  # messages of the whole schedule handed out so far

    @property
    def scheduled(self) -> int:
        """Messages of this share handed out so far."""
        return max(0, (self._total - self._part + self._parts - 1) // self._parts)

    @property
    def done_s(self) -> float:
        """How far into the run the schedule has been handed out."""
        return self._done_steps * self.resolution_s

    @property
    def finished(self) -> bool:
        return self._done_steps >= self._total_steps

    def due_until(self, t_s: float) -> NDArray[np.float64]:
        """Offsets (seconds into the run) of the messages due in [previous call, t_s)."""
        until = min(self._total_steps, math.floor(t_s / self.resolution_s + 1e-9))
        steps = until - self._done_steps
        if steps <= 0:
            return np.empty(0)
        grid: NDArray[np.float64] = (
            self._done_steps + np.arange(steps, dtype=np.float64)
        ) * self.resolution_s
        cumulative = self._integral + np.cumsum(self.profile.rate_at(grid)) * self.resolution_s
        total = math.floor(cumulative[-1] + 1e-9)
        first = self._total
        wanted = np.arange(first + 1, total + 1, dtype=np.float64)
        index = np.searchsorted(cumulative, wanted - 1e-9, side="left")
        self._done_steps = until
        self._integral = float(cumulative[-1])
        self._total = max(self._total, total)
        offsets = grid[np.minimum(index, steps - 1)]
        if self._parts > 1:
            offsets = offsets[(first + np.arange(len(offsets))) % self._parts == self._part]
        return offsets


def intended_offsets(
    profile: LoadProfile, resolution_s: float = 0.001, share: tuple[int, int] = (0, 1)
) -> NDArray[np.float64]:
    """The whole schedule (or one process's share of it) at once (tests and short runs)."""
    schedule = OpenLoopSchedule(profile, resolution_s, share)
    return schedule.due_until(profile.duration_s + resolution_s)
