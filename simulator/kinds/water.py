"""Surface water: the automatic water-quality station and the hydrology / rain station."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import numpy as np

from simulator import clock
from simulator.drivers import seasonal_mean_temperature_c
from simulator.kinds.base import FloatArray, IntArray, KindModel, Values


def _photosynthesis(hour: FloatArray) -> FloatArray:
    """+1 in mid-afternoon, when algae have produced the most oxygen, -1 before dawn."""
    return np.sin(2.0 * np.pi * (hour - 9.0) / 24.0)


class WaterQualityStationModel(KindModel):
    """One analysis every four hours of a Shenzhen river at GB 3838-2002 class III-IV.

    The station's long-run level of each parameter is drawn within class III-IV (DO 3-6 mg/L,
    CODMn 4-10, NH3-N 0.5-1.5, TP 0.1-0.3); storms first wash pollutants in and then dilute.
    """

    kind_name = "water_quality_station"
    decimals: ClassVar[Mapping[str, int]] = {
        "water_temp_c": 1,
        "ph": 2,
        "do_mgl": 2,
        "conductivity_uscm": 0,
        "turbidity_ntu": 1,
        "codmn_mgl": 2,
        "nh3n_mgl": 3,
        "tp_mgl": 3,
        "tn_mgl": 2,
    }

    def step(self, rows: IntArray, t_ms: IntArray) -> Values:
        d = self._district(rows)
        dr = self.drivers
        hour = clock.local_hour(t_ms)
        water_temp = 0.55 * seasonal_mean_temperature_c(t_ms) + 0.25 * dr.temperature_c(d, t_ms) + 5.5
        water_temp = np.clip(water_temp + 0.2 * self._normal("temp", rows, t_ms), 0.0, 40.0)
        runoff = dr.rain_response(d, t_ms, 6.0)
        flush = runoff / (runoff + 20.0)

        def level(name: str, low: float, high: float, sigma: float) -> FloatArray:
            base = self._between(f"{name}.site", rows, low, high)
            return base * np.exp(
                sigma * self._slow(name, rows, t_ms, 72.0) + 0.03 * self._normal(name, rows, t_ms)
            )

        do = level("do", 3.4, 5.8, 0.1) * (1.0 + 0.15 * _photosynthesis(hour)) * (1.0 - 0.3 * flush)
        # Warmer water holds less oxygen (saturation falls about 2 % per degree near 25 C).
        do = do * (1.0 + 0.02 * (24.0 - water_temp))
        ph = (
            self._between("ph.site", rows, 7.0, 7.6)
            + 0.25 * _photosynthesis(hour)
            - 0.2 * flush
            + 0.05 * self._normal("ph", rows, t_ms)
        )
        nh3n = level("nh3n", 0.5, 1.35, 0.12) * (1.0 + 0.6 * flush)
        return {
            "water_temp_c": water_temp,
            "ph": np.clip(ph, 6.0, 9.0),
            "do_mgl": np.clip(do, 0.3, 15.0),
            "conductivity_uscm": np.clip(
                level("cond", 350.0, 900.0, 0.08) * (1.0 - 0.4 * flush), 50.0, 100_000.0
            ),
            "turbidity_ntu": np.clip(level("turb", 6.0, 30.0, 0.2) * (1.0 + 4.0 * flush), 0.1, 4000.0),
            "codmn_mgl": np.clip(level("codmn", 4.5, 8.5, 0.1) * (1.0 + 0.5 * flush), 0.5, 100.0),
            "nh3n_mgl": np.clip(nh3n, 0.02, 100.0),
            "tp_mgl": np.clip(level("tp", 0.1, 0.27, 0.1) * (1.0 + 0.5 * flush), 0.005, 20.0),
            "tn_mgl": np.clip(nh3n + level("tn", 1.0, 3.0, 0.1), 0.1, 100.0),
        }


class HydrologyStationModel(KindModel):
    """River level and rain gauge reporting every five minutes (SL 651 style).

    The level is a base stage plus the rain routed through a Nash cascade of two linear
    reservoirs: it rises hours after the storm and drains away slowly.
    """

    kind_name = "hydrology_station"
    decimals: ClassVar[Mapping[str, int]] = {"water_level_m": 3, "rain_mm": 1, "supply_v": 2}

    def step(self, rows: IntArray, t_ms: IntArray) -> Values:
        d = self._district(rows)
        dr = self.drivers
        interval_ms = self.kind.interval_s * 1000
        # A tipping-bucket gauge catching 90-110 % of the rain (siting, wind).
        rain = self._rain_gauge_mm(rows, t_ms - interval_ms, t_ms, self._between("gauge", rows, 0.9, 1.1))

        wet_season = 0.5 + 0.5 * np.cos(2.0 * np.pi * (clock.day_of_year(t_ms) - 215.0) / 365.2425)
        stage = (
            self._between("stage", rows, 0.5, 3.0) + self._between("baseflow", rows, 0.1, 0.5) * wet_season
        )
        tau_h = self._between("tau", rows, 2.0, 8.0)
        rise = self._between("gain", rows, 0.015, 0.04) * dr.rain_response(d, t_ms, tau_h)
        # Radar level sensors: +-2 mm (DOMAIN.md section 6).
        level = stage + rise + 0.002 * self._normal("level", rows, t_ms)

        # 12 V lead-acid battery on a solar panel: charging by day, sagging slowly at night.
        sun = np.clip(np.sin(np.deg2rad(clock.sun_elevation_deg(t_ms))), 0.0, 1.0)
        charging = sun > 0.1
        since_dusk = (clock.local_hour(t_ms) - 19.0) % 24.0
        night_v = 12.6 - 0.25 * np.minimum(since_dusk, 11.0) / 11.0
        day_v = 13.1 + 0.6 * sun * dr.sky_clearness(d, t_ms)
        supply = np.where(charging, day_v, night_v) + 0.03 * self._normal("supply", rows, t_ms)
        return {
            "water_level_m": np.clip(level, 0.0, 30.0),
            "rain_mm": np.clip(rain, 0.0, 300.0),
            "supply_v": np.clip(supply, 11.5, 14.2),
        }
