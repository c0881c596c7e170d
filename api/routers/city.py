"""GET /city/...: the operations centre's city views - surface water class and rain warnings.

The AQI views are in api.routers.city_air. Computation lives in api.cityviews (pure); this module
runs the queries and shapes the answers. ``at`` (default now) is RFC 3339 or epoch ms like the
rest of the API; without it a view is shared between clients (api.routers.city_shared).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import cast

from fastapi import APIRouter, Request, Response

from api.cityviews import rain, water_quality
from api.db import AsyncConn
from api.deps import State
from api.etag import NOT_MODIFIED
from api.models_city import (
    DistrictRain,
    RainCategoryOut,
    RainResponse,
    StationWaterQuality,
    WarningLevel,
    WaterParameterOut,
    WaterQualityResponse,
)
from api.queries import city as queries
from api.routers import ERRORS
from api.routers.city_shared import At, DistrictParam, districts, serve

router = APIRouter(prefix="/city", tags=["city"], responses=ERRORS)

# Stations analyse every 4 h (DOMAIN.md section 2); an analysis older than a day is stale.
WATER_LOOKBACK = timedelta(hours=24)

_WATER_METHOD = (
    "GB 3838-2002 table 1 on the latest analysis in (at - 24 h, at]: each parameter gets the best class"
    " whose limit it meets (DO a minimum, pH 6-9 in every class, worse than V is 劣V); the station class"
    " is the worst of pH, DO, CODMn, NH3-N and TP (river column unless the registry meta water_body is"
    " lake or reservoir). TN is reported, classed only on lakes/reservoirs and then as a reference"
    " outside the station class (环办[2011]22号). Main pollutants: up to three parameters worse than"
    " class III, by class then exceedance multiple."
)
_RAIN_STANDARD = (
    "rainstorm warning signals (CMA order 16, 2007): blue 50 mm/12 h, yellow 50 mm/6 h, orange 50 mm/3 h,"
    " red 100 mm/3 h; hourly grades 小雨 <= 2.5, 中雨 2.6-8.0, 大雨 8.1-15.9, 暴雨 >= 16 mm;"
    " 24 h grades GB/T 28592-2012"
)
_RAIN_METHOD = (
    "Sums of hydrology_station rain_mm (rain per reporting interval) over the 1/3/6/12/24 h ending at"
    " `at` (readings with at - window < time <= at), per station; a district's figure for each window"
    " is the maximum over its stations, so a local rainstorm is not diluted. The warning is the"
    " highest signal reached by observed amounts (forecasts are not considered). Amounts in 0.1 mm."
)


def _water_item(analysis: queries.WaterAnalysis) -> StationWaterQuality:
    body = water_quality.water_body_of(analysis.water_body)
    result = water_quality.classify(analysis.values if analysis.time is not None else {}, body)
    cls = result.water_class
    return StationWaterQuality(
        device_id=analysis.device_id,
        district=analysis.district,
        water_body=body.value,
        analysis_time=analysis.time,
        water_class=cls.label if cls is not None else None,
        class_number=int(cls) if cls is not None else None,
        deciding_parameters=list(result.deciding),
        main_pollutants=list(result.main_pollutants),
        parameters=[
            WaterParameterOut(
                parameter=p.parameter,
                label=p.label,
                value=p.value,
                unit=p.unit,
                water_class=p.water_class.label if p.water_class is not None else None,
                counts_towards_class=p.counts,
                exceedance_over_iii=p.exceedance_over_iii,
                note=p.note,
            )
            for p in result.parameters
        ],
    )


@router.get(
    "/water-quality/stations",
    response_model=WaterQualityResponse,
    responses=NOT_MODIFIED,
    summary="GB 3838-2002 class of every water-quality station",
)
async def water_quality_stations(
    request: Request, state: State, at: At, district: DistrictParam = None
) -> Response:
    """Class and deciding parameter(s) from each station's latest analysis at or before ``at``.
    Without ``at``: shared like the overview, at most api.shared_view_max_age_ms older than the data
    (or 10 render times for a view slow to render, api.shared_view_render_share)."""
    districts(district)

    async def build(conn: AsyncConn, now: datetime) -> WaterQualityResponse:
        analyses = await queries.latest_water_analyses(
            conn, at=now, lookback=WATER_LOOKBACK, district=district
        )
        return WaterQualityResponse(
            standard="GB 3838-2002",
            at=now,
            lookback_hours=int(WATER_LOOKBACK / timedelta(hours=1)),
            method=_WATER_METHOD,
            items=[_water_item(a) for a in analyses],
        )

    return await serve(request, state, ("/city/water-quality/stations", district), at, build)


def _category(value: float | None, grade: rain.Grader) -> RainCategoryOut | None:
    if value is None:
        return None
    cat = grade(value)
    return RainCategoryOut(key=cat.key, name_zh=cat.name_zh, name_en=cat.name_en)


def _district_rain(district: str, name: str, own: list[rain.Accumulations]) -> DistrictRain:
    acc = rain.area_accumulations(own)
    level = acc.warning() if acc.h24 is not None else None
    return DistrictRain(
        district=district,
        name=name,
        stations=len(own),
        stations_reporting=sum(s.h24 is not None for s in own),
        rain_1h_mm=acc.h1,
        rain_3h_mm=acc.h3,
        rain_6h_mm=acc.h6,
        rain_12h_mm=acc.h12,
        rain_24h_mm=acc.h24,
        last_hour_category=_category(acc.h1, rain.hourly_category),
        rain_24h_category=_category(acc.h24, rain.daily_category),
        warning=cast(WarningLevel, level.key) if level is not None else None,
        warning_zh=level.name_zh if level is not None else None,
    )


@router.get(
    "/rain/districts",
    response_model=RainResponse,
    responses=NOT_MODIFIED,
    summary="Rain and rainstorm warning per district",
)
async def rain_districts(request: Request, state: State, at: At, district: DistrictParam = None) -> Response:
    """Last-hour rain and category, 3/6/12/24 h accumulations and the rainstorm warning level.
    Without ``at``: shared like /city/water-quality/stations."""
    wanted = districts(district)

    async def build(conn: AsyncConn, now: datetime) -> RainResponse:
        stations = await queries.rain_accumulations(conn, at=now, district=district)
        items = [
            _district_rain(d.slug, d.name, [s.rain for s in stations if s.district == d.slug]) for d in wanted
        ]
        return RainResponse(at=now, standard=_RAIN_STANDARD, method=_RAIN_METHOD, items=items)

    return await serve(request, state, ("/city/rain/districts", district), at, build)
