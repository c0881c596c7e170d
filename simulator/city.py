"""The device registry of the simulated city: which devices exist, where, and since when.

Every fact about a device is a pure function of (seed, kind, district, number), so a device
keeps its place, install date and serial whichever preset or scale the city is built with.

A city can be split into shards (``--shard i/N``) that run as separate processes or machines:
shard ``i`` keeps the rows ``r`` of each kind's full-city table with ``r mod N == i``. Rows
keep their full-city district, number, id and random streams, so the shards together are
exactly the unsharded city, whichever way it is split.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cached_property
from types import MappingProxyType
from typing import Any

import numpy as np
from numpy.typing import NDArray

from cityneuron.catalog import DISTRICTS, KINDS, Kind
from simulator import clock, rng
from simulator.errors import SimulatorError

log = logging.getLogger("cityneuron.simulator")

# Devices per kind for the whole city (DOMAIN.md section 1). "shenzhen" is the 1:1 city:
# 45 k poles, about 7 M water and 7 M electricity meters, a few M gas meters, tens of
# thousands of manhole sensors, ~100 air stations, tens of water-quality stations and
# hundreds of hydrology stations.
PRESETS: Mapping[str, Mapping[str, int]] = MappingProxyType(
    {
        "small": MappingProxyType(
            {
                "smart_pole": 600,
                "manhole_cover": 400,
                "water_meter": 800,
                "electricity_meter": 800,
                "gas_meter": 400,
                "air_station": 20,
                "water_quality_station": 10,
                "hydrology_station": 20,
            }
        ),
        "district": MappingProxyType(
            {
                "smart_pole": 3_000,
                "manhole_cover": 4_000,
                "water_meter": 40_000,
                "electricity_meter": 40_000,
                "gas_meter": 15_000,
                "air_station": 30,
                "water_quality_station": 20,
                "hydrology_station": 60,
            }
        ),
        "shenzhen": MappingProxyType(
            {
                "smart_pole": 45_000,
                "manhole_cover": 60_000,
                "water_meter": 7_000_000,
                "electricity_meter": 7_000_000,
                "gas_meter": 3_000_000,
                "air_station": 100,
                "water_quality_station": 40,
                "hydrology_station": 400,
            }
        ),
    }
)

# Short id prefixes: ids look like pole-futian-00001 and match the contract's device id pattern.
ID_PREFIX: Mapping[str, str] = MappingProxyType(
    {
        "smart_pole": "pole",
        "manhole_cover": "manhole",
        "water_meter": "water",
        "electricity_meter": "elec",
        "gas_meter": "gas",
        "air_station": "air",
        "water_quality_station": "wq",
        "hydrology_station": "hydro",
    }
)

# Land area of each district, km2 (approx., Shenzhen statistical yearbook): sets how far
# devices spread around the district centroid.
_AREA_KM2 = {
    "futian": 79.0,
    "luohu": 79.0,
    "yantian": 75.0,
    "nanshan": 188.0,
    "baoan": 397.0,
    "longgang": 388.0,
    "longhua": 176.0,
    "pingshan": 166.0,
    "guangming": 155.0,
    "dapeng": 295.0,
}
_KM_PER_DEG_LAT = 111.2
_INSTALL_FIRST_DAY = int(np.datetime64("2019-01-01", "D").astype(np.int64))
_INSTALL_LAST_DAY = int(np.datetime64("2024-12-31", "D").astype(np.int64))
_KIND_INDEX = {k.name: i for i, k in enumerate(KINDS)}


@dataclass(frozen=True, eq=False)
class DeviceTable:
    """The devices of one kind, one row per device, as numpy columns.

    ``key`` identifies a device for its random streams: it depends on the district and the
    device's number there, not on its row, so models give a device the same character in
    every preset and every shard. ``city_row`` is the row in the unsharded city's table.
    """

    kind: Kind
    district: NDArray[np.int64]
    number: NDArray[np.int64]
    lat: NDArray[np.float64]
    lon: NDArray[np.float64]
    installed_day: NDArray[np.int64]
    serial: NDArray[np.int64]
    id_width: int
    city_row: NDArray[np.int64]
    # Put before every id: a load test's own devices (simulator/load/namespace.py) are the city's
    # devices under another name, so they never touch the city's own counters and views.
    id_namespace: str = ""

    def __len__(self) -> int:
        return len(self.district)

    # Cached: models index these with a few rows per report, and recomputing a whole column of
    # millions of devices each time would cost more than the report itself.
    @cached_property
    def key(self) -> NDArray[np.int64]:
        return self.district.astype(np.int64) * (1 << 32) + self.number

    @cached_property
    def installed_ms(self) -> NDArray[np.int64]:
        """Epoch ms of local midnight on the install date."""
        return clock.local_day_start_ms(self.installed_day)

    def device_id(self, row: int) -> str:
        slug = DISTRICTS[int(self.district[row])].slug
        number = int(self.number[row])
        return f"{self.id_namespace}{ID_PREFIX[self.kind.name]}-{slug}-{number:0{self.id_width}d}"

    def device_ids(self) -> list[str]:
        return [self.device_id(row) for row in range(len(self))]

    def district_slug(self, row: int) -> str:
        return DISTRICTS[int(self.district[row])].slug

    def facts(self, row: int) -> dict[str, Any]:
        """Registry facts sent in the retained status message."""
        installed = np.datetime64(int(self.installed_day[row]), "D")
        return {
            "lat": round(float(self.lat[row]), 6),
            "lon": round(float(self.lon[row]), 6),
            "installed": str(installed),
            "meta": {"serial": str(int(self.serial[row]))},
        }


@dataclass(frozen=True, eq=False)
class City:
    """Every device of the simulated city, one table per catalog kind (catalog order)."""

    preset: str
    scale: float
    seed: int
    tables: Mapping[str, DeviceTable]
    shard: tuple[int, int] = (0, 1)

    @property
    def devices(self) -> int:
        """Devices of this shard (the whole city when unsharded)."""
        return sum(len(t) for t in self.tables.values())

    def __iter__(self) -> Iterator[DeviceTable]:
        return iter(self.tables.values())


def district_counts(total: int) -> NDArray[np.int64]:
    """Split ``total`` devices over the districts by population (largest remainder).

    Every district gets at least one device when there are enough to go round.
    """
    population = np.array([d.population for d in DISTRICTS], dtype=np.float64)
    floor_each = 1 if total >= len(DISTRICTS) else 0
    rest = total - floor_each * len(DISTRICTS)
    quota = rest * population / population.sum()
    counts = np.floor(quota).astype(np.int64)
    short = rest - int(counts.sum())
    if short:
        order = np.argsort(-(quota - counts), kind="stable")
        counts[order[:short]] += 1
    return counts + floor_each


def _spread(
    seed: int, kind_index: int, district: NDArray[np.int64], number: NDArray[np.int64]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Positions around the district centroid: Rayleigh radius truncated at two sigmas."""
    centre_lat = np.array([d.lat for d in DISTRICTS])[district]
    centre_lon = np.array([d.lon for d in DISTRICTS])[district]
    area = np.array([_AREA_KM2[d.slug] for d in DISTRICTS])[district]
    sigma_km = 0.3 * np.sqrt(area)
    u = rng.uniform(seed, rng.stream_id("city.radius"), kind_index, district, number)
    angle = 2.0 * np.pi * rng.uniform(seed, rng.stream_id("city.angle"), kind_index, district, number)
    radius_km = sigma_km * np.sqrt(-2.0 * np.log1p(-u * (1.0 - np.exp(-2.0))))
    lat = centre_lat + radius_km * np.sin(angle) / _KM_PER_DEG_LAT
    lon = centre_lon + radius_km * np.cos(angle) / (_KM_PER_DEG_LAT * np.cos(np.deg2rad(centre_lat)))
    return lat, lon


