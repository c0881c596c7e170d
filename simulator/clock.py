"""Calendar and sun for Shenzhen: local time, weekdays and dusk/dawn, vectorised over epoch ms.

China Standard Time is UTC+8 all year (no daylight saving), so local days and hours are plain
integer arithmetic on epoch milliseconds.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

MS_PER_S = 1000
MS_PER_MIN = 60_000
MS_PER_H = 3_600_000
MS_PER_DAY = 86_400_000
UTC_OFFSET_MS = 8 * MS_PER_H
# Shenzhen for the sun: latitude 22.5 N (DOMAIN.md section 3), longitude of the centre.
CITY_LAT_DEG = 22.5
CITY_LON_DEG = 114.1
# Lamps switch on below 150 lux and off above 500 lux (DOMAIN.md section 3); with a clear sky
# that happens at about one degree below the horizon, which the astronomical clock uses.
DARK_SUN_ELEVATION_DEG = -1.0

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]


def _ms(t_ms: ArrayLike) -> IntArray:
    return np.atleast_1d(np.asarray(t_ms)).astype(np.int64)


def local_day(t_ms: ArrayLike) -> IntArray:
    """Local (UTC+8) calendar day number since 1970-01-01."""
    return (_ms(t_ms) + UTC_OFFSET_MS) // MS_PER_DAY


def local_day_start_ms(day: ArrayLike) -> IntArray:
    """Epoch ms of local midnight starting ``day``."""
    return np.asarray(day, dtype=np.int64) * MS_PER_DAY - UTC_OFFSET_MS


def local_hour(t_ms: ArrayLike) -> FloatArray:
    """Local clock time as fractional hours in [0, 24)."""
    return ((_ms(t_ms) + UTC_OFFSET_MS) % MS_PER_DAY).astype(np.float64) / MS_PER_H


def weekday(t_ms: ArrayLike) -> IntArray:
    """Local weekday, 0 = Monday (1970-01-01 was a Thursday)."""
    return (local_day(t_ms) + 3) % 7


def is_weekend(t_ms: ArrayLike) -> NDArray[np.bool_]:
    return weekday(t_ms) >= 5


def day_of_year(t_ms: ArrayLike) -> FloatArray:
    """Fractional local day of the year, 0 at 1 January 00:00 (approximating years as 365.2425 d)."""
    days = (_ms(t_ms) + UTC_OFFSET_MS).astype(np.float64) / MS_PER_DAY
    # 1970-01-01 is day 0 of a year; the mean Gregorian year keeps the phase within a day.
    return np.mod(days, 365.2425)


def season_phase(t_ms: ArrayLike) -> FloatArray:
    """Angle of the year in radians, 0 at 1 January."""
    return 2.0 * np.pi * day_of_year(t_ms) / 365.2425


def _declination_rad(doy: FloatArray) -> FloatArray:
    # Cooper (1969): declination = 23.45 deg * sin(360 (284 + n) / 365).
    return np.deg2rad(23.45) * np.sin(2.0 * np.pi * (284.0 + doy + 1.0) / 365.0)


def _equation_of_time_min(doy: FloatArray) -> FloatArray:
    # Spencer (1971) series, minutes: how far apparent solar time runs ahead of mean time.
    b = 2.0 * np.pi * doy / 365.0
    return 229.18 * (
        0.000075
        + 0.001868 * np.cos(b)
        - 0.032077 * np.sin(b)
        - 0.014615 * np.cos(2 * b)
        - 0.040849 * np.sin(2 * b)
    )


def sun_elevation_deg(
    t_ms: ArrayLike, lat_deg: float = CITY_LAT_DEG, lon_deg: float = CITY_LON_DEG
) -> FloatArray:
    """Solar elevation above the horizon in degrees (no refraction)."""
    doy = day_of_year(t_ms)
    hour = local_hour(t_ms)
    # Local clock time is the 120 E meridian; apparent solar time adds longitude and equation of time.
    solar_hour = hour + (lon_deg - 120.0) / 15.0 + _equation_of_time_min(doy) / 60.0
    omega = np.deg2rad(15.0 * (solar_hour - 12.0))
    phi = np.deg2rad(lat_deg)
    dec = _declination_rad(doy)
    sin_h = np.sin(phi) * np.sin(dec) + np.cos(phi) * np.cos(dec) * np.cos(omega)
    return np.rad2deg(np.arcsin(np.clip(sin_h, -1.0, 1.0)))


def is_dark(t_ms: ArrayLike) -> NDArray[np.bool_]:
    """True between dusk and dawn: the sun is below the lamps' switching elevation."""
    return sun_elevation_deg(t_ms) < DARK_SUN_ELEVATION_DEG


def dusk_dawn_ms(day: int) -> tuple[int, int]:
    """Epoch ms of dusk on local ``day`` and of dawn on the next morning (to the minute)."""
    start = int(local_day_start_ms(day))
    minutes = start + np.arange(0, 2 * 24 * 60, dtype=np.int64) * MS_PER_MIN
    dark = is_dark(minutes)
    noon = 12 * 60
    dusk_index = noon + int(np.argmax(dark[noon:]))
    dawn_index = dusk_index + int(np.argmax(~dark[dusk_index:]))
    return int(minutes[dusk_index]), int(minutes[dawn_index])


def clear_sky_lux(elevation_deg: FloatArray) -> FloatArray:
    """Horizontal illuminance under a clear sky, lux, from the sun's elevation.

    Daylight: about 128 klx extraterrestrial times an air-mass attenuation (direct) plus a
    diffuse share; twilight falls about a decade per 1.5 degrees down to moonless night.
    """
    h = np.asarray(elevation_deg, dtype=np.float64)
    sin_h = np.sin(np.deg2rad(np.clip(h, 0.5, 90.0)))
    day = 128_000.0 * sin_h * np.exp(-0.2 / sin_h) + 12_000.0 * np.sqrt(sin_h)
    twilight = 600.0 * np.power(10.0, np.clip(h, -12.0, 0.5) / 1.5)
    night = 0.05
    return np.where(h >= 0.5, day, np.maximum(twilight, night))
