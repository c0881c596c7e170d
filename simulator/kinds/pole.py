"""Multi-function smart pole (多功能智能杆): lamp, environment, noise, Wi-Fi, EV charger, call button."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import numpy as np

from simulator import clock
from simulator.kinds.base import FloatArray, IntArray, KindModel, Values

# Street lighting: full output 18:00-22:00, 30-50 % 22:00-05:00, ramp up 05:00-06:00, off in
# daylight (DOMAIN.md section 3). LED road lights are 30-250 W.
_LAMP_RATINGS_W = np.array([60.0, 80.0, 100.0, 120.0, 150.0, 200.0])
_DIM_LEVELS = np.array([30.0, 40.0, 50.0])
# Relative road traffic by hour (0 = empty, 1 = rush hour), 00:00 first.
_TRAFFIC = np.array(
    [0.35, 0.2, 0.12, 0.1, 0.12, 0.3, 0.6, 0.95, 1.0, 0.85, 0.75, 0.75,
     0.8, 0.75, 0.75, 0.8, 0.85, 0.95, 1.0, 0.9, 0.8, 0.7, 0.6, 0.45]
)  # fmt: skip
# Wi-Fi users by hour relative to the daily peak.
_WIFI = np.array(
    [0.15, 0.08, 0.05, 0.04, 0.04, 0.06, 0.2, 0.5, 0.7, 0.6, 0.6, 0.75,
     0.9, 0.8, 0.65, 0.65, 0.7, 0.85, 1.0, 1.0, 0.95, 0.8, 0.55, 0.3]
)  # fmt: skip
# Chance that a charging bay is in use, by hour: residential bays fill in the evening and
# overnight, bays at offices and shops during the day.
_EV_HOME = np.array(
    [0.6, 0.6, 0.6, 0.55, 0.5, 0.45, 0.35, 0.2, 0.1, 0.08, 0.08, 0.1,
     0.12, 0.12, 0.12, 0.15, 0.2, 0.3, 0.45, 0.55, 0.6, 0.62, 0.62, 0.6]
)  # fmt: skip
_EV_WORK = np.array(
    [0.05, 0.05, 0.05, 0.05, 0.05, 0.05, 0.08, 0.2, 0.45, 0.6, 0.6, 0.55,
     0.5, 0.55, 0.6, 0.55, 0.5, 0.4, 0.3, 0.2, 0.15, 0.1, 0.08, 0.05]
)  # fmt: skip
_EV_SLOT_MS = 30 * clock.MS_PER_MIN
_CHARGER_SHARE = 0.35
# Connector states of the charging-platform interconnection protocol (DOMAIN.md section 3).
EV_OFFLINE, EV_IDLE, EV_OCCUPIED, EV_CHARGING, EV_RESERVED, EV_FAULT = 0, 1, 2, 3, 4, 255
_EMERGENCY_P = 2e-6


def _by_hour(table: FloatArray, hour: FloatArray) -> FloatArray:
    """Interpolate an hourly table (values at each hour's start), wrapping at midnight."""
    return np.interp(hour, np.arange(25.0), np.append(table, table[0]))


def lamp_schedule(hour: FloatArray, dim_level: FloatArray) -> FloatArray:
    """Dimming level a lamp follows while it is dark (before the dusk/dawn switch)."""
    ramp = dim_level + (100.0 - dim_level) * (hour - 5.0)
    night = (hour >= 22.0) | (hour < 5.0)
    return np.where(night, dim_level, np.where(hour < 6.0, ramp, 100.0))


class SmartPoleModel(KindModel):
    kind_name = "smart_pole"
    decimals: ClassVar[Mapping[str, int]] = {
        "lamp_level": 0,
        "lamp_power_w": 1,
        "illuminance_lux": 1,
        "noise_dba": 1,
        "pm25": 1,
        "pm10": 1,
        "temperature_c": 1,
        "humidity_pct": 1,
        "wifi_clients": 0,
        "ev_charger_state": 0,
        "ev_power_kw": 2,
        "emergency_call": 0,
    }

    def step(self, rows: IntArray, t_ms: IntArray) -> Values:
        d = self._district(rows)
        hour = clock.local_hour(t_ms)
        weekend = clock.is_weekend(t_ms)
        dark = clock.is_dark(t_ms)
        dr = self.drivers
        rain = dr.rain_rate_mmh(d, t_ms)

        dim = _DIM_LEVELS[(self._uniform("lamp.dim", rows) * len(_DIM_LEVELS)).astype(np.int64)]
        rated = _LAMP_RATINGS_W[(self._uniform("lamp.rated", rows) * len(_LAMP_RATINGS_W)).astype(np.int64)]
        level = np.where(dark, lamp_schedule(hour, dim), 0.0)
        # LED drivers draw a little more than proportionally at low levels.
        power = np.where(
            level > 0,
            rated * (0.08 + 0.92 * level / 100.0) * (1.0 + 0.01 * self._normal("lamp.p", rows, t_ms)),
            0.0,
        )

        sky = clock.clear_sky_lux(clock.sun_elevation_deg(t_ms)) * dr.sky_clearness(d, t_ms)
        lux = np.clip(sky * self._between("lux.gain", rows, 0.85, 1.1), 0.0, 150_000.0)

        traffic = _by_hour(_TRAFFIC, hour) * np.where(weekend & (hour > 6) & (hour < 10), 0.7, 1.0)
        # GB 3096-2008 class 4a (roadside): 70 dB(A) by day, 55 at night; typical roads sit near them.
        noise = (
            50.0
            + 17.0 * traffic
            + 2.5 * self._normal("noise.site", rows)
            + 1.5 * self._normal("noise", rows, t_ms)
            + 1.5 * np.minimum(rain / 5.0, 1.0)
        )

        pm25 = (
            dr.pm25_background(d, t_ms)
            * self._between("pm.site", rows, 0.85, 1.25)
            * (0.92 + 0.15 * traffic)
            * np.exp(0.15 * self._normal("pm25", rows, t_ms))
        )
        pm10 = (
            pm25 * self._between("pm.ratio", rows, 1.5, 2.1) * np.exp(0.08 * self._normal("pm10", rows, t_ms))
        )

        temp = (
            dr.temperature_c(d, t_ms)
            + 0.3 * self._normal("t.site", rows)
            + 0.1 * self._normal("t", rows, t_ms)
        )
        rh = (
            dr.humidity_pct(d, t_ms)
            + 2.0 * self._normal("rh.site", rows)
            + 0.5 * self._normal("rh", rows, t_ms)
        )

        peak = 5.0 + 75.0 * self._uniform("wifi.peak", rows)
        expected = peak * _by_hour(_WIFI, hour) * np.where(weekend, 1.15, 1.0) / (1.0 + 0.2 * rain)
        wifi = np.round(np.maximum(0.0, expected + np.sqrt(expected) * self._normal("wifi", rows, t_ms)))

        state, ev_power = self._charger(rows, t_ms, hour)
        emergency = (self._uniform("sos", rows, t_ms) < _EMERGENCY_P).astype(np.float64)
        return {
            "lamp_level": np.round(level),
            "lamp_power_w": np.clip(power, 0.0, 400.0),
            "illuminance_lux": lux,
            "noise_dba": np.clip(noise, 30.0, 120.0),
            "pm25": np.clip(pm25, 0.0, 1000.0),
            "pm10": np.clip(pm10, 0.0, 2000.0),
            "temperature_c": np.clip(temp, -10.0, 50.0),
            "humidity_pct": np.clip(rh, 0.0, 100.0),
            "wifi_clients": np.clip(wifi, 0.0, 2000.0),
            "ev_charger_state": state,
            "ev_power_kw": ev_power,
            "emergency_call": emergency,
        }

    def _charger(self, rows: IntArray, t_ms: IntArray, hour: FloatArray) -> tuple[FloatArray, FloatArray]:
        """Connector state and output; NaN for poles without a charger."""
        fitted = self._uniform("ev.fitted", rows) < _CHARGER_SHARE
        at_home = self._uniform("ev.site", rows) < 0.6
        busy = np.where(at_home, _by_hour(_EV_HOME, hour), _by_hour(_EV_WORK, hour))
        slot = t_ms // _EV_SLOT_MS
        u = self._uniform("ev.slot", rows, slot)
        day_u = self._uniform("ev.day", rows, clock.local_day(t_ms))
        state = np.where(u < 0.85 * busy, EV_CHARGING, np.where(u < busy, EV_OCCUPIED, EV_IDLE))
        state = np.where((u >= busy) & (u < busy + 0.02), EV_RESERVED, state)
        state = np.where(day_u < 0.004, EV_FAULT, np.where(day_u < 0.006, EV_OFFLINE, state))
        # 7 kW AC wall boxes mostly; some fast DC chargers; output tapers as the battery fills.
        rated_kw = np.where(self._uniform("ev.dc", rows) < 0.25, 60.0, 7.0)
        taper = 0.55 + 0.45 * self._uniform("ev.taper", rows, slot)
        power = np.where(state == EV_CHARGING, rated_kw * taper, 0.0)
        return (
            np.where(fitted, state.astype(np.float64), np.nan),
            np.where(fitted, power, np.nan),
        )
