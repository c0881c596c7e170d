"""The base of every kind model: per-device parameters and noise keyed by (seed, kind, device)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import numpy as np
from numpy.typing import ArrayLike, NDArray

from cityneuron.catalog import Kind
from simulator import clock, rng
from simulator.city import DeviceTable
from simulator.drivers import Drivers

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]
Values = dict[str, FloatArray]

_MS_PER_YEAR = 365.25 * clock.MS_PER_DAY
# One tip of a tipping-bucket rain gauge: the 0.1 mm resolution rainfall is reported in
# (SL 651-2014 encodes rainfall with one decimal, in mm).
RAIN_TIP_MM = 0.1


class KindModel:
    """Vectorised value model of one device kind.

    ``step(rows, t_ms)`` returns, for each requested table row and its own report time, one
    array per catalog metric. Values are pure functions of (seed, device, time): stepping
    devices in any order, subset or batch gives the same numbers. NaN means "this device has
    no such sensor" and is left out of the payload.
    """

    kind_name: ClassVar[str]
    # Decimal places sent on the wire; 0 sends integers. Metrics not listed get two.
    decimals: ClassVar[Mapping[str, int]] = {}

    def __init__(self, table: DeviceTable, drivers: Drivers, seed: int) -> None:
        if table.kind.name != self.kind_name:
            raise ValueError(f"{type(self).__name__} models {self.kind_name}, not {table.kind.name}")
        self.table = table
        self.drivers = drivers
        self.seed = int(seed)
        self._key = table.key
        self._stream = rng.stream_id(f"model.{self.kind_name}")

    @property
    def kind(self) -> Kind:
        return self.table.kind

    def step(self, rows: IntArray, t_ms: IntArray) -> Values:
        """Metric values of devices ``rows`` at their report times ``t_ms`` (same length)."""
        raise NotImplementedError

    # --- helpers for subclasses ------------------------------------------------------------

    def _uniform(self, name: str, rows: IntArray, tick: ArrayLike = 0) -> FloatArray:
        return rng.uniform(self.seed, self._stream, rng.stream_id(name), self._key[rows], tick)

    def _normal(self, name: str, rows: IntArray, tick: ArrayLike = 0) -> FloatArray:
        return rng.normal(self.seed, self._stream, rng.stream_id(name), self._key[rows], tick)

    def _between(self, name: str, rows: IntArray, low: float, high: float) -> FloatArray:
        """A fixed per-device parameter drawn uniformly from [low, high)."""
        return low + (high - low) * self._uniform(name, rows)

    def _slow(self, name: str, rows: IntArray, t_ms: IntArray, period_h: float) -> FloatArray:
        """Per-device noise that drifts smoothly over about ``period_h`` hours."""
        return rng.smooth_noise(
            t_ms / clock.MS_PER_H, period_h, self.seed, self._stream, rng.stream_id(name), self._key[rows]
        )

    def _citywide_uniform(self, name: str, tick: ArrayLike) -> FloatArray:
        """A draw shared by every device of the kind (a city-wide event), keyed by ``tick``."""
        return rng.uniform(self.seed, self._stream, rng.stream_id(name), tick)

    def _years_in_service(self, rows: IntArray, t_ms: IntArray) -> FloatArray:
        return np.maximum(0.0, (t_ms - self.table.installed_ms[rows]) / _MS_PER_YEAR)

    def _district(self, rows: IntArray) -> IntArray:
        return self.table.district[rows]

    def _battery_v(
        self, rows: IntArray, t_ms: IntArray, temp_c: FloatArray, fall_v_per_year: float
    ) -> FloatArray:
        """Li-SOCl2 cell (3.6 V nominal): a flat plateau sagging slowly with age and in the cold."""
        fresh = self._between("battery.fresh", rows, 3.62, 3.70)
        volts = (
            fresh
            - fall_v_per_year * self._years_in_service(rows, t_ms)
            - 0.003 * np.maximum(0.0, 20.0 - temp_c)
            + 0.004 * self._normal("battery.noise", rows, t_ms)
        )
        return np.clip(volts, 2.0, 3.9)

    def _rain_gauge_mm(
        self, rows: IntArray, t0_ms: IntArray, t1_ms: IntArray, catch: FloatArray
    ) -> FloatArray:
        """Rain a tipping-bucket gauge reports for (t0, t1]: the whole tips in the interval.

        Rounding each interval's rain on its own would lose every drizzle lighter than half a
        tip per interval (below 0.6 mm/h at five minutes); the bucket instead keeps what has not
        tipped yet for the next interval. To stay a pure function of time the bucket counts
        from local midnight (tips by t1 minus tips by t0), so only what is left in it at
        midnight, less than one tip, is dropped; a day's reports add up to that day's rain
        times ``catch`` rounded down to whole tips.
        """
        dr = self.drivers
        d = self._district(rows)
        midnight_1 = clock.local_day_start_ms(clock.local_day(t1_ms))
        midnight_0 = clock.local_day_start_ms(clock.local_day(t0_ms))

        def tips(since: IntArray, until: IntArray) -> FloatArray:
            return np.floor(catch * dr.rain_mm(d, since, until) / RAIN_TIP_MM + 1e-9)

        after_0 = np.maximum(t0_ms, midnight_1)
        # Tips of t1's day so far, less those before t0 when t0 is in the same day; an interval
        # across midnight adds the previous day's tips after t0.
        count = tips(midnight_1, t1_ms) - tips(midnight_1, after_0)
        count += tips(midnight_0, np.maximum(midnight_1, t0_ms)) - tips(midnight_0, t0_ms)
        return np.maximum(count, 0.0) * RAIN_TIP_MM

    def _radio(self, rows: IntArray, t_ms: IntArray, mean_rsrp_dbm: float) -> tuple[FloatArray, FloatArray]:
        """NB-IoT RSRP (-140..-44 dBm, DOMAIN.md section 2) and an SNR that tracks it."""
        site = mean_rsrp_dbm + 9.0 * self._normal("radio.site", rows)
        rsrp = np.clip(site + 2.5 * self._normal("radio.rsrp", rows, t_ms), -140.0, -44.0)
        snr = np.clip(0.35 * (rsrp + 112.0) + 1.5 * self._normal("radio.snr", rows, t_ms), -20.0, 40.0)
        return np.round(rsrp), snr
