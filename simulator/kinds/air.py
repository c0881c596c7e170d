"""Air quality monitoring station: the six criteria pollutants and meteorology."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import numpy as np

from simulator import clock
from simulator.kinds.base import FloatArray, IntArray, KindModel, Values

_HOUR_MS = clock.MS_PER_H


def _peak(hour: FloatArray, at: float, width_h: float) -> FloatArray:
    """A daily bump centred on ``at`` o'clock (wrapping at midnight)."""
    delta = (hour - at + 12.0) % 24.0 - 12.0
    return np.exp(-0.5 * (delta / width_h) ** 2)


def _autumn(t_ms: IntArray) -> FloatArray:
    """+1 in mid-October, when Shenzhen's ozone season peaks; -1 in mid-April."""
    return np.cos(2.0 * np.pi * (clock.day_of_year(t_ms) - 288.0) / 365.2425)


class AirStationModel(KindModel):
    """Hourly air quality and meteorology.

    Shenzhen: PM2.5 annual mean 18-26 ug/m3, NO2 ~38, SO2 ~9, PM10 ~43; NO2 peaks with the rush
    hours, O3 peaks in the afternoon with frequent night-time bumps (DOMAIN.md section 3).
    """

    kind_name = "air_station"
    decimals: ClassVar[Mapping[str, int]] = {
        "pm25": 1,
        "pm10": 1,
        "so2": 1,
        "no2": 1,
        "co": 3,
        "o3": 1,
        "temperature_c": 1,
        "humidity_pct": 1,
        "wind_speed_ms": 1,
        "wind_dir_deg": 0,
        "pressure_hpa": 1,
        "rain_mm": 1,
    }

    def step(self, rows: IntArray, t_ms: IntArray) -> Values:
        d = self._district(rows)
        dr = self.drivers
        hour = clock.local_hour(t_ms)
        weekend = clock.is_weekend(t_ms)
        winter = -np.cos(2.0 * np.pi * (clock.day_of_year(t_ms) - 200.0) / 365.2425)
        wind = dr.wind_speed_ms(d, t_ms)
        dilution = 1.0 / (0.6 + 0.15 * wind)

        pm25 = dr.pm25_background(d, t_ms) * self._between("pm.site", rows, 0.9, 1.1)
        pm25 = pm25 * np.exp(0.1 * self._normal("pm25", rows, t_ms))
        pm10 = (
            pm25 * self._between("pm.ratio", rows, 1.7, 2.1) * np.exp(0.08 * self._normal("pm10", rows, t_ms))
        )

        rush = 0.75 * _peak(hour, 8.0, 1.3) + 0.85 * _peak(hour, 18.5, 1.8)
        rush = rush * np.where(weekend, 0.6, 1.0)
        no2_site = 40.0 * np.exp(0.25 * self._normal("no2.site", rows))
        no2 = (
            no2_site
            * (0.6 + rush - 0.2 * _peak(hour, 14.0, 2.0))
            * (1.0 + 0.25 * winter)
            * dilution
            * np.exp(0.15 * self._normal("no2", rows, t_ms))
        )

        # Photochemistry lags the sun by about two hours; NO titrates ozone near busy roads.
        sun = np.clip(np.sin(np.deg2rad(clock.sun_elevation_deg(t_ms - 2 * _HOUR_MS))), 0.0, 1.0) ** 1.5
        temp = dr.temperature_c(d, t_ms)
        photo = (
            115.0
            * sun
            * dr.sky_clearness(d, t_ms)
            * (1.0 + 0.03 * (temp - 22.0))
            * (1.0 + 0.3 * _autumn(t_ms))
        )
        night = clock.local_day(t_ms - 6 * _HOUR_MS)
        # About 68 nights a year (2020) see an ozone bump between 23:00 and 03:00.
        bump_night = self._citywide_uniform("o3.night", night) < 68.0 / 365.0
        bump = np.where(bump_night, 35.0 * _peak(hour, 1.0, 1.5), 0.0)
        o3 = (
            25.0 + photo * np.where(weekend, 1.08, 1.0) + bump - 0.25 * np.maximum(no2 - 30.0, 0.0)
        ) * np.exp(0.12 * self._normal("o3", rows, t_ms))

        so2 = (
            9.0
            * self._between("so2.site", rows, 0.7, 1.3)
            * np.exp(0.3 * self._slow("so2", rows, t_ms, 24.0) - 0.03)
        )
        co = (
            0.6
            * self._between("co.site", rows, 0.8, 1.2)
            * (0.85 + 0.3 * rush)
            * (1.0 + 0.15 * winter)
            * np.exp(0.12 * self._normal("co", rows, t_ms))
        )

        return {
            "pm25": np.clip(pm25, 0.0, 1000.0),
            "pm10": np.clip(pm10, 0.0, 2000.0),
            "so2": np.clip(so2, 0.5, 3000.0),
            "no2": np.clip(no2, 1.0, 4000.0),
            "co": np.clip(co, 0.05, 150.0),
            "o3": np.clip(o3, 1.0, 1500.0),
            "temperature_c": np.clip(temp + 0.2 * self._normal("t", rows, t_ms), -10.0, 50.0),
            "humidity_pct": np.clip(dr.humidity_pct(d, t_ms) + self._normal("rh", rows, t_ms), 0.0, 100.0),
            "wind_speed_ms": np.clip(wind * self._between("wind.site", rows, 0.7, 1.2), 0.0, 75.0),
            "wind_dir_deg": np.mod(dr.wind_dir_deg(d, t_ms) + 10.0 * self._normal("wd", rows, t_ms), 360.0),
            "pressure_hpa": dr.pressure_hpa(d, t_ms) + 0.2 * self._normal("p", rows, t_ms),
            # Its rain gauge is a tipping bucket too: drizzle adds up to tips over the hours.
            "rain_mm": np.clip(
                self._rain_gauge_mm(rows, t_ms - _HOUR_MS, t_ms, np.ones(len(rows))), 0.0, 300.0
            ),
        }
