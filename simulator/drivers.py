"""Shared drivers of the simulated city: weather, rain and the particulate background.

Every model reads the same drivers, so a storm raises the manholes, the rivers and the rain
gauges together and cleans the air at the poles and the stations. Each quantity is a pure
function of (seed, district, simulated time), vectorised over numpy arrays.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
from numpy.typing import ArrayLike, NDArray

from cityneuron.catalog import DISTRICTS
from simulator import clock, rng

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]

# Shenzhen monthly rainfall normals, mm (approx.): mean annual 1,925 mm with 85 % in
# April-October (DOMAIN.md section 3).
_RAIN_MONTH_MM = np.array([35, 55, 95, 150, 240, 340, 300, 320, 210, 76, 55, 49], dtype=np.float64)
# Rain days per month (approx. climatology): June is the wettest, December the driest.
_RAIN_DAYS = np.array([6, 9, 10, 12, 15, 19, 17, 18, 13, 6, 5, 4], dtype=np.float64)
_DAYS_IN_MONTH = np.array([31, 28.25, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31], dtype=np.float64)
_RAIN_DAY_P = _RAIN_DAYS / _DAYS_IN_MONTH
_RAIN_DAY_MEAN_MM = _RAIN_MONTH_MM / _RAIN_DAYS
_CONVECTIVE_MONTHS = np.array([False, False, False, True, True, True, True, True, True, False, False, False])
# A single event never exceeds the Shenzhen 3 h record, 246.8 mm (7 Sept 2023).
_EVENT_MAX_MM = 240.0
_PEAK_MAX_MMH = 110.0
_RESPONSE_STEPS = 32
_EVENT_CACHE_DAYS = 20_000
# Spread of one rain event over the districts (lognormal sigma); the mean factor stays 1.
_DISTRICT_RAIN_SIGMA = 0.5

# PM2.5 annual means by district (ug/m3): city 18-26, district means 15.6-22.4, highest in
# Guangming, Longhua and Bao'an (DOMAIN.md section 3).
_PM25_DISTRICT_MEAN = {
    "futian": 19.0,
    "luohu": 19.0,
    "yantian": 16.5,
    "nanshan": 19.5,
    "baoan": 22.0,
    "longgang": 20.0,
    "longhua": 22.2,
    "pingshan": 20.0,
    "guangming": 22.4,
    "dapeng": 15.6,
}
_PM25_MEAN = np.array([_PM25_DISTRICT_MEAN[d.slug] for d in DISTRICTS], dtype=np.float64)
_DISTRICT_TEMP_OFFSET = np.array([0.3, 0.3, -0.3, 0.0, 0.1, -0.1, 0.0, -0.2, -0.1, -0.6], dtype=np.float64)


def _annual_cos(t_ms: ArrayLike, coldest_doy: float = 20.0) -> FloatArray:
    """-1 at the coldest time of year (about 20 January), +1 half a year later."""
    return -np.cos(2.0 * np.pi * (clock.day_of_year(t_ms) - coldest_doy) / 365.2425)


def _day_cos(hour: FloatArray, peak_hour: float) -> FloatArray:
    return np.cos(2.0 * np.pi * (hour - peak_hour) / 24.0)


def _month_of_day(day: IntArray) -> IntArray:
    months = day.astype("datetime64[D]").astype("datetime64[M]").astype(np.int64)
    return months % 12


def seasonal_mean_temperature_c(t_ms: ArrayLike) -> FloatArray:
    """Climatological daily mean temperature: about 15 C in late January, 29 C in late July."""
    return 22.0 + 7.0 * _annual_cos(t_ms)


class WeatherOverlay(Protocol):
    """Weather added on top of the climate by a scenario (simulator.scenario.ScenarioWeather).

    Every method takes district indexes and times of one shape and answers in that shape.
    """

    def rain_mm(self, district: IntArray, t0_ms: IntArray, t1_ms: IntArray) -> FloatArray: ...

    def rain_rate_mmh(self, district: IntArray, t_ms: IntArray) -> FloatArray: ...

    def wind_ms(self, district: IntArray, t_ms: IntArray) -> FloatArray: ...

    def pressure_drop_hpa(self, district: IntArray, t_ms: IntArray) -> FloatArray: ...

    def pm25_ugm3(self, district: IntArray, t_ms: IntArray, background: FloatArray) -> FloatArray: ...


class Drivers:
    """Weather, rain and air background of the city, deterministic for a seed.

    ``weather``: a scenario's storms and episodes, added where and when they happen.
    """

    def __init__(self, seed: int, weather: WeatherOverlay | None = None) -> None:
        self.seed = int(seed)
        self.weather = weather
        # Rain events per local day (all districts at once): the runner asks for the same few
        # days over and over, and every weather quantity depends on the rain.
        self._events: dict[int, NDArray[np.float64]] = {}

    def _key(self, name: str) -> tuple[int, int]:
        return self.seed, rng.stream_id(name)

    # --- rain -------------------------------------------------------------------------------

    def _compute_rain_events(self, day: IntArray) -> NDArray[np.float64]:
        """Rain event of every district on each local ``day``: (days, districts, [mm, start, duration])."""
        day = day[:, None]
        district = np.arange(len(DISTRICTS), dtype=np.int64)[None, :]
        month = _month_of_day(day)
        rainy = rng.uniform(*self._key("rain.day"), day) < _RAIN_DAY_P[month]
        depth = -np.log1p(-rng.uniform(*self._key("rain.depth"), day)) * _RAIN_DAY_MEAN_MM[month]
        spread = np.exp(
            _DISTRICT_RAIN_SIGMA * rng.normal(*self._key("rain.district"), day, district)
            - _DISTRICT_RAIN_SIGMA**2 / 2
        )
        total = np.where(rainy, np.minimum(depth * spread, _EVENT_MAX_MM), 0.0)
        convective = _CONVECTIVE_MONTHS[month] & (rng.uniform(*self._key("rain.convective"), day) < 0.6)
        u_start = rng.uniform(*self._key("rain.start"), day)
        u_duration = rng.uniform(*self._key("rain.duration"), day)
        # Summer storms build in the afternoon and are short; fronts come any time and last.
        start_h = np.where(convective, 12.0 + 7.0 * u_start, 24.0 * u_start)
        start_h = start_h + 0.7 * rng.normal(*self._key("rain.lag"), day, district)
        duration_h = np.where(convective, 1.5 + 4.5 * u_duration, 4.0 + 10.0 * u_duration)
        # Peak intensity (pi/2 x mean) stays below the Shenzhen hourly record, 116.8 mm in 1 h.
        duration_h = np.maximum(duration_h, total * (np.pi / 2) / _PEAK_MAX_MMH)
        start_ms = clock.local_day_start_ms(day).astype(np.float64) + start_h * clock.MS_PER_H
        return np.stack(np.broadcast_arrays(total, start_ms, duration_h * clock.MS_PER_H), axis=-1)

    def _rain_events(self, district: IntArray, day: IntArray) -> tuple[FloatArray, FloatArray, FloatArray]:
        """Rain event of each (district, local day): total mm, start ms and duration ms."""
        days, inverse = np.unique(day, return_inverse=True)
        missing = [int(x) for x in days if int(x) not in self._events]
        if missing:
            if len(self._events) > _EVENT_CACHE_DAYS:
                self._events.clear()
            computed = self._compute_rain_events(np.asarray(missing, dtype=np.int64))
            self._events.update(zip(missing, computed, strict=True))
        table = np.stack([self._events[int(x)] for x in days])
        events = table[inverse.reshape(day.shape), district]
        return events[..., 0], events[..., 1], events[..., 2]

    def _event_days(self, district: ArrayLike, t_ms: ArrayLike) -> tuple[IntArray, IntArray, IntArray]:
        d = np.atleast_1d(np.asarray(district, dtype=np.int64))
        t = np.atleast_1d(np.asarray(t_ms, dtype=np.int64))
        d, t = np.broadcast_arrays(d, t)
        return d, t, clock.local_day(t)

    def rain_mm(self, district: ArrayLike, t0_ms: ArrayLike, t1_ms: ArrayLike) -> FloatArray:
        """Rain in mm that fell on ``district`` between ``t0_ms`` and ``t1_ms``."""
        d, t1, day1 = self._event_days(district, t1_ms)
        t0 = np.broadcast_to(np.asarray(t0_ms, dtype=np.int64), t1.shape).astype(np.float64)
        day0 = clock.local_day(t0.astype(np.int64))
        span = int(np.max(day1 - day0)) if day1.size else 0
        total = np.zeros(t1.shape, dtype=np.float64)
        # An event may start shortly before its day (district lag) and run into the next one.
        for back in range(-1, span + 2):
            day = day1 - back
            depth, start, duration = self._rain_events(d, day)
            s0 = np.clip((t0 - start) / duration, 0.0, 1.0)
            s1 = np.clip((t1.astype(np.float64) - start) / duration, 0.0, 1.0)
            # Intensity follows half a sine over the event: cumulative share (1 - cos(pi s)) / 2.
            total += depth * (np.cos(np.pi * s0) - np.cos(np.pi * s1)) / 2.0
        if self.weather is not None:
            total += self.weather.rain_mm(d, t0.astype(np.int64), t1)
        return np.maximum(total, 0.0)

    def rain_rate_mmh(self, district: ArrayLike, t_ms: ArrayLike) -> FloatArray:
        """Rain intensity in mm/h at ``t_ms``."""
        d, t, day = self._event_days(district, t_ms)
        rate = np.zeros(t.shape, dtype=np.float64)
        for back in (-1, 0, 1, 2):
            depth, start, duration = self._rain_events(d, day - back)
            s = (t - start) / duration
            inside = (s >= 0.0) & (s <= 1.0)
            rate += np.where(inside, depth / (duration / clock.MS_PER_H) * np.pi / 2 * np.sin(np.pi * s), 0.0)
        if self.weather is not None:
            rate += self.weather.rain_rate_mmh(d, t)
        return rate

    def rain_response(self, district: ArrayLike, t_ms: ArrayLike, tau_h: ArrayLike) -> FloatArray:
        """Rain routed through two linear reservoirs in series (Nash cascade, n = 2), in mm.

        The response to a burst of rain peaks ``tau_h`` hours later at the burst's depth and then
        drains away: the lagged rise of a river or a sewer shaft after a storm.
        """
        d, t, _ = self._event_days(district, t_ms)
        tau = np.broadcast_to(np.asarray(tau_h, dtype=np.float64), t.shape)
        # Integrate the rain over 32 steps of tau/4 back in time (8 tau: the tail is < 0.3 %).
        back = np.arange(_RESPONSE_STEPS, dtype=np.float64)
        step_ms = (tau * clock.MS_PER_H / 4.0)[..., None]
        end = t[..., None].astype(np.float64) - back * step_ms
        mm = self.rain_mm(d[..., None], (end - step_ms).astype(np.int64), end.astype(np.int64))
        lag_tau = (back + 0.5) / 4.0
        return np.sum(mm * lag_tau * np.exp(1.0 - lag_tau), axis=-1)

    # --- weather ----------------------------------------------------------------------------

    def temperature_c(self, district: ArrayLike, t_ms: ArrayLike) -> FloatArray:
        """Air temperature: Shenzhen monthly means about 15 C in January and 29 C in July."""
        d, t, _ = self._event_days(district, t_ms)
        season = _annual_cos(t)
        hour = clock.local_hour(t)
        synoptic = (1.9 - 0.9 * season) * rng.smooth_noise(t / clock.MS_PER_H, 72.0, *self._key("temp.syn"))
        daily = (3.2 - 0.6 * season) * _day_cos(hour, 14.5)
        wobble = 0.5 * rng.smooth_noise(t / clock.MS_PER_H, 6.0, *self._key("temp.wobble"), d)
        cooling = np.minimum(3.0, 0.4 * self.rain_rate_mmh(d, t))
        temp = seasonal_mean_temperature_c(t) + daily + synoptic + wobble + _DISTRICT_TEMP_OFFSET[d] - cooling
        return np.clip(temp, -2.0, 40.0)

    def humidity_pct(self, district: ArrayLike, t_ms: ArrayLike) -> FloatArray:
        """Relative humidity: about 70 % in winter, 83 % in June, lowest in the afternoon."""
        d, t, _ = self._event_days(district, t_ms)
        hour = clock.local_hour(t)
        base = 76.5 + 6.5 * _annual_cos(t) - 11.0 * _day_cos(hour, 14.5)
        noise = 6.0 * rng.smooth_noise(t / clock.MS_PER_H, 36.0, *self._key("rh.syn"), d)
        rh = base + noise
        raining = self.rain_rate_mmh(d, t) > 0.1
        rh = np.where(raining, np.maximum(rh, 93.0), rh)
        return np.clip(rh, 25.0, 100.0)

    def wind_speed_ms(self, district: ArrayLike, t_ms: ArrayLike) -> FloatArray:
        """Wind speed: about 2.6 m/s on average, breezier in the afternoon and in storms."""
        d, t, _ = self._event_days(district, t_ms)
        hour = clock.local_hour(t)
        hours = t / clock.MS_PER_H
        speed = (
            2.6
            + 0.7 * _day_cos(hour, 15.0)
            + 0.9 * rng.smooth_noise(hours, 24.0, *self._key("wind.day"))
            + 0.5 * rng.smooth_noise(hours, 3.0, *self._key("wind.gust"), d)
            + 0.15 * self.rain_rate_mmh(d, t)
        )
        speed = np.clip(speed, 0.1, 25.0)
        if self.weather is not None:
            speed = speed + self.weather.wind_ms(d, t)
        return speed

    def wind_dir_deg(self, district: ArrayLike, t_ms: ArrayLike) -> FloatArray:
        """Monsoon: north-easterly in winter, south-easterly to southerly in summer."""
        d, t, _ = self._event_days(district, t_ms)
        hours = t / clock.MS_PER_H
        mean = 100.0 + 60.0 * _annual_cos(t)
        swing = 45.0 * rng.smooth_noise(hours, 24.0, *self._key("wind.dir")) + 15.0 * rng.smooth_noise(
            hours, 2.0, *self._key("wind.dir.local"), d
        )
        return np.mod(mean + swing, 360.0)

    def pressure_hpa(self, district: ArrayLike, t_ms: ArrayLike) -> FloatArray:
        """Sea-level pressure: about 1020 hPa in winter, 1005 in summer, with the semidiurnal tide."""
        d, t, _ = self._event_days(district, t_ms)
        hour = clock.local_hour(t)
        pressure = (
            1012.5
            - 7.5 * _annual_cos(t)
            + 0.8 * np.cos(2.0 * np.pi * (hour - 10.0) / 12.0)
            + 3.5 * rng.smooth_noise(t / clock.MS_PER_H, 72.0, *self._key("pressure"))
        )
        pressure = np.clip(pressure, 960.0, 1040.0)
        if self.weather is not None:
            # A typhoon's centre goes well below the climate's usual floor.
            pressure = np.maximum(pressure - self.weather.pressure_drop_hpa(d, t), 900.0)
        return pressure

    def sky_clearness(self, district: ArrayLike, t_ms: ArrayLike) -> FloatArray:
        """Share of clear-sky daylight that reaches the ground (clouds and rain), 0.1-1."""
        d, t, _ = self._event_days(district, t_ms)
        clouds = 0.72 + 0.22 * rng.smooth_noise(t / clock.MS_PER_H, 8.0, *self._key("clouds"), d)
        return np.clip(clouds - 0.6 * np.minimum(self.rain_rate_mmh(d, t), 1.0), 0.1, 1.0)

    # --- air --------------------------------------------------------------------------------

    def pm25_background(self, district: ArrayLike, t_ms: ArrayLike) -> FloatArray:
        """Urban PM2.5 background, ug/m3: dirtier in winter and at night, washed out by rain."""
        d, t, _ = self._event_days(district, t_ms)
        hour = clock.local_hour(t)
        hours = t / clock.MS_PER_H
        season = 1.0 - 0.45 * _annual_cos(t, coldest_doy=10.0)
        daily = 1.0 + 0.12 * _day_cos(hour, 23.0) + 0.06 * np.cos(2.0 * np.pi * (hour - 8.5) / 12.0)
        sigma = 0.35
        episode = np.exp(sigma * rng.smooth_noise(hours, 48.0, *self._key("pm.episode")) - sigma**2 / 4)
        local = np.exp(0.12 * rng.smooth_noise(hours, 4.0, *self._key("pm.local"), d))
        washout = 1.0 / (1.0 + 0.12 * self.rain_rate_mmh(d, t))
        wind = 1.0 / (0.74 + 0.1 * self.wind_speed_ms(d, t))
        pm = _PM25_MEAN[d] * season * daily * episode * local * washout * wind
        pm = np.clip(pm, 2.0, 400.0)
        if self.weather is not None:
            pm = self.weather.pm25_ugm3(d, t, pm)
        return pm
