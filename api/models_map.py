"""Response models of the catalog and the map feeds (/catalog, /map/...).

The map feeds are columnar: one array per field, the i-th entries of all arrays describe the i-th
device or cell. A city of 100 k devices is then a few arrays, not 100 k JSON objects.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from api.models_city import WarningLevel

# --- catalog ------------------------------------------------------------------------------------


class DistrictOut(BaseModel):
    slug: str
    name_zh: str
    name_en: str
    lat: float = Field(description="centroid latitude, WGS 84 degrees (approx.)")
    lon: float = Field(description="centroid longitude, WGS 84 degrees (approx.)")
    population: int = Field(description="2020 census")


class MetricOut(BaseModel):
    name: str
    unit: str
    low: float = Field(description="lowest physically possible value; ingest rejects values below")
    high: float = Field(description="highest physically possible value; ingest rejects values above")
    description: str
    cumulative: bool = Field(description="a counter that only grows (meter totals)")
    source: str = Field(description="standard the metric or its range comes from, if any")


class KindOut(BaseModel):
    name: str
    title: str
    name_en: str = Field(description="short label (maps, legends, filters)")
    name_zh: str = Field(description="short label in Chinese")
    interval_s: int = Field(description="catalog reporting interval, seconds")
    description: str
    metrics: list[MetricOut]
    commands: list[str] = Field(description="downlink commands this kind accepts")


class CommandInfo(BaseModel):
    name: str
    kinds: list[str]
    args: str = Field(description="the arguments it needs")


class AqiCategoryOut(BaseModel):
    level: int
    aqi_low: int
    aqi_high: int
    name_zh: str
    name_en: str
    colour: str = Field(description="HJ 633-2012 appendix A, #RRGGBB")


class RainWarningOut(BaseModel):
    key: WarningLevel
    level: int
    name_zh: str
    name_en: str


class CatalogResponse(BaseModel):
    version: str = Field(description="API version; the catalog changes only with a release")
    districts: list[DistrictOut]
    kinds: list[KindOut]
    commands: list[CommandInfo]
    statuses: list[str] = Field(description="device states, see Device.status")
    aqi_categories: list[AqiCategoryOut]
    rain_warnings: list[RainWarningOut]
    water_classes: list[str] = Field(description="GB 3838-2002 classes, best first")


# --- map feeds ----------------------------------------------------------------------------------


class PositionsResponse(BaseModel):
    registry: str = Field(description="tag of the registry state; /map/states names it too")
    count: int = Field(description="devices listed (those with a position)")
    unplaced: int = Field(description="devices matching the filter without a position")
    scale: int = Field(description="lat and lon are integers in 1/scale degrees")
    kinds: list[str] = Field(description="names indexed by the kind column (-1: not in the catalog)")
    districts: list[str] = Field(description="slugs indexed by the district column (-1: unknown)")
    id: list[str] = Field(description="device ids, ascending")
    kind: list[int]
    district: list[int]
    lat: list[int] = Field(description="WGS 84 latitude times scale, rounded")
    lon: list[int] = Field(description="WGS 84 longitude times scale, rounded")


class StatesResponse(BaseModel):
    version: int = Field(description="pass as since= next time; moves only when a state changed")
    reset: bool = Field(
        description="true: ids/status list every device not in default_status (forget what you had);"
        " false: only the devices whose state changed after since"
    )
    registry: str = Field(
        description="as /map/positions: when it differs, fetch the positions again (empty with bbox=)"
    )
    devices: int = Field(description="devices in the registry (in the view with bbox=)")
    default_status: str = Field(description="state of every device not listed in a reset answer")
    ids: list[str]
    status: list[str] = Field(description="current state of ids[i]")


class DensityResponse(BaseModel):
    cell_deg: float = Field(description="cell edge, degrees; cell (x, y) spans [x, x+1) * cell_deg")
    devices: int = Field(description="devices counted (with a position)")
    x: list[int] = Field(description="floor(lon / cell_deg)")
    y: list[int] = Field(description="floor(lat / cell_deg)")
    n: list[int] = Field(description="devices in the cell")
    down: list[int] = Field(description="devices in the cell that are offline or silent")
