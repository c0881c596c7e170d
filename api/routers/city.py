"""GET /city/...: the operations centre's city views - AQI, surface water class, rain warnings.

Computation lives in api.cityviews (pure); this module picks windows, runs the queries and
shapes the answers. ``at`` (default now) is RFC 3339 or epoch ms like the rest of the API.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Annotated, cast

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel

from api.cityviews import aqi, rain, water_quality
from api.cityviews.air_means import (
    HourlyMeans,
    area_means,
    daily_concentrations,
    hourly_concentrations,
)
from api.deps import Conn, check_district
from api.errors import BadRequest
from api.etag import NOT_MODIFIED, answer, make_etag
from api.models_city import (
    AqiIndex,
    AqiPeriod,
    AqiStandardName,
    DistrictAqi,
    DistrictAqiResponse,
    DistrictRain,
    RainCategoryOut,
    RainResponse,
    StationAqi,
    StationAqiResponse,
    StationWaterQuality,
    SubIndexOut,
    WarningLevel,
    WaterParameterOut,
    WaterQualityResponse,
)
from api.queries import city as queries
from api.routers import ERRORS
from api.timeparse import parse_instant
from cityneuron.catalog import DISTRICTS, District

router = APIRouter(prefix="/city", tags=["city"], responses=ERRORS)

# Chinese daily statistics run over the natural day in Beijing time (China Standard Time).
CHINA_TIME = timezone(timedelta(hours=8), "CST")
# Stations analyse every 4 h (DOMAIN.md section 2); an analysis older than a day is stale.
WATER_LOOKBACK = timedelta(hours=24)

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


async def _at(
    at: Annotated[
        str | None,
        Query(
            description="evaluate as of this time: RFC 3339 with time zone or epoch ms; default now",
            examples=["2026-03-01T08:00:00+08:00", "1772323200000"],
        ),
    ] = None,
) -> datetime:
    if at is None:
        return datetime.now(tz=UTC)
    try:
        return parse_instant(at)
    except ValueError as exc:
        raise BadRequest(f"at: {exc}", code="invalid_time") from None


At = Annotated[datetime, Depends(_at)]
DistrictParam = Annotated[str | None, Query(description="only this district", examples=["futian"])]
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


def _districts(district: str | None) -> tuple[District, ...]:
    if district is None:
        return DISTRICTS
    check_district(district)
    return tuple(d for d in DISTRICTS if d.slug == district)


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


def _conditional(request: Request, body: BaseModel) -> Response:
    """The view with a weak ETag over everything but ``at`` (the evaluation time moves on every
    call): a dashboard polling with If-None-Match gets 304 while the figures stand."""
    content = body.model_dump_json(exclude={"at"})
    return answer(request, body.model_dump_json().encode(), make_etag(content, weak=True))


@router.get(
    "/aqi/stations",
    response_model=StationAqiResponse,
    responses=NOT_MODIFIED,
    summary="AQI of every air station",
)
async def aqi_stations(
    request: Request,
    conn: Conn,
    at: At,
    district: DistrictParam = None,
    standard: StandardParam = "HJ633-2026",
    period: PeriodParam = "hourly",
) -> Response:
    """Concentrations used, IAQI per indicator, AQI, primary pollutants, category, level, colour."""
    if district is not None:
        check_district(district)
    std, per = aqi.Standard(standard), aqi.Period(period)
    window = _aqi_window(at, per)
    stations = await queries.air_hourly_means(conn, end=window.end, district=district)
    items = [
        StationAqi(device_id=s.device_id, district=s.district, **aqi_index(s.hours, per, std).model_dump())
        for s in stations
    ]
    return _conditional(
        request,
        StationAqiResponse.model_validate(
            {**_header(at, per, std, window), "method": _AQI_METHOD[per], "items": items}
        ),
    )


@router.get(
    "/aqi/districts",
    response_model=DistrictAqiResponse,
    responses=NOT_MODIFIED,
    summary="AQI of every district",
)
async def aqi_districts(
    request: Request,
    conn: Conn,
    at: At,
    district: DistrictParam = None,
    standard: StandardParam = "HJ633-2026",
    period: PeriodParam = "hourly",
) -> Response:
    """Each district's AQI from the mean of its stations' hourly concentrations."""
    districts = _districts(district)
    std, per = aqi.Standard(standard), aqi.Period(period)
    window = _aqi_window(at, per)
    stations = await queries.air_hourly_means(conn, end=window.end, district=district)
    items = []
    for d in districts:
        own = [s for s in stations if s.district == d.slug]
        series = area_means([s.hours for s in own])
        items.append(
            DistrictAqi(
                district=d.slug,
                name=d.name,
                stations=len(own),
                stations_reporting=sum(s.reporting for s in own),
                **aqi_index(series, per, std).model_dump(),
            )
        )
    return _conditional(
        request,
        DistrictAqiResponse.model_validate(
            {**_header(at, per, std, window), "method": _AQI_METHOD[per] + _DISTRICT_METHOD, "items": items}
        ),
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
    request: Request, conn: Conn, at: At, district: DistrictParam = None
) -> Response:
    """Class and deciding parameter(s) from each station's latest analysis at or before ``at``."""
    if district is not None:
        check_district(district)
    analyses = await queries.latest_water_analyses(conn, at=at, lookback=WATER_LOOKBACK, district=district)
    return _conditional(
        request,
        WaterQualityResponse(
            standard="GB 3838-2002",
            at=at,
            lookback_hours=int(WATER_LOOKBACK / timedelta(hours=1)),
            method=_WATER_METHOD,
            items=[_water_item(a) for a in analyses],
        ),
    )


def _category(value: float | None, grade: rain.Grader) -> RainCategoryOut | None:
    if value is None:
        return None
    cat = grade(value)
    return RainCategoryOut(key=cat.key, name_zh=cat.name_zh, name_en=cat.name_en)


@router.get(
    "/rain/districts",
    response_model=RainResponse,
    responses=NOT_MODIFIED,
    summary="Rain and rainstorm warning per district",
)
async def rain_districts(request: Request, conn: Conn, at: At, district: DistrictParam = None) -> Response:
    """Last-hour rain and category, 3/6/12/24 h accumulations and the rainstorm warning level."""
    districts = _districts(district)
    stations = await queries.rain_accumulations(conn, at=at, district=district)
    items = []
    for d in districts:
        own = [s.rain for s in stations if s.district == d.slug]
        acc = rain.area_accumulations(own)
        level = acc.warning() if acc.h24 is not None else None
        items.append(
            DistrictRain(
                district=d.slug,
                name=d.name,
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
        )
    return _conditional(
        request, RainResponse(at=at, standard=_RAIN_STANDARD, method=_RAIN_METHOD, items=items)
    )
