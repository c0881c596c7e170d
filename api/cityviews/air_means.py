"""From 24 hourly means to the averages the AQI needs: 1 h, 24 h, 8 h moving and daily maxima.

A station's (or a district's) data is 24 hourly means per pollutant, oldest first, ending at the
end of the evaluated period. Hour i stands for the interval (end - (24 - i) h, end - (23 - i) h]:
Chinese hourly data are labelled with the end of their hour.

Data validity (GB 3095-2012 section 7, table 4 "data validity"):

- a 24 h mean of the daily report needs at least 20 hourly means;
- an 8 h moving mean needs at least 6 of its 8 hourly means; the O3 daily maximum 8 h is the
  largest of the valid 8 h means ending at 08:00 ... 24:00 (HJ 663-2013), i.e. the 17 windows
  that lie inside the day;
- the O3 daily maximum 1 h is the largest hourly mean of the day.

The real-time (hourly) view applies the same rule to its 24 h moving means (PM2.5, PM10, and
SO2 for the 1 h > 800 ug/m3 case): at least 20 of the 24 hourly means (GB 3095-2012 table 4; HJ
663-2013 refers to it). A moving mean with fewer is not valid and gives no IAQI, so a station that
started reporting an hour ago has no PM2.5 24 h figure rather than one resting on a single hour.
The 1 h indicators rest on the last hour's mean alone.

Each result says how many samples it rests on and how many the rule needs (``samples``,
``required``); ``value`` is None when it is not valid.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from api.cityviews import CityViewError
from api.cityviews.aqi import Indicator

HOURS_PER_DAY = 24
MIN_HOURS_24H = 20
WINDOW_8H = 8
MIN_HOURS_8H = 6
# 8 h windows lying inside the day: those ending at 08:00, 09:00, ... 24:00.
WINDOWS_8H_PER_DAY = HOURS_PER_DAY - WINDOW_8H + 1

POLLUTANTS: tuple[str, ...] = ("pm25", "pm10", "so2", "no2", "co", "o3")

# metric -> 24 hourly means, oldest first; None where the hour has no value.
HourlyMeans = Mapping[str, Sequence[float | None]]


@dataclass(frozen=True, slots=True)
class Concentration:
    """An averaged concentration and how many samples made it.

    ``samples`` counts hours, or for the O3 daily maximum 8 h the valid 8 h windows; ``value`` is
    None when the data fall short of the validity rule.
    """

    value: float | None
    samples: int
    required: int = 1

    @property
    def valid(self) -> bool:
        return self.value is not None


def _hours(series: HourlyMeans, metric: str) -> Sequence[float | None]:
    hours = series.get(metric)
    if hours is None:
        return (None,) * HOURS_PER_DAY
    if len(hours) != HOURS_PER_DAY:
        raise CityViewError(f"{metric}: expected {HOURS_PER_DAY} hourly means, got {len(hours)}")
    return hours


def _mean(values: Sequence[float | None], minimum: int) -> Concentration:
    present = [v for v in values if v is not None]
    if not present or len(present) < minimum:
        return Concentration(None, len(present), minimum)
    return Concentration(statistics.fmean(present), len(present), minimum)


def _latest(values: Sequence[float | None]) -> Concentration:
    last = values[-1]
    return Concentration(last, 0 if last is None else 1)


def _max_8h(values: Sequence[float | None]) -> Concentration:
    means = [
        _mean(values[start : start + WINDOW_8H], MIN_HOURS_8H).value for start in range(WINDOWS_8H_PER_DAY)
    ]
    valid = [m for m in means if m is not None]
    return Concentration(max(valid) if valid else None, len(valid))


def _max_1h(values: Sequence[float | None]) -> Concentration:
    present = [v for v in values if v is not None]
    return Concentration(max(present) if present else None, len(present))


def hourly_concentrations(series: HourlyMeans) -> dict[Indicator, Concentration]:
    """Real-time indicators: the last hour's SO2/NO2/CO/O3 and the 24 h moving means of
    PM2.5, PM10 and SO2 (the latter for the SO2 1 h > 800 rule), each of the latter valid with at
    least 20 hourly means (GB 3095-2012 table 4)."""
    return {
        Indicator.PM25_24H: _mean(_hours(series, "pm25"), MIN_HOURS_24H),
        Indicator.PM10_24H: _mean(_hours(series, "pm10"), MIN_HOURS_24H),
        Indicator.SO2_24H: _mean(_hours(series, "so2"), MIN_HOURS_24H),
        Indicator.SO2_1H: _latest(_hours(series, "so2")),
        Indicator.NO2_1H: _latest(_hours(series, "no2")),
        Indicator.CO_1H: _latest(_hours(series, "co")),
        Indicator.O3_1H: _latest(_hours(series, "o3")),
    }


def daily_concentrations(series: HourlyMeans) -> dict[Indicator, Concentration]:
    """Daily-report indicators: 24 h means (20 h minimum), O3 daily max 8 h and max 1 h."""
    o3 = _hours(series, "o3")
    return {
        Indicator.PM25_24H: _mean(_hours(series, "pm25"), MIN_HOURS_24H),
        Indicator.PM10_24H: _mean(_hours(series, "pm10"), MIN_HOURS_24H),
        Indicator.SO2_24H: _mean(_hours(series, "so2"), MIN_HOURS_24H),
        Indicator.NO2_24H: _mean(_hours(series, "no2"), MIN_HOURS_24H),
        Indicator.CO_24H: _mean(_hours(series, "co"), MIN_HOURS_24H),
        Indicator.O3_8H: _max_8h(o3),
        Indicator.O3_1H: _max_1h(o3),
    }


def area_means(stations: Sequence[HourlyMeans]) -> dict[str, list[float | None]]:
    """One area's hourly means: per hour and pollutant, the mean over the stations with a value.

    A city is evaluated from the arithmetic mean of its stations' concentrations (HJ 663-2013); averaging hour by hour first lets the 24 h, 8 h and 1 h statistics of the
    area follow from its own hourly series, exactly as for one station.
    """
    out: dict[str, list[float | None]] = {}
    for metric in POLLUTANTS:
        columns = [_hours(s, metric) for s in stations]
        out[metric] = [_mean([column[hour] for column in columns], 1).value for hour in range(HOURS_PER_DAY)]
    return out
