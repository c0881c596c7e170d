"""Household consumption profiles with a closed-form cumulative, for meters whose totals only grow.

A meter's total is ``daily volume x G(warped time)``: ``G`` counts "average days of
consumption" since 2000 (daily weights for weekday, season and the city's day-to-day
swing, times the cumulative hourly profile of the day) and the per-device warp moves the
household's clock a little, differently every hour. ``G`` and the warp both only increase,
so totals never decrease, and both are pure functions of time: no history to replay.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from simulator import clock, rng

FloatArray = NDArray[np.float64]

_FIRST_DAY = int(np.datetime64("2000-01-01", "D").astype(np.int64))
_LAST_DAY = int(np.datetime64("2100-01-01", "D").astype(np.int64))
# Warp knots every hour move by at most 45 minutes, so the warped clock still runs forward
# (slope >= 1 - 45/60) while a household's hourly use varies between 0.25x and 1.75x.
_WARP_MAX_MS = 45 * clock.MS_PER_MIN
_HABIT_MAX_MS = 60 * clock.MS_PER_MIN


def _normalised(values: tuple[float, ...]) -> FloatArray:
    profile = np.asarray(values, dtype=np.float64)
    if profile.shape != (24,) or np.any(profile <= 0):
        raise ValueError("an hourly profile needs 24 positive values")
    return profile / profile.mean()


@dataclass(frozen=True)
class DemandProfile:
    """Relative demand by hour (weekday, weekend), month and day of week; mean daily weight 1."""

    name: str
    weekday_hours: tuple[float, ...]
    weekend_hours: tuple[float, ...]
    month_factors: tuple[float, ...]
    weekend_factor: float
    day_sigma: float

    def __post_init__(self) -> None:
        _normalised(self.weekday_hours)
        _normalised(self.weekend_hours)
        if len(self.month_factors) != 12:
            raise ValueError("month_factors needs 12 values")

    def tables(self, seed: int) -> DayTables:
        """The day tables of this profile for ``seed`` (about 36,500 days; cheap to build)."""
        return DayTables(self, seed)


class DayTables:
    """Daily weights and their running sum from 2000 to 2100 for one profile and seed."""

    def __init__(self, profile: DemandProfile, seed: int) -> None:
        days = np.arange(_FIRST_DAY, _LAST_DAY + 1, dtype=np.int64)
        months = days.astype("datetime64[D]").astype("datetime64[M]").astype(np.int64) % 12
        month = np.asarray(profile.month_factors, dtype=np.float64)
        month = month / month.mean()
        self.weekend = (days + 3) % 7 >= 5
        swing = 1.0 + profile.day_sigma * rng.normal(seed, rng.stream_id(f"demand.{profile.name}"), days)
        self.weight = (
            month[months] * np.where(self.weekend, profile.weekend_factor, 1.0) * np.clip(swing, 0.3, 2.0)
        )
        # Normalise so that a year of weekdays and weekends averages one day of consumption a day.
        self.weight /= np.mean(np.where(self.weekend, profile.weekend_factor, 1.0))
        self.before = np.concatenate(([0.0], np.cumsum(self.weight)[:-1]))
        self.hours = np.stack([_normalised(profile.weekday_hours), _normalised(profile.weekend_hours)])
        self.hours_before = (
            np.concatenate((np.zeros((2, 1)), np.cumsum(self.hours, axis=1)[:, :-1]), axis=1) / 24.0
        )

    def cumulative(self, t_ms: ArrayLike) -> FloatArray:
        """Days of average consumption since 2000-01-01 local time, at ``t_ms`` (float ms allowed)."""
        t = np.atleast_1d(np.asarray(t_ms, dtype=np.float64))
        local = t + clock.UTC_OFFSET_MS
        day = np.floor(local / clock.MS_PER_DAY)
        index = np.clip(day.astype(np.int64) - _FIRST_DAY, 0, len(self.weight) - 1)
        hour_f = np.clip((local - day * clock.MS_PER_DAY) / clock.MS_PER_H, 0.0, 24.0)
        hour = np.minimum(hour_f.astype(np.int64), 23)
        kind = self.weekend[index].astype(np.int64)
        within = self.hours_before[kind, hour] + self.hours[kind, hour] * (hour_f - hour) / 24.0
        return self.before[index] + self.weight[index] * within

    def rate(self, t_ms: ArrayLike) -> FloatArray:
        """Instant demand relative to the long-run average (1.0 = an average hour)."""
        t = np.atleast_1d(np.asarray(t_ms, dtype=np.float64))
        local = t + clock.UTC_OFFSET_MS
        day = np.floor(local / clock.MS_PER_DAY)
        index = np.clip(day.astype(np.int64) - _FIRST_DAY, 0, len(self.weight) - 1)
        hour = np.clip(((local - day * clock.MS_PER_DAY) // clock.MS_PER_H).astype(np.int64), 0, 23)
        kind = self.weekend[index].astype(np.int64)
        return self.weight[index] * self.hours[kind, hour]


def household_clock(t_ms: ArrayLike, device: ArrayLike, seed: int, stream: int) -> FloatArray:
    """A household's own monotone clock: a fixed habit shift plus an hourly wobble, in ms."""
    t = np.atleast_1d(np.asarray(t_ms, dtype=np.float64))
    dev = np.atleast_1d(np.asarray(device, dtype=np.int64))
    habit = (rng.uniform(seed, stream, dev, -1) * 2.0 - 1.0) * _HABIT_MAX_MS
    x = t / clock.MS_PER_H
    k = np.floor(x)
    w = x - k
    k_int = k.astype(np.int64)
    a = rng.uniform(seed, stream, dev, k_int)
    b = rng.uniform(seed, stream, dev, k_int + 1)
    return t + habit + (a + (b - a) * w) * _WARP_MAX_MS


