"""NB-IoT water, gas and electricity meters: cumulative totals that only grow."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import numpy as np

from simulator import rng
from simulator.city import DeviceTable
from simulator.demand import ELECTRICITY, GAS, WATER, DayTables, DemandProfile, household_clock
from simulator.drivers import Drivers, seasonal_mean_temperature_c
from simulator.kinds.base import FloatArray, IntArray, KindModel, Values

# Household sizes 1-5 people, mean about 2.5 (DOMAIN.md section 1: 17.56 M people, ~7 M households).
_PERSONS_CDF = np.cumsum([0.22, 0.32, 0.24, 0.15, 0.07])
# Residential tap water in Guangdong: 252 L per person per day (NBS 2008, DOMAIN.md section 3).
WATER_M3_PER_PERSON_DAY = 0.252
# Piped gas for cooking and water heating, about 12 m3 a month for a household of 2.5 (approx.).
GAS_M3_PER_HOUSEHOLD_DAY = 0.4
# Most households use 110-140 kWh a month (NDRC 2010): about 4.2 kWh a day on average.
ELECTRICITY_KWH_PER_HOUSEHOLD_DAY = 4.2


class _MeterModel(KindModel):
    """Shared parts of the household meters: size of the household and its monotone total."""

    profile: ClassVar[DemandProfile]

    def __init__(self, table: DeviceTable, drivers: Drivers, seed: int) -> None:
        super().__init__(table, drivers, seed)
        self._days: DayTables = self.profile.tables(self.seed)
        self._clock_stream = rng.stream_id(f"household.{self.kind_name}")

    def _persons(self, rows: IntArray) -> FloatArray:
        return 1.0 + np.searchsorted(_PERSONS_CDF, self._uniform("persons", rows), side="right").astype(
            np.float64
        )

    def _household_time(self, rows: IntArray, t_ms: IntArray | FloatArray) -> FloatArray:
        return household_clock(t_ms, self._key[rows], self.seed, self._clock_stream)

    def _total(self, rows: IntArray, t_ms: IntArray, per_day: FloatArray) -> FloatArray:
        """Consumption since the install date: ``per_day`` times the days of average use."""
        now = self._days.cumulative(self._household_time(rows, t_ms))
        installed = self._days.cumulative(self._household_time(rows, self.table.installed_ms[rows]))
        return per_day * np.maximum(0.0, now - installed)


class WaterMeterModel(_MeterModel):
    kind_name = "water_meter"
    profile = WATER
    decimals: ClassVar[Mapping[str, int]] = {
        "total_m3": 3,
        "valve_state": 0,
        "battery_v": 3,
        "temperature_c": 1,
        "rsrp_dbm": 0,
        "snr_db": 1,
    }

    def step(self, rows: IntArray, t_ms: IntArray) -> Values:
        per_day = (
            self._persons(rows) * WATER_M3_PER_PERSON_DAY * np.exp(0.25 * self._normal("habits", rows) - 0.03)
        )
        # Water in the pipes follows the season, lagging and damping the air.
        air = self.drivers.temperature_c(self._district(rows), t_ms)
        water = (
            0.7 * seasonal_mean_temperature_c(t_ms) + 0.3 * air + 1.0 + 0.2 * self._normal("temp", rows, t_ms)
        )
        water = np.clip(water, -10.0, 70.0)
        rsrp, snr = self._radio(rows, t_ms, mean_rsrp_dbm=-100.0)
        return {
            "total_m3": np.clip(self._total(rows, t_ms, per_day), 0.0, 1e7),
            "valve_state": np.zeros(len(rows)),
            "battery_v": self._battery_v(rows, t_ms, water, fall_v_per_year=0.02),
            "temperature_c": water,
            "rsrp_dbm": rsrp,
            "snr_db": snr,
        }


class GasMeterModel(_MeterModel):
    kind_name = "gas_meter"
    profile = GAS
    decimals: ClassVar[Mapping[str, int]] = {
        "total_m3": 3,
        "valve_state": 0,
        "battery_v": 3,
        "rsrp_dbm": 0,
        "snr_db": 1,
    }

    def step(self, rows: IntArray, t_ms: IntArray) -> Values:
        size = (self._persons(rows) / 2.5) ** 0.7
        per_day = GAS_M3_PER_HOUSEHOLD_DAY * size * np.exp(0.3 * self._normal("habits", rows) - 0.045)
        temp = self.drivers.temperature_c(self._district(rows), t_ms)
        rsrp, snr = self._radio(rows, t_ms, mean_rsrp_dbm=-98.0)
        return {
            "total_m3": np.clip(self._total(rows, t_ms, per_day), 0.0, 1e7),
            "valve_state": np.zeros(len(rows)),
            "battery_v": self._battery_v(rows, t_ms, temp, fall_v_per_year=0.02),
            "rsrp_dbm": rsrp,
            "snr_db": snr,
        }


class ElectricityMeterModel(_MeterModel):
    kind_name = "electricity_meter"
    profile = ELECTRICITY
    decimals: ClassVar[Mapping[str, int]] = {
        "energy_kwh": 2,
        "voltage_v": 1,
        "current_a": 2,
        "power_kw": 3,
        "power_factor": 3,
        "frequency_hz": 2,
        "rsrp_dbm": 0,
        "snr_db": 1,
    }

    def step(self, rows: IntArray, t_ms: IntArray) -> Values:
        size = (self._persons(rows) / 2.5) ** 0.6
        per_day = (
            ELECTRICITY_KWH_PER_HOUSEHOLD_DAY * size * np.exp(0.3 * self._normal("habits", rows) - 0.045)
        )
        rate = self._days.rate(self._household_time(rows, t_ms))
        power = per_day / 24.0 * rate * np.exp(0.35 * self._normal("power", rows, t_ms) - 0.06)
        power = np.clip(power, 0.005, 12.0)
        # GB/T 12325-2008: single-phase 220 V supply within +7 % / -10 %.
        voltage = 221.0 + 2.0 * self._normal("volt.site", rows) + 1.5 * self._normal("volt", rows, t_ms)
        voltage = np.clip(voltage, 198.0, 235.4)
        pf = np.clip(
            self._between("pf.site", rows, 0.88, 0.98) + 0.015 * self._normal("pf", rows, t_ms), 0.5, 1.0
        )
        # GB/T 15945-2008: frequency within 50 +- 0.2 Hz.
        frequency = np.clip(50.0 + 0.03 * self._normal("hz", rows, t_ms), 49.8, 50.2)
        rsrp, snr = self._radio(rows, t_ms, mean_rsrp_dbm=-95.0)
        return {
            "energy_kwh": np.clip(self._total(rows, t_ms, per_day), 0.0, 1e8),
            "voltage_v": voltage,
            "current_a": np.clip(power * 1000.0 / (voltage * pf), 0.0, 100.0),
            "power_kw": power,
            "power_factor": pf,
            "frequency_hz": frequency,
            "rsrp_dbm": rsrp,
            "snr_db": snr,
        }
