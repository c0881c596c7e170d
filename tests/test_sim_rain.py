"""Rain gauges report the weather's rain: over a simulated year a hydrology station's gauge has
the weather's rain days and total (DOMAIN.md section 3: Shenzhen about 140 rain days and
1,925 mm a year).

A gauge that rounded each five-minute interval on its own lost every drizzle below about
0.6 mm/h: 100 rain days in 2025 where the weather had about 136.
"""

from __future__ import annotations

import numpy as np
import pytest

from simulator import clock
from simulator.city import build_city
from simulator.drivers import Drivers
from simulator.kinds import build_models
from simulator.schedule import build_schedules

YEAR_START_MS = int(clock.local_day_start_ms(np.datetime64("2025-01-01", "D").astype(np.int64)))
DAYS = 365


@pytest.fixture(scope="module")
def year() -> dict[str, np.ndarray]:
    """Daily sums of the rain six hydrology stations' gauges reported over 2025 (each report
    at its own slot, rounded as on the wire), next to the weather's daily rain times the
    gauge's catch."""
    city = build_city("small", 1.0, 42)
    drivers = Drivers(city.seed)
    model = build_models(city, drivers)["hydrology_station"]
    schedule = build_schedules(city.tables)["hydrology_station"]
    stations = min(len(model.table), 6)
    reported = np.zeros((stations, DAYS))
    weather = np.zeros((stations, DAYS))
    rows = np.arange(stations, dtype=np.int64)
    catch = model._between("gauge", rows, 0.9, 1.1)
    for day in range(DAYS):
        start = YEAR_START_MS + day * clock.MS_PER_DAY
        due = schedule.due(start, start + clock.MS_PER_DAY)
        mine = due.rows < stations
        r, t = due.rows[mine], due.slot_ms[mine]
        # What the model's step reports as rain_mm (test_step_reports_the_gauge), without
        # the river levels' expensive routing.
        rain = model._rain_gauge_mm(r, t - schedule.interval_ms, t, catch[r])
        rain = np.round(rain, model.decimals["rain_mm"])
        np.add.at(reported[:, day], r, rain)
        weather[:, day] = catch * drivers.rain_mm(
            model.table.district[rows], np.full(stations, start), np.full(stations, start + clock.MS_PER_DAY)
        )
    return {"reported": reported, "weather": weather}


def test_a_gauge_has_the_weathers_rain_days_and_total(year: dict[str, np.ndarray]) -> None:
    reported, weather = year["reported"], year["weather"]
    for station in range(len(reported)):
        # A rain day: at least one tip, 0.1 mm. (A report's interval may begin the day before:
        # its slot has its own phase; hence the tolerance of a day.)
        reported_days = int(np.sum(reported[station] >= 0.1 - 1e-9))
        weather_days = int(np.sum(weather[station] >= 0.1))
        assert abs(reported_days - weather_days) <= 2, (station, reported_days, weather_days)
        # Whole tips only: what is left in the bucket at midnight (under a tip) is dropped.
        assert weather[station].sum() - 0.1 * weather_days <= reported[station].sum()
        assert reported[station].sum() <= weather[station].sum() + 0.1
        # The city's climate (DOMAIN.md section 3); one district in one year varies.
        assert 110 <= reported_days <= 175, reported_days
        assert 1925 * 0.6 <= reported[station].sum() <= 1925 * 1.4, reported[station].sum()


def test_step_reports_the_gauge() -> None:
    """The hydrology model's rain_mm is the gauge's (what the year above checks)."""
    city = build_city("small", 1.0, 42)
    drivers = Drivers(city.seed)
    model = build_models(city, drivers)["hydrology_station"]
    rows = np.repeat(np.arange(min(len(model.table), 6), dtype=np.int64), 288)
    # The wettest June day of the first station, every five minutes.
    june = YEAR_START_MS + np.arange(151, 181, dtype=np.int64) * clock.MS_PER_DAY
    district = np.full(len(june), model.table.district[0])
    start = int(june[np.argmax(drivers.rain_mm(district, june, june + clock.MS_PER_DAY))])
    t = start + 300_000 * np.tile(np.arange(1, 289, dtype=np.int64), len(rows) // 288)
    rain = model.step(rows, t)["rain_mm"]
    catch = model._between("gauge", rows, 0.9, 1.1)
    assert rain.sum() > 1.0
    assert np.array_equal(rain, model._rain_gauge_mm(rows, t - 300_000, t, catch))


def test_drizzle_tips_the_bucket_now_and_then() -> None:
    """Rain of 0.3 mm/h (0.025 mm per five minutes) shows up, one tip every 20 minutes."""
    city = build_city("small", 1.0, 42)
    drivers = Drivers(city.seed)
    model = build_models(city, drivers)["hydrology_station"]
    row = np.zeros(1, dtype=np.int64)
    catch = np.ones(1)
    start = YEAR_START_MS + 10 * clock.MS_PER_H

    class Drizzle:
        def rain_mm(self, d: np.ndarray, t0: np.ndarray, t1: np.ndarray) -> np.ndarray:
            return 0.3 * (np.asarray(t1) - np.asarray(t0)) / clock.MS_PER_H

    model.drivers = Drizzle()  # type: ignore[assignment]
    tips = [
        float(model._rain_gauge_mm(row, np.array([t - 300_000]), np.array([t]), catch)[0])
        for t in range(start + 300_000, start + 2 * clock.MS_PER_H + 1, 300_000)
    ]
    assert sum(tips) == pytest.approx(0.6)
    assert sorted(set(np.round(tips, 6))) == [0.0, 0.1]


def test_air_stations_rain_gauge_tips_too() -> None:
    """Air stations report hourly rain from the same kind of gauge (catching all of it)."""
    city = build_city("small", 1.0, 42)
    drivers = Drivers(city.seed)
    model = build_models(city, drivers)["air_station"]
    rows = np.zeros(24 * 30, dtype=np.int64)
    t = YEAR_START_MS + 151 * clock.MS_PER_DAY + clock.MS_PER_H * np.arange(1, len(rows) + 1, dtype=np.int64)
    rain = np.round(model.step(rows, t)["rain_mm"], model.decimals["rain_mm"])
    assert np.array_equal(
        rain, np.round(model._rain_gauge_mm(rows, t - clock.MS_PER_H, t, np.ones(len(rows))), 1)
    )
    fell = drivers.rain_mm(model.table.district[:1], t[:1] - clock.MS_PER_H, t[-1:])[0]
    assert fell - 0.1 * 31 <= rain.sum() <= fell + 1e-6