def _hours(text: str) -> tuple[float, ...]:
    """24 hourly weights written as text, 00:00 first, so tables stay readable."""
    return tuple(float(v) for v in text.split())


# Household tap water: peaks at 07:00-08:00 and 20:00-21:00, weekends about 10 % higher
# (smart-meter study of 1,871 households, DOMAIN.md section 3).
WATER = DemandProfile(
    "water",
    weekday_hours=_hours(
        "0.35 0.2 0.15 0.12 0.15 0.35 0.9 1.8 1.7 1.2 1.0 1.1 1.25 1.0 0.8 0.8 0.9 1.2 1.4 1.5 1.8 1.7 1.2 0.7"
    ),
    weekend_hours=_hours(
        "0.45 0.25 0.15 0.12 0.12 0.2 0.5 1.3 1.7 1.6 1.3 1.2 1.3 1.0 0.85 0.85 0.95 1.2 1.4 1.5 1.8 1.7 1.3 0.8"
    ),
    month_factors=(0.92, 0.92, 0.95, 1.0, 1.04, 1.08, 1.1, 1.1, 1.06, 1.0, 0.96, 0.93),
    weekend_factor=1.10,
    day_sigma=0.05,
)
# Piped gas: cooking at meals and the gas water heater in the evening; more in winter.
GAS = DemandProfile(
    "gas",
    weekday_hours=_hours(
        "0.1 0.05 0.05 0.05 0.05 0.2 1.0 1.6 0.8 0.4 0.5 1.8 1.6 0.5 0.3 0.3 0.5 1.6 2.2 1.8 1.9 2.0 1.2 0.4"
    ),
    weekend_hours=_hours(
        "0.15 0.05 0.05 0.05 0.05 0.1 0.5 1.2 1.3 0.8 0.7 1.8 1.7 0.6 0.4 0.4 0.6 1.6 2.2 1.8 1.9 2.0 1.3 0.5"
    ),
    month_factors=(1.35, 1.3, 1.15, 1.0, 0.9, 0.8, 0.75, 0.75, 0.8, 0.95, 1.1, 1.3),
    weekend_factor=1.08,
    day_sigma=0.06,
)
# Household electricity: 110-140 kWh a month most of the year, summer air conditioning in
# Shenzhen raises it towards the 260 kWh summer tier (DOMAIN.md section 3).
ELECTRICITY = DemandProfile(
    "electricity",
    weekday_hours=_hours(
        "0.7 0.6 0.55 0.5 0.5 0.55 0.8 1.1 0.9 0.8 0.8 0.9 1.0 0.9 0.8 0.8 0.9 1.1 1.5 1.8 1.9 1.8 1.5 1.0"
    ),
    weekend_hours=_hours(
        "0.8 0.65 0.55 0.5 0.5 0.5 0.6 0.9 1.0 1.0 1.0 1.1 1.1 1.0 0.95 0.95 1.0 1.15 1.5 1.8 1.9 1.8 1.5 1.1"
    ),
    month_factors=(0.85, 0.85, 0.8, 0.9, 1.15, 1.4, 1.55, 1.55, 1.35, 1.0, 0.85, 0.85),
    weekend_factor=1.05,
    day_sigma=0.08,
)
