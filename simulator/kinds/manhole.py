"""Manhole cover sensor: tilt, water in the shaft, temperature, battery and NB-IoT radio."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import numpy as np

from simulator import clock
from simulator.drivers import seasonal_mean_temperature_c
from simulator.kinds.base import IntArray, KindModel, Values


class ManholeCoverModel(KindModel):
    kind_name = "manhole_cover"
    decimals: ClassVar[Mapping[str, int]] = {
        "tilt_deg": 2,
        "water_level_cm": 1,
        "temperature_c": 1,
        "battery_v": 3,
        "rsrp_dbm": 0,
        "snr_db": 1,
    }

    def step(self, rows: IntArray, t_ms: IntArray) -> Values:
        d = self._district(rows)
        dr = self.drivers
        # A seated cover rests within a degree or two; the tilt alarm is at 10 degrees.
        tilt = np.abs(self._between("tilt.seat", rows, 0.0, 1.5) + 0.15 * self._normal("tilt", rows, t_ms))

        # Sewer flow follows household water use; storms fill the shaft within the hour.
        depth_cm = self._between("shaft.depth", rows, 150.0, 400.0)
        base_cm = self._between("flow.base", rows, 5.0, 40.0)
        diurnal = 1.0 + 0.3 * np.cos(2.0 * np.pi * (clock.local_hour(t_ms) - 9.0) / 24.0)
        tau_h = self._between("shaft.tau", rows, 0.3, 1.0)
        storm = self._between("shaft.gain", rows, 1.5, 4.0) * dr.rain_response(d, t_ms, tau_h)
        level = base_cm * diurnal + storm + 0.5 * self._normal("level", rows, t_ms)
        level = np.clip(level, 0.0, depth_cm - 5.0)

        air = dr.temperature_c(d, t_ms)
        # The shaft damps the air's swings towards the ground temperature.
        shaft = (
            0.4 * air + 0.6 * seasonal_mean_temperature_c(t_ms) + 1.0 + 0.2 * self._normal("temp", rows, t_ms)
        )
        shaft = np.clip(shaft, -10.0, 70.0)

        rsrp, snr = self._radio(rows, t_ms, mean_rsrp_dbm=-104.0)
        return {
            "tilt_deg": np.clip(tilt, 0.0, 180.0),
            "water_level_cm": level,
            "temperature_c": shaft,
            "battery_v": self._battery_v(rows, t_ms, shaft, fall_v_per_year=0.03),
            "rsrp_dbm": rsrp,
            "snr_db": snr,
        }
