"""Rain intensity categories and the national rainstorm warning signal (DOMAIN.md section 6).

- Hourly category: 小雨 <= 2.5 mm, 中雨 2.6-8.0, 大雨 8.1-15.9, 暴雨 >= 16 (China Meteorological
  Administration hourly intensity grades). Amounts are compared at 0.1 mm, so the printed
  bounds leave no gap: 2.5 is 小雨, 2.6 中雨; zero is "no rain".
- 24 h category: < 10, 10-24.9, 25-49.9, 50-99.9 暴雨, 100-249.9 大暴雨, >= 250 特大暴雨
  (GB/T 28592-2012 24 h grades).
- Rainstorm warning signals (气象灾害预警信号发布与传播办法, CMA order 16, 2007): blue 50 mm in
  12 h, yellow 50 mm in 6 h, orange 50 mm in 3 h, red 100 mm in 3 h; the highest that applies.
  The signals also cover rain "expected" to reach those amounts; we see observations only, so
  the level here is what has been reached.

A district's accumulations are the maxima over its stations, each window separately: a
rainstorm is local, a mean over the district's gauges would dilute it, and a signal is issued
when any part of the area reaches the amount. Because every level tests one window against a
threshold, the level from the district maxima equals the highest level of any station.

Amounts are rounded to 0.1 mm, the resolution rain gauges report (SL 651 rainfall 0.1 mm).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from enum import IntEnum

from api.cityviews import CityViewError

RESOLUTION_MM = Decimal("0.1")


@dataclass(frozen=True, slots=True)
class RainCategory:
    key: str
    name_zh: str
    name_en: str


Grader = Callable[[float], RainCategory]

NO_RAIN = RainCategory("none", "无降水", "no rain")
LIGHT = RainCategory("light", "小雨", "light rain")
MODERATE = RainCategory("moderate", "中雨", "moderate rain")
HEAVY = RainCategory("heavy", "大雨", "heavy rain")
RAINSTORM = RainCategory("rainstorm", "暴雨", "rainstorm")
HEAVY_RAINSTORM = RainCategory("heavy_rainstorm", "大暴雨", "heavy rainstorm")
EXTREME_RAINSTORM = RainCategory("extreme_rainstorm", "特大暴雨", "extreme rainstorm")

# (upper bound inclusive in mm, category); above the last bound: the last category given.
_HOURLY: tuple[tuple[Decimal, RainCategory], ...] = (
    (Decimal("2.5"), LIGHT),
    (Decimal("8.0"), MODERATE),
    (Decimal("15.9"), HEAVY),
)
_DAILY: tuple[tuple[Decimal, RainCategory], ...] = (
    (Decimal("9.9"), LIGHT),
    (Decimal("24.9"), MODERATE),
    (Decimal("49.9"), HEAVY),
    (Decimal("99.9"), RAINSTORM),
    (Decimal("249.9"), HEAVY_RAINSTORM),
)


class RainWarning(IntEnum):
    """Rainstorm warning signal levels, ordered by severity."""

    NONE = 0
    BLUE = 1
    YELLOW = 2
    ORANGE = 3
    RED = 4

    @property
    def key(self) -> str:
        return self.name.lower()

    @property
    def name_zh(self) -> str:
        return _WARNING_ZH[self]


_WARNING_ZH = {
    RainWarning.NONE: "无",
    RainWarning.BLUE: "暴雨蓝色预警信号",
    RainWarning.YELLOW: "暴雨黄色预警信号",
    RainWarning.ORANGE: "暴雨橙色预警信号",
    RainWarning.RED: "暴雨红色预警信号",
}

# (level, window hours, threshold mm), most severe first.
WARNING_RULES: tuple[tuple[RainWarning, int, Decimal], ...] = (
    (RainWarning.RED, 3, Decimal(100)),
    (RainWarning.ORANGE, 3, Decimal(50)),
    (RainWarning.YELLOW, 6, Decimal(50)),
    (RainWarning.BLUE, 12, Decimal(50)),
)
WINDOWS_H: tuple[int, ...] = (1, 3, 6, 12, 24)


def round_mm(value: float) -> Decimal:
    """A rain amount at gauge resolution (0.1 mm); negative or non-finite values are refused."""
    if not math.isfinite(value):
        raise CityViewError(f"rain amount must be finite, got {value!r}")
    amount = Decimal(repr(value)).quantize(RESOLUTION_MM, rounding=ROUND_HALF_UP)
    if amount < 0:
        raise CityViewError(f"rain amount must not be negative, got {value!r}")
    return amount


def _grade(mm: float, table: Sequence[tuple[Decimal, RainCategory]], top: RainCategory) -> RainCategory:
    amount = round_mm(mm)
    if amount == 0:
        return NO_RAIN
    for bound, cat in table:
        if amount <= bound:
            return cat
    return top


def hourly_category(mm: float) -> RainCategory:
    """Category of one hour's rain."""
    return _grade(mm, _HOURLY, RAINSTORM)


def daily_category(mm: float) -> RainCategory:
    """Category of 24 hours' rain."""
    return _grade(mm, _DAILY, EXTREME_RAINSTORM)


def warning_level(mm_3h: float | None, mm_6h: float | None, mm_12h: float | None) -> RainWarning:
    """The highest rainstorm signal the observed accumulations reach (None: no data, not reached)."""
    amounts = {3: mm_3h, 6: mm_6h, 12: mm_12h}
    for level, hours, threshold in WARNING_RULES:
        value = amounts[hours]
        if value is not None and round_mm(value) >= threshold:
            return level
    return RainWarning.NONE


@dataclass(frozen=True, slots=True)
class Accumulations:
    """Rain in the last 1, 3, 6, 12 and 24 h (mm); None where no reading fell in the window."""

    h1: float | None
    h3: float | None
    h6: float | None
    h12: float | None
    h24: float | None

    def warning(self) -> RainWarning:
        return warning_level(self.h3, self.h6, self.h12)


def _max(values: Iterable[float | None]) -> float | None:
    present = [round_mm(v) for v in values if v is not None]
    return float(max(present)) if present else None


def area_accumulations(stations: Sequence[Accumulations]) -> Accumulations:
    """A district's accumulations: per window, the maximum over its stations."""
    return Accumulations(
        h1=_max(s.h1 for s in stations),
        h3=_max(s.h3 for s in stations),
        h6=_max(s.h6 for s in stations),
        h12=_max(s.h12 for s in stations),
        h24=_max(s.h24 for s in stations),
    )