def _table(kind: Kind, count: int, seed: int, shard: tuple[int, int]) -> DeviceTable:
    """The rows of shard ``shard`` of the full-city table of ``count`` devices of ``kind``."""
    index, shards = shard
    kind_index = _KIND_INDEX[kind.name]
    per_district = district_counts(count)
    ends = np.cumsum(per_district)
    city_row = np.arange(index, count, shards, dtype=np.int64)
    district = np.searchsorted(ends, city_row, side="right").astype(np.int64)
    number = city_row - (ends - per_district)[district] + 1
    lat, lon = _spread(seed, kind_index, district, number)
    span = _INSTALL_LAST_DAY - _INSTALL_FIRST_DAY + 1
    u_day = rng.uniform(seed, rng.stream_id("city.installed"), kind_index, district, number)
    installed = _INSTALL_FIRST_DAY + (u_day * span).astype(np.int64)
    # Ten-digit serial numbers; meters derive their daily upload slot from them.
    serial_hash = rng.hash64(seed, rng.stream_id("city.serial"), kind_index, district, number)
    serial = 1_000_000_000 + (serial_hash % np.uint64(9_000_000_000)).astype(np.int64)
    # The id width comes from the whole city, so a shard names its devices as the city does.
    width = max(5, len(str(int(per_district.max(initial=0)))))
    return DeviceTable(kind, district, number, lat, lon, installed, serial, width, city_row)


def kind_counts(preset: str, scale: float) -> dict[str, int]:
    """Devices of each kind in the whole (unsharded) city of ``preset`` times ``scale``."""
    try:
        counts = PRESETS[preset]
    except KeyError:
        raise SimulatorError(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}") from None
    if not scale > 0:
        raise SimulatorError(f"scale must be positive, got {scale}")
    return {k.name: max(1, round(counts[k.name] * scale)) for k in KINDS}


def build_city(
    preset: str = "small", scale: float = 1.0, seed: int = 42, shard: tuple[int, int] = (0, 1)
) -> City:
    """Build the deterministic registry of ``preset`` with every count multiplied by ``scale``.

    ``shard=(i, n)`` keeps only shard ``i`` of ``n`` (module docstring); its devices keep
    their full-city ids and values.
    """
    index, shards = shard
    if not 0 <= index < shards:
        raise SimulatorError(f"shard must satisfy 0 <= i < N, got {index}/{shards}")
    counts = kind_counts(preset, scale)
    tables = {k.name: _table(k, counts[k.name], seed, (index, shards)) for k in KINDS}
    city = City(preset, float(scale), int(seed), MappingProxyType(tables), (index, shards))
    log.info(
        "built city preset=%s scale=%s seed=%s shard=%d/%d devices=%d",
        preset,
        scale,
        seed,
        index,
        shards,
        city.devices,
    )
    return city
