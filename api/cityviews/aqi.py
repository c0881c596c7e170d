"""China's air quality index (AQI): breakpoint tables, sub-indices (IAQI), AQI, category.

Method and tables: HJ 633-2012 "Technical regulation on ambient air quality index" and its
successor HJ 633-2026 (with GB 3095-2026, current since 1 March 2026), which changed only the
PM2.5 and PM10 rows. Figures as in ../shared/DOMAIN.md section 4.

- IAQI_P = (IAQI_hi - IAQI_lo) / (BP_hi - BP_lo) * (C_P - BP_lo) + IAQI_lo (formula 1), rounded
  UP to an integer (the standard's "进位取整数").
- AQI = max of the IAQIs (formula 2); primary pollutant(s): those whose IAQI equals the AQI,
  only when the AQI is above 50 (section 4.3).
- Above a table's top breakpoint (IAQI 500) the IAQI is 500: the index is not defined beyond it
  and every common implementation saturates there.
- SO2 1 h above 800 ug/m3: table 1 note 2, the SO2 IAQI is reported from the 24 h mean with the
  24 h table. Without a 24 h mean the IAQI is 200, the top of the 1 h table (what common
  implementations do: the 1 h value is known to be at least that bad).
- O3 8 h above 800 ug/m3: table 1 note 3, the O3 IAQI is reported from the 1 h value.

Indicators per period:

- hourly (real-time report, HJ 633 section 5.2): SO2, NO2, CO and O3 1 h means with the 1 h
  tables; PM2.5 and PM10 with the 24 h tables applied to the 24 h moving mean ending at that hour.
- daily (daily report, HJ 633 section 5.1): SO2, NO2, CO, PM2.5 and PM10 24 h means, the O3
  daily maximum 8 h moving mean and the O3 daily maximum 1 h mean - the seven indicators the
  daily report lists.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from fractions import Fraction
from types import MappingProxyType

from api.cityviews._numbers import exact


class Standard(StrEnum):
    """The breakpoint table in force: HJ 633-2026 (default) or the previous HJ 633-2012."""

    HJ633_2026 = "HJ633-2026"
    HJ633_2012 = "HJ633-2012"


DEFAULT_STANDARD = Standard.HJ633_2026

STANDARD_TITLES: Mapping[Standard, str] = MappingProxyType(
    {
        Standard.HJ633_2026: "HJ 633-2026 Technical regulation on ambient air quality index"
        " (with GB 3095-2026; PM2.5 and PM10 rows revised)",
        Standard.HJ633_2012: "HJ 633-2012 Technical regulation on ambient air quality index (on trial)",
    }
)


class Period(StrEnum):
    HOURLY = "hourly"
    DAILY = "daily"


class Indicator(StrEnum):
    """A pollutant with its averaging time: one row of the breakpoint table."""

    PM25_24H = "pm25_24h"
    PM10_24H = "pm10_24h"
    SO2_24H = "so2_24h"
    SO2_1H = "so2_1h"
    NO2_24H = "no2_24h"
    NO2_1H = "no2_1h"
    CO_24H = "co_24h"
    CO_1H = "co_1h"
    O3_1H = "o3_1h"
    O3_8H = "o3_8h"


@dataclass(frozen=True, slots=True)
class IndicatorInfo:
    pollutant: str
    metric: str
    unit: str
    hours: int


INDICATORS: Mapping[Indicator, IndicatorInfo] = MappingProxyType(
    {
        Indicator.PM25_24H: IndicatorInfo("PM2.5", "pm25", "ug/m3", 24),
        Indicator.PM10_24H: IndicatorInfo("PM10", "pm10", "ug/m3", 24),
        Indicator.SO2_24H: IndicatorInfo("SO2", "so2", "ug/m3", 24),
        Indicator.SO2_1H: IndicatorInfo("SO2", "so2", "ug/m3", 1),
        Indicator.NO2_24H: IndicatorInfo("NO2", "no2", "ug/m3", 24),
        Indicator.NO2_1H: IndicatorInfo("NO2", "no2", "ug/m3", 1),
        Indicator.CO_24H: IndicatorInfo("CO", "co", "mg/m3", 24),
        Indicator.CO_1H: IndicatorInfo("CO", "co", "mg/m3", 1),
        Indicator.O3_1H: IndicatorInfo("O3", "o3", "ug/m3", 1),
        Indicator.O3_8H: IndicatorInfo("O3", "o3", "ug/m3", 8),
    }
)

# The IAQI at each breakpoint column (HJ 633-2012 table 1).
IAQI_STEPS: tuple[int, ...] = (0, 50, 100, 150, 200, 300, 400, 500)
IAQI_MAX = IAQI_STEPS[-1]

# HJ 633-2012 table 1 (ug/m3; CO mg/m3). SO2 1 h and O3 8 h stop at IAQI 200 and 300: above
# 800 ug/m3 the standard reports another indicator instead (notes 2 and 3).
_COMMON: dict[Indicator, tuple[int, ...]] = {
    Indicator.SO2_24H: (0, 50, 150, 475, 800, 1600, 2100, 2620),
    Indicator.SO2_1H: (0, 150, 500, 650, 800),
    Indicator.NO2_24H: (0, 40, 80, 180, 280, 565, 750, 940),
    Indicator.NO2_1H: (0, 100, 200, 700, 1200, 2340, 3090, 3840),
    Indicator.CO_24H: (0, 2, 4, 14, 24, 36, 48, 60),
    Indicator.CO_1H: (0, 5, 10, 35, 60, 90, 120, 150),
    Indicator.O3_1H: (0, 160, 200, 300, 400, 800, 1000, 1200),
    Indicator.O3_8H: (0, 100, 160, 215, 265, 800),
}
_PARTICLES: dict[Standard, dict[Indicator, tuple[int, ...]]] = {
    # HJ 633-2012 table 1.
    Standard.HJ633_2012: {
        Indicator.PM25_24H: (0, 35, 75, 115, 150, 250, 350, 500),
        Indicator.PM10_24H: (0, 50, 150, 250, 350, 420, 500, 600),
    },
    # HJ 633-2026: the 100-IAQI breakpoints follow the GB 3095-2026 grade-II daily limits
    # (PM2.5 60 ug/m3 until 2030, PM10 120 ug/m3).
    Standard.HJ633_2026: {
        Indicator.PM25_24H: (0, 35, 60, 115, 150, 250, 350, 500),
        Indicator.PM10_24H: (0, 50, 120, 250, 350, 420, 500, 600),
    },
}
BREAKPOINTS: Mapping[Standard, Mapping[Indicator, tuple[int, ...]]] = MappingProxyType(
    {std: MappingProxyType({**_COMMON, **particles}) for std, particles in _PARTICLES.items()}
)

# Above these, HJ 633-2012 table 1 notes 2 and 3 replace the indicator's own table.
SO2_1H_LIMIT = 800
O3_8H_LIMIT = 800
# What the 1 h table gives at its top (800 ug/m3): the SO2 IAQI when no 24 h mean is at hand.
SO2_1H_CAP_IAQI = 200

_COMPONENTS: Mapping[Period, tuple[Indicator, ...]] = MappingProxyType(
    {
        Period.HOURLY: (
            Indicator.PM25_24H,
            Indicator.PM10_24H,
            Indicator.SO2_1H,
            Indicator.NO2_1H,
            Indicator.CO_1H,
            Indicator.O3_1H,
        ),
        Period.DAILY: (
            Indicator.PM25_24H,
            Indicator.PM10_24H,
            Indicator.SO2_24H,
            Indicator.NO2_24H,
            Indicator.CO_24H,
            Indicator.O3_8H,
            Indicator.O3_1H,
        ),
    }
)


def components(period: Period) -> tuple[Indicator, ...]:
    """The indicators whose IAQIs make up the AQI of ``period``, in report order."""
    return _COMPONENTS[period]


@dataclass(frozen=True, slots=True)
class Category:
    """An AQI category (HJ 633-2012 table 2) and its colour (appendix A)."""

    level: int
    aqi_low: int
    aqi_high: int
    name_zh: str
    name_en: str
    colour: str


CATEGORIES: tuple[Category, ...] = (
    Category(1, 0, 50, "优", "Excellent", "#00E400"),
    Category(2, 51, 100, "良", "Good", "#FFFF00"),
    Category(3, 101, 150, "轻度污染", "Lightly polluted", "#FF7E00"),
    Category(4, 151, 200, "中度污染", "Moderately polluted", "#FF0000"),
    Category(5, 201, 300, "重度污染", "Heavily polluted", "#99004C"),
    Category(6, 301, IAQI_MAX, "严重污染", "Severely polluted", "#7E0023"),
)


def category(aqi: int) -> Category:
    """The category of an AQI value (0-500)."""
    for cat in CATEGORIES:
        if aqi <= cat.aqi_high:
            return cat
    return CATEGORIES[-1]


def iaqi(indicator: Indicator, concentration: float, standard: Standard = DEFAULT_STANDARD) -> int | None:
    """The sub-index of ``concentration`` on ``indicator``'s own table, rounded up.

    500 above a full table's top; None above a table that stops early (SO2 1 h, O3 8 h above
    800 ug/m3), where HJ 633 reports another indicator: ``evaluate`` applies that rule.
    """
    c = exact(concentration, name=indicator.value)
    table = BREAKPOINTS[standard][indicator]
    if c > table[-1]:
        return IAQI_MAX if len(table) == len(IAQI_STEPS) else None
    for i in range(1, len(table)):
        if c <= table[i]:
            bp_lo, bp_hi = table[i - 1], table[i]
            i_lo, i_hi = IAQI_STEPS[i - 1], IAQI_STEPS[i]
            return math.ceil(Fraction(i_hi - i_lo, bp_hi - bp_lo) * (c - bp_lo) + i_lo)
    raise AssertionError("unreachable: c <= table[-1]")


@dataclass(frozen=True, slots=True)
class SubIndex:
    """One indicator's part of an AQI.

    ``basis`` is the indicator whose concentration and table gave the IAQI: the indicator itself,
    or its stand-in under HJ 633-2012 table 1 notes 2-3 (SO2 24 h for SO2 1 h, O3 1 h for O3 8 h).
    """

    indicator: Indicator
    concentration: float | None
    iaqi: int | None
    basis: Indicator | None
    note: str | None = None


@dataclass(frozen=True, slots=True)
class AqiResult:
    aqi: int | None
    category: Category | None
    primary_pollutants: tuple[str, ...]
    primary_indicators: tuple[Indicator, ...]
    sub_indices: tuple[SubIndex, ...]


def _sub_index(
    indicator: Indicator,
    concentrations: Mapping[Indicator, float | None],
    standard: Standard,
) -> SubIndex:
    c = concentrations.get(indicator)
    if c is None:
        return SubIndex(indicator, None, None, None, "no valid concentration")
    if indicator is Indicator.SO2_1H and exact(c) > SO2_1H_LIMIT:
        day = concentrations.get(Indicator.SO2_24H)
        if day is not None:
            return SubIndex(
                indicator,
                c,
                iaqi(Indicator.SO2_24H, day, standard),
                Indicator.SO2_24H,
                f"SO2 1 h above 800 ug/m3: IAQI from the 24 h mean, {day:.1f} ug/m3"
                " (HJ 633-2012 table 1 note 2)",
            )
        return SubIndex(
            indicator,
            c,
            SO2_1H_CAP_IAQI,
            indicator,
            "SO2 1 h above 800 ug/m3 and no 24 h mean: IAQI capped at 200, the top of the 1 h table",
        )
    if indicator is Indicator.O3_8H and exact(c) > O3_8H_LIMIT:
        hour = concentrations.get(Indicator.O3_1H)
        if hour is None:
            return SubIndex(indicator, c, None, None, "O3 8 h above 800 ug/m3 and no O3 1 h value")
        return SubIndex(
            indicator,
            c,
            iaqi(Indicator.O3_1H, hour, standard),
            Indicator.O3_1H,
            f"O3 8 h above 800 ug/m3: IAQI from the 1 h value, {hour:.1f} ug/m3 (HJ 633-2012 table 1 note 3)",
        )
    return SubIndex(indicator, c, iaqi(indicator, c, standard), indicator)


def evaluate(
    period: Period,
    concentrations: Mapping[Indicator, float | None],
    standard: Standard = DEFAULT_STANDARD,
) -> AqiResult:
    """AQI, category and primary pollutants of ``period`` from indicator concentrations.

    ``concentrations`` holds the period's components (``components(period)``) and, for hourly,
    the SO2 24 h moving mean used above 800 ug/m3 SO2 1 h. Missing or None values are left out of
    the AQI; with no sub-index at all the AQI is None.
    """
    subs = tuple(_sub_index(ind, concentrations, standard) for ind in components(period))
    values = [s.iaqi for s in subs if s.iaqi is not None]
    if not values:
        return AqiResult(None, None, (), (), subs)
    aqi = max(values)
    primary: tuple[Indicator, ...] = ()
    if aqi > CATEGORIES[0].aqi_high:
        primary = tuple(s.indicator for s in subs if s.iaqi == aqi)
    pollutants = tuple(dict.fromkeys(INDICATORS[ind].pollutant for ind in primary))
    return AqiResult(aqi, category(aqi), pollutants, primary, subs)
