"""The device and metric catalog: the one source of truth for districts, kinds and metrics.

The simulator, the database schema, ingest validation and the API all read this module.
Figures come from ../shared/DOMAIN.md; where a number comes from a standard, the standard is named.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

_IDENTIFIER = re.compile(r"^[a-z][a-z0-9_]{0,47}$")


@dataclass(frozen=True, slots=True)
class District:
    """A district of the simulated city (DOMAIN.md section 1, 2020 census)."""

    slug: str
    name: str
    lat: float
    lon: float
    population: int
    # Romanised name (Hanyu Pinyin, as the district government's own English pages write it).
    name_en: str = ""


@dataclass(frozen=True, slots=True)
class Metric:
    """One measured quantity: its column name, unit and the physically possible range.

    Values outside ``[low, high]`` are rejected by ingest as ``out_of_range``.
    ``cumulative`` marks counters that only grow (meter totals).
    """

    name: str
    unit: str
    low: float
    high: float
    description: str
    cumulative: bool = False
    source: str = ""

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high


@dataclass(frozen=True, slots=True)
class Kind:
    """A device kind: its metrics and default reporting interval."""

    name: str
    title: str
    interval_s: int
    metrics: tuple[Metric, ...]
    description: str = ""
    # Short labels for maps, legends and filters (the operations screen, /catalog).
    name_en: str = ""
    name_zh: str = ""
    metric_by_name: Mapping[str, Metric] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_name = {m.name: m for m in self.metrics}
        if len(by_name) != len(self.metrics):
            raise ValueError(f"kind {self.name}: duplicate metric names")
        object.__setattr__(self, "metric_by_name", MappingProxyType(by_name))

    @property
    def metric_names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.metrics)

    @property
    def table(self) -> str:
        """Name of the wide readings table of this kind."""
        return f"reading_{self.name}"


DISTRICTS: tuple[District, ...] = (
    District("futian", "福田区", 22.541, 114.055, 1_553_000, "Futian"),
    District("luohu", "罗湖区", 22.548, 114.131, 1_143_000, "Luohu"),
    District("yantian", "盐田区", 22.557, 114.236, 214_000, "Yantian"),
    District("nanshan", "南山区", 22.533, 113.930, 1_796_000, "Nanshan"),
    District("baoan", "宝安区", 22.655, 113.884, 4_476_000, "Bao'an"),
    District("longgang", "龙岗区", 22.720, 114.247, 3_979_000, "Longgang"),
    District("longhua", "龙华区", 22.697, 114.045, 2_528_000, "Longhua"),
    District("pingshan", "坪山区", 22.708, 114.350, 551_000, "Pingshan"),
    District("guangming", "光明区", 22.749, 113.936, 1_095_000, "Guangming"),
    District("dapeng", "大鹏新区", 22.593, 114.480, 156_000, "Dapeng New District"),
)
DISTRICT_BY_SLUG: Mapping[str, District] = MappingProxyType({d.slug: d for d in DISTRICTS})


def _nbiot_radio() -> tuple[Metric, ...]:
    # DOMAIN.md section 2: RSRP typically -140 to -44 dBm; SNR as reported by NB-IoT modules.
    return (
        Metric("rsrp_dbm", "dBm", -140.0, -44.0, "NB-IoT reference signal received power"),
        Metric("snr_db", "dB", -20.0, 40.0, "NB-IoT signal to noise ratio"),
    )


def _battery(low: float = 2.0, high: float = 3.9) -> Metric:
    return Metric("battery_v", "V", low, high, "battery voltage (Li-SOCl2 cell, 3.6 V nominal)")


_AIR_POLLUTANTS: tuple[Metric, ...] = (
    # Ranges cover the HJ 633 breakpoint tables up to IAQI 500 (DOMAIN.md section 4).
    Metric("pm25", "ug/m3", 0.0, 1000.0, "PM2.5 mass concentration", source="HJ 633"),
    Metric("pm10", "ug/m3", 0.0, 2000.0, "PM10 mass concentration", source="HJ 633"),
)

KINDS: tuple[Kind, ...] = (
    Kind(
        "smart_pole",
        "Multi-function smart pole (多功能智能杆)",
        60,
        (
            Metric("lamp_level", "%", 0.0, 100.0, "street lamp dimming level"),
            Metric("lamp_power_w", "W", 0.0, 400.0, "lamp electrical power (LED 30-250 W)"),
            Metric("illuminance_lux", "lx", 0.0, 150_000.0, "ambient illuminance"),
            Metric("noise_dba", "dB(A)", 20.0, 140.0, "equivalent sound level", source="GB 3096-2008"),
            *_AIR_POLLUTANTS,
            Metric("temperature_c", "Cel", -10.0, 50.0, "air temperature"),
            Metric("humidity_pct", "%RH", 0.0, 100.0, "relative humidity"),
            Metric("wifi_clients", "count", 0.0, 2000.0, "public Wi-Fi associated clients"),
            Metric(
                "ev_charger_state",
                "enum",
                0.0,
                255.0,
                "connector state: 0 offline, 1 idle, 2 occupied, 3 charging, 4 reserved, 255 fault",
                source="charging-platform interconnection protocol",
            ),
            Metric("ev_power_kw", "kW", 0.0, 350.0, "EV charger output power"),
            Metric("emergency_call", "bool", 0.0, 1.0, "emergency call button pressed"),
        ),
        "lighting, environment, noise, Wi-Fi, EV charger and emergency call; reports every 1-5 min",
        name_en="Smart pole",
        name_zh="智能杆",
    ),
    Kind(
        "manhole_cover",
        "Manhole cover sensor",
        1800,
        (
            Metric("tilt_deg", "deg", 0.0, 180.0, "cover tilt angle (alarm above 10 deg)"),
            Metric("water_level_cm", "cm", 0.0, 1000.0, "water level below the cover (float sensor)"),
            Metric("temperature_c", "Cel", -10.0, 70.0, "temperature inside the shaft"),
            _battery(),
            *_nbiot_radio(),
        ),
        "heartbeat every 15-60 min, alarms immediately",
        name_en="Manhole cover",
        name_zh="井盖",
    ),
    Kind(
        "water_meter",
        "NB-IoT water meter",
        86_400,
        (
            Metric(
                "total_m3",
                "m3",
                0.0,
                1e7,
                "cumulative flow",
                cumulative=True,
                source="CJ/T 188-2004",
            ),
            Metric(
                "valve_state",
                "enum",
                0.0,
                3.0,
                "valve status: 0 open, 1 closed, 3 abnormal",
                source="CJ/T 188-2004 status word",
            ),
            _battery(),
            Metric("temperature_c", "Cel", -10.0, 70.0, "meter temperature"),
            *_nbiot_radio(),
        ),
        "uploads once a day carrying 24 hourly frozen readings",
        name_en="Water meter",
        name_zh="水表",
    ),
    Kind(
        "electricity_meter",
        "NB-IoT electricity meter",
        3600,
        (
            Metric(
                "energy_kwh",
                "kWh",
                0.0,
                1e8,
                "forward active energy total",
                cumulative=True,
                source="DL/T 645-2007 00010000",
            ),
            Metric("voltage_v", "V", 0.0, 500.0, "phase-A voltage", source="DL/T 645-2007 02010100"),
            Metric("current_a", "A", 0.0, 100.0, "phase-A current", source="DL/T 645-2007 02020100"),
            Metric("power_kw", "kW", 0.0, 50.0, "active power", source="DL/T 645-2007 02030000"),
            Metric("power_factor", "1", 0.0, 1.0, "power factor", source="DL/T 645-2007 02060000"),
            Metric("frequency_hz", "Hz", 45.0, 55.0, "grid frequency", source="DL/T 645-2007 02800002"),
            *_nbiot_radio(),
        ),
        "hourly frozen data",
        name_en="Electricity meter",
        name_zh="电表",
    ),
    Kind(
        "gas_meter",
        "NB-IoT gas meter",
        86_400,
        (
            Metric("total_m3", "m3", 0.0, 1e7, "cumulative volume", cumulative=True),
            Metric("valve_state", "enum", 0.0, 3.0, "valve status: 0 open, 1 closed, 3 abnormal"),
            _battery(),
            *_nbiot_radio(),
        ),
        "uploads once a day carrying 24 hourly frozen readings",
        name_en="Gas meter",
        name_zh="燃气表",
    ),
    Kind(
        "air_station",
        "Air quality monitoring station",
        3600,
        (
            *_AIR_POLLUTANTS,
            Metric("so2", "ug/m3", 0.0, 3000.0, "sulphur dioxide", source="HJ 633"),
            Metric("no2", "ug/m3", 0.0, 4000.0, "nitrogen dioxide", source="HJ 633"),
            Metric("co", "mg/m3", 0.0, 150.0, "carbon monoxide", source="HJ 633"),
            Metric("o3", "ug/m3", 0.0, 1500.0, "ozone", source="HJ 633"),
            Metric("temperature_c", "Cel", -10.0, 50.0, "air temperature"),
            Metric("humidity_pct", "%RH", 0.0, 100.0, "relative humidity"),
            Metric("wind_speed_ms", "m/s", 0.0, 75.0, "wind speed"),
            Metric("wind_dir_deg", "deg", 0.0, 360.0, "wind direction"),
            Metric("pressure_hpa", "hPa", 850.0, 1100.0, "air pressure"),
            Metric("rain_mm", "mm", 0.0, 300.0, "rainfall in the interval"),
        ),
        "hourly values",
        name_en="Air station",
        name_zh="空气站",
    ),
    Kind(
        "water_quality_station",
        "Surface water quality automatic station",
        14_400,
        (
            Metric("water_temp_c", "Cel", 0.0, 40.0, "water temperature"),
            Metric("ph", "pH", 0.0, 14.0, "pH (6-9 in every class)", source="GB 3838-2002"),
            Metric("do_mgl", "mg/L", 0.0, 20.0, "dissolved oxygen", source="GB 3838-2002"),
            Metric("conductivity_uscm", "uS/cm", 0.0, 100_000.0, "conductivity"),
            Metric("turbidity_ntu", "NTU", 0.0, 4000.0, "turbidity"),
            Metric("codmn_mgl", "mg/L", 0.0, 100.0, "permanganate index", source="GB 3838-2002"),
            Metric("nh3n_mgl", "mg/L", 0.0, 100.0, "ammonia nitrogen", source="GB 3838-2002"),
            Metric("tp_mgl", "mg/L", 0.0, 20.0, "total phosphorus", source="GB 3838-2002"),
            Metric("tn_mgl", "mg/L", 0.0, 100.0, "total nitrogen", source="GB 3838-2002"),
        ),
        "one analysis every 4 h",
        name_en="Water quality station",
        name_zh="水质站",
    ),
    Kind(
        "hydrology_station",
        "Hydrology / rain station",
        300,
        (
            # Radar level sensors cover 0-30 m (DOMAIN.md section 6).
            Metric("water_level_m", "m", 0.0, 30.0, "river water level"),
            # Shenzhen record 116.8 mm in 1 h (7 Sept 2023); 300 mm per interval is impossible.
            Metric("rain_mm", "mm", 0.0, 300.0, "rainfall in the interval"),
            Metric("supply_v", "V", 0.0, 30.0, "supply voltage"),
        ),
        "fixed-interval reports (SL 651 style), faster in alert mode",
        name_en="Hydrology station",
        name_zh="水文站",
    ),
)
KIND_BY_NAME: Mapping[str, Kind] = MappingProxyType({k.name: k for k in KINDS})


def kind(name: str) -> Kind:
    """Return the catalog kind called ``name``; raise ``KeyError`` with the valid names."""
    try:
        return KIND_BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown kind {name!r}; known: {', '.join(KIND_BY_NAME)}") from None


def _check_catalog() -> None:
    # Metric and kind names become SQL identifiers: enforce that here, once, at import.
    for k in KINDS:
        if not _IDENTIFIER.match(k.name):
            raise ValueError(f"kind name {k.name!r} is not a safe identifier")
        for m in k.metrics:
            if not _IDENTIFIER.match(m.name):
                raise ValueError(f"metric name {m.name!r} is not a safe identifier")
            if not m.low < m.high:
                raise ValueError(f"metric {k.name}.{m.name}: empty range")


_check_catalog()
