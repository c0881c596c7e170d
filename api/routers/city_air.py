"""GET /city/aqi/...: China's AQI (HJ 633) of every air station and every district.

Computation lives in api.cityviews (pure); this module picks the window, runs the query and shapes
the answer. Served by api.routers.city_shared: shared without ``at``, queried with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from api.cityviews import aqi
from api.cityviews.air_means import (
    HourlyMeans,
    area_means,
    daily_concentrations,
    hourly_concentrations,
)
from api.db import AsyncConn
from api.deps import State
from api.etag import NOT_MODIFIED
from api.models_city import (
    AqiIndex,
    AqiPeriod,
    AqiStandardName,
    DistrictAqi,
    DistrictAqiResponse,
    StationAqi,
    StationAqiResponse,
    SubIndexOut,
)
from api.queries import city as queries
from api.routers import ERRORS
from api.routers.city_shared import At, DistrictParam, districts, serve

router = APIRouter(prefix="/city", tags=["city"], responses=ERRORS)

# Chinese daily statistics run over the natural day in Beijing time (China Standard Time).
CHINA_TIME = timezone(timedelta(hours=8), "CST")

_AVERAGING = {
    (aqi.Period.HOURLY, 24): "24 h moving mean (at least 20 hourly means)",
    (aqi.Period.HOURLY, 1): "last 1 h mean",
    (aqi.Period.DAILY, 24): "daily mean (at least 20 hourly means)",
    (aqi.Period.DAILY, 8): "daily maximum 8 h moving mean (8 h means ending 08:00-24:00, 6 of 8 hours)",
    (aqi.Period.DAILY, 1): "daily maximum 1 h mean",
}
_SAMPLE_NAMES = {
    (aqi.Period.HOURLY, 24): "hourly means",
    (aqi.Period.HOURLY, 1): "hourly mean",
    (aqi.Period.DAILY, 24): "hourly means",
    (aqi.Period.DAILY, 8): "valid 8 h windows",
    (aqi.Period.DAILY, 1): "hourly mean",
}
_AQI_METHOD = {
    aqi.Period.HOURLY: "Real-time AQI (HJ 633 section 5.2): SO2, NO2, CO and O3 last-hour means on the"
    " 1 h tables; PM2.5 and PM10 24 h moving means on the 24 h tables, valid with at least 20 of the"
    " 24 hourly means (GB 3095-2012 table 4, HJ 663-2013; an invalid one gives no IAQI). Hours are"
    " counted back from `at` (the last hour is at - 1 h < time <= at); an hourly mean averages that"
    " hour's readings. docs/api.md has the details.",
    aqi.Period.DAILY: "Daily AQI (HJ 633 section 5.1) for the last complete day in China Standard Time"
    " (UTC+8) ending at or before `at`: 24 h means of SO2, NO2, CO, PM2.5, PM10 on the 24 h tables"
    " (at least 20 hourly means, GB 3095-2012), the O3 daily maximum 8 h moving mean on the 8 h table"
    " and the O3 daily maximum 1 h mean on the 1 h table.",
}
_DISTRICT_METHOD = (
    " District: per hour and pollutant, the arithmetic mean of the hourly means of its stations that"
    " have one (HJ 663-2013 evaluates an area from its stations' mean concentrations); the"
    " district's AQI then follows from that series exactly as for one station."
)

StandardParam = Annotated[
    AqiStandardName,
    Query(description="breakpoint table: HJ633-2026 (current since 2026-03-01) or HJ633-2012"),
]
PeriodParam = Annotated[
    AqiPeriod, Query(description="hourly: real-time AQI ending at `at`; daily: last complete day (UTC+8)")
]


@dataclass(frozen=True, slots=True)
class _AqiWindow:
    end: datetime
    day: date | None


def _aqi_window(at: datetime, period: aqi.Period) -> _AqiWindow:
    if period is aqi.Period.HOURLY:
        return _AqiWindow(at, None)
    local = at.astimezone(CHINA_TIME)
    day_end = local.replace(hour=0, minute=0, second=0, microsecond=0)
    return _AqiWindow(day_end.astimezone(UTC), (day_end - timedelta(days=1)).date())


def aqi_index(series: HourlyMeans, period: aqi.Period, standard: aqi.Standard) -> AqiIndex:
    """The AQI of one hourly-means series (a station's, or a district's station mean)."""
    found = hourly_concentrations(series) if period is aqi.Period.HOURLY else daily_concentrations(series)
    result = aqi.evaluate(period, {ind: c.value for ind, c in found.items()}, standard)
    indicators = []
    for sub in result.sub_indices:
        info = aqi.INDICATORS[sub.indicator]
        used = found[sub.indicator]
        note = sub.note
        if not used.valid and used.samples > 0:
            note = (
                f"not valid: {used.samples} of the {used.required} {_SAMPLE_NAMES[(period, info.hours)]}"
                " needed (GB 3095-2012 table 4, HJ 663-2013)"
            )
        indicators.append(
            SubIndexOut(
                indicator=sub.indicator.value,
                pollutant=info.pollutant,
                averaging=_AVERAGING[(period, info.hours)],
                concentration=sub.concentration,
                unit=info.unit,
                samples=used.samples,
                samples_required=used.required,
                valid=used.valid,
                iaqi=sub.iaqi,
                iaqi_basis=sub.basis.value if sub.basis is not None else None,
                primary=sub.indicator in result.primary_indicators,
                note=note,
            )
        )
    cat = result.category
    return AqiIndex(
        aqi=result.aqi,
        level=cat.level if cat else None,
        category_zh=cat.name_zh if cat else None,
        category_en=cat.name_en if cat else None,
        colour=cat.colour if cat else None,
        primary_pollutants=list(result.primary_pollutants),
        indicators=indicators,
    )


def _header(
    at: datetime, period: aqi.Period, standard: aqi.Standard, window: _AqiWindow
) -> dict[str, object]:
    return {
        "period": period.value,
        "standard": standard.value,
        "standard_title": aqi.STANDARD_TITLES[standard],
        "at": at,
        "day": window.day,
        "window_start": window.end - timedelta(hours=24),
        "window_end": window.end,
    }


@router.get(
    "/aqi/stations",
    response_model=StationAqiResponse,
    responses=NOT_MODIFIED,
    summary="AQI of every air station",
)
async def aqi_stations(
    request: Request,
    state: State,
    at: At,
    district: DistrictParam = None,
    standard: StandardParam = "HJ633-2026",
    period: PeriodParam = "hourly",
) -> Response:
    """Concentrations used, IAQI per indicator, AQI, primary pollutants, category, level, colour.
    Without ``at``: shared like the overview, at most api.shared_view_max_age_ms older than the data
    (or 10 render times for a view slow to render, api.shared_view_render_share)."""
    districts(district)
    std, per = aqi.Standard(standard), aqi.Period(period)

    async def build(conn: AsyncConn, now: datetime) -> StationAqiResponse:
        window = _aqi_window(now, per)
        stations = await queries.air_hourly_means(conn, end=window.end, district=district)
        items = [
            StationAqi(
                device_id=s.device_id, district=s.district, **aqi_index(s.hours, per, std).model_dump()
            )
            for s in stations
        ]
        return StationAqiResponse.model_validate(
            {**_header(now, per, std, window), "method": _AQI_METHOD[per], "items": items}
        )

    return await serve(request, state, ("/city/aqi/stations", district, std, per), at, build)


@router.get(
    "/aqi/districts",
    response_model=DistrictAqiResponse,
    responses=NOT_MODIFIED,
    summary="AQI of every district",
)
async def aqi_districts(
    request: Request,
    state: State,
    at: At,
    district: DistrictParam = None,
    standard: StandardParam = "HJ633-2026",
    period: PeriodParam = "hourly",
) -> Response:
    """Each district's AQI from the mean of its stations' hourly concentrations. Without ``at``:
    shared like /city/aqi/stations."""
    wanted = districts(district)
    std, per = aqi.Standard(standard), aqi.Period(period)

    async def build(conn: AsyncConn, now: datetime) -> DistrictAqiResponse:
        window = _aqi_window(now, per)
        stations = await queries.air_hourly_means(conn, end=window.end, district=district)
        items = []
        for d in wanted:
            own = [s for s in stations if s.district == d.slug]
            items.append(
                DistrictAqi(
                    district=d.slug,
                    name=d.name,
                    stations=len(own),
                    stations_reporting=sum(s.reporting for s in own),
                    **aqi_index(area_means([s.hours for s in own]), per, std).model_dump(),
                )
            )
        return DistrictAqiResponse.model_validate(
            {**_header(now, per, std, window), "method": _AQI_METHOD[per] + _DISTRICT_METHOD, "items": items}
        )

    return await serve(request, state, ("/city/aqi/districts", district, std, per), at, build)
