"""GET /catalog: districts, device kinds, metrics with units and ranges, commands and categories.

Everything comes from cityneuron.catalog (the one source of truth the simulator, the schema and
ingest validation read) and from the city views' own tables, so a dashboard never hard-codes them.
"""

from __future__ import annotations

from typing import cast

from fastapi import APIRouter, Request, Response

from api.cityviews import aqi, rain
from api.cityviews.water_quality import WaterClass
from api.etag import NOT_MODIFIED, answer, make_etag
from api.models_city import WarningLevel
from api.models_map import (
    AqiCategoryOut,
    CatalogResponse,
    CommandInfo,
    DistrictOut,
    KindOut,
    MetricOut,
    RainWarningOut,
)
from api.queries.liveness import DEVICE_STATUSES
from api.routers import ERRORS
from cityneuron import __version__, contract
from cityneuron.catalog import DISTRICTS, KINDS

router = APIRouter(tags=["catalog"], responses=ERRORS)

_COMMAND_ARGS = {
    "set_lamp_level": '{"level": 0..100} (percent)',
    "set_valve": '{"state": "open" | "close"}',
}
_WARNING_EN = {
    rain.RainWarning.NONE: "no warning",
    rain.RainWarning.BLUE: "rainstorm blue warning",
    rain.RainWarning.YELLOW: "rainstorm yellow warning",
    rain.RainWarning.ORANGE: "rainstorm orange warning",
    rain.RainWarning.RED: "rainstorm red warning",
}


def build_catalog() -> CatalogResponse:
    """The catalog as served (built once: it changes only with the code)."""
    return CatalogResponse(
        version=__version__,
        districts=[
            DistrictOut(
                slug=d.slug, name_zh=d.name, name_en=d.name_en, lat=d.lat, lon=d.lon, population=d.population
            )
            for d in DISTRICTS
        ],
        kinds=[
            KindOut(
                name=k.name,
                title=k.title,
                name_en=k.name_en,
                name_zh=k.name_zh,
                interval_s=k.interval_s,
                description=k.description,
                metrics=[
                    MetricOut(
                        name=m.name,
                        unit=m.unit,
                        low=m.low,
                        high=m.high,
                        description=m.description,
                        cumulative=m.cumulative,
                        source=m.source,
                    )
                    for m in k.metrics
                ],
                commands=[c for c, kinds in contract.COMMAND_KINDS.items() if k.name in kinds],
            )
            for k in KINDS
        ],
        commands=[
            CommandInfo(name=c, kinds=list(kinds), args=_COMMAND_ARGS.get(c, ""))
            for c, kinds in contract.COMMAND_KINDS.items()
        ],
        statuses=list(DEVICE_STATUSES),
        aqi_categories=[
            AqiCategoryOut(
                level=c.level,
                aqi_low=c.aqi_low,
                aqi_high=c.aqi_high,
                name_zh=c.name_zh,
                name_en=c.name_en,
                colour=c.colour,
            )
            for c in aqi.CATEGORIES
        ],
        rain_warnings=[
            RainWarningOut(
                key=cast(WarningLevel, w.key), level=int(w), name_zh=w.name_zh, name_en=_WARNING_EN[w]
            )
            for w in rain.RainWarning
        ],
        water_classes=[c.label for c in sorted(WaterClass)],
    )


_BODY = build_catalog().model_dump_json().encode()
_ETAG = make_etag(_BODY)


@router.get(
    "/catalog",
    response_model=CatalogResponse,
    responses=NOT_MODIFIED,
    summary="Districts, kinds, metrics (units, ranges), commands, AQI categories, rain warnings",
)
async def catalog(request: Request) -> Response:
    """The catalog every part of CityNeuron reads. Sends an ETag: If-None-Match gets 304."""
    return answer(request, _BODY, _ETAG)
