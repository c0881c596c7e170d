"""Value models, one per catalog kind, each a vectorised ``step(rows, t_ms)``."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from cityneuron.catalog import KINDS
from simulator.city import City
from simulator.drivers import Drivers
from simulator.kinds.air import AirStationModel
from simulator.kinds.base import KindModel, Values
from simulator.kinds.manhole import ManholeCoverModel
from simulator.kinds.meters import ElectricityMeterModel, GasMeterModel, WaterMeterModel
from simulator.kinds.pole import SmartPoleModel
from simulator.kinds.water import HydrologyStationModel, WaterQualityStationModel

MODELS: Mapping[str, type[KindModel]] = MappingProxyType(
    {
        m.kind_name: m
        for m in (
            SmartPoleModel,
            ManholeCoverModel,
            WaterMeterModel,
            ElectricityMeterModel,
            GasMeterModel,
            AirStationModel,
            WaterQualityStationModel,
            HydrologyStationModel,
        )
    }
)
if set(MODELS) != {k.name for k in KINDS}:
    raise RuntimeError("every catalog kind needs exactly one model in simulator.kinds")


def build_models(city: City, drivers: Drivers) -> dict[str, KindModel]:
    """One model per kind of ``city``, sharing ``drivers``."""
    return {name: MODELS[name](table, drivers, city.seed) for name, table in city.tables.items()}


__all__ = ["MODELS", "KindModel", "Values", "build_models"]
