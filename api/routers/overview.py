"""GET /city/districts/{district}/summary and /city/overview: the operations centre's one screen.

Device counts by state and kind (api.queries.liveness), key metrics from the devices' latest
values with catalog units, the real-time AQI and rain of the city views, and open alerts.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Annotated, cast

from fastapi import APIRouter, Path, Request, Response
from pydantic import BaseModel

from api.cityviews import aqi, rain
from api.cityviews.air_means import area_means
from api.db import AsyncConn
from api.deps import State, check_district, state_connection
from api.etag import NOT_MODIFIED, answer, make_etag
from api.models_city import (
    AlertCounts,
    AqiBrief,
    CityOverviewResponse,
    DeviceStateCounts,
    DistrictSummary,
    DistrictSummaryResponse,
    KeyMetricOut,
    KindDeviceCounts,
    RainBrief,
    RainCategoryOut,
    WarningLevel,
)
from api.queries import alerts as alert_queries
from api.queries import city as city_queries
from api.queries import overview as queries
from api.queries.liveness import DEVICE_STATUSES
from api.routers import ERRORS
from api.routers.city_air import aqi_index
from api.state import ApiState
from api.viewcache import RenderedView
from cityneuron.catalog import DISTRICT_BY_SLUG, DISTRICTS, KINDS

router = APIRouter(prefix="/city", tags=["city"], responses=ERRORS)

_STANDARD = aqi.Standard("HJ633-2026")
_METHOD = (
    "Devices: online/offline/silent/unknown by api.queries.liveness (silent: nothing for"
    " ingest.silent_after_intervals times the kind's reporting interval). Key metrics: mean, min and"
    " max of the latest values of the devices of that kind that reported within that same period."
    " AQI: real-time (hourly) HJ 633-2026 from the district's air stations, as /city/aqi/districts."
    " Rain: maximum over the district's hydrology stations, as /city/rain/districts. Alerts: open now."
)


def _state_counts(by_state: Mapping[str, int]) -> dict[str, int]:
    counts: dict[str, int] = {s: by_state.get(s, 0) for s in DEVICE_STATUSES}
    return {"total": sum(counts.values()), **counts}


def _devices(per_kind: Mapping[str, Mapping[str, int]]) -> tuple[DeviceStateCounts, list[KindDeviceCounts]]:
    by_kind = [
        KindDeviceCounts(kind=k.name, title=k.title, **_state_counts(per_kind.get(k.name, {}))) for k in KINDS
    ]
    totals: dict[str, int] = {
        s: sum(per_kind.get(k.name, {}).get(s, 0) for k in KINDS) for s in DEVICE_STATUSES
    }
    return DeviceStateCounts(**_state_counts(totals)), by_kind


def _merge(counts: queries.DeviceCounts) -> dict[str, dict[str, int]]:
    merged: dict[str, dict[str, int]] = {}
    for per_kind in counts.values():
        for kind, by_state in per_kind.items():
            target = merged.setdefault(kind, dict.fromkeys(DEVICE_STATUSES, 0))
            for state, n in by_state.items():
                target[state] += n
    return merged


def _key_metrics(stats: Mapping[tuple[str, str], queries.MetricStats] | None) -> list[KeyMetricOut]:
    items = []
    for kind, metric in queries.KEY_METRICS:
        info = queries.key_metric(kind, metric)
        found = (stats or {}).get((kind, metric)) or queries.MetricStats(None, None, None, 0)
        items.append(
            KeyMetricOut(
                kind=kind,
                metric=metric,
                description=info.description,
                unit=info.unit,
                mean=found.mean,
                min=found.min,
                max=found.max,
                devices=found.devices,
            )
        )
    return items


def _alerts(by_severity: Mapping[str, int]) -> AlertCounts:
    return AlertCounts(active=sum(by_severity.values()), by_severity=dict(sorted(by_severity.items())))


def _aqi(stations: list[city_queries.AirStationHours]) -> AqiBrief:
    index = aqi_index(area_means([s.hours for s in stations]), aqi.Period.HOURLY, _STANDARD)
    return AqiBrief(
        standard="HJ633-2026",
        aqi=index.aqi,
        level=index.level,
        category_zh=index.category_zh,
        category_en=index.category_en,
        colour=index.colour,
        primary_pollutants=index.primary_pollutants,
        stations=len(stations),
        stations_reporting=sum(s.reporting for s in stations),
    )


def _rain(stations: list[city_queries.RainStation]) -> RainBrief:
    acc = rain.area_accumulations([s.rain for s in stations])
    level = acc.warning() if acc.h24 is not None else None
    category = None
    if acc.h1 is not None:
        cat = rain.hourly_category(acc.h1)
        category = RainCategoryOut(key=cat.key, name_zh=cat.name_zh, name_en=cat.name_en)
    return RainBrief(
        rain_1h_mm=acc.h1,
        rain_24h_mm=acc.h24,
        last_hour_category=category,
        warning=cast(WarningLevel, level.key) if level is not None else None,
        warning_zh=level.name_zh if level is not None else None,
    )


async def _summaries(
    conn: AsyncConn, state: ApiState, at: datetime, district: str | None
) -> tuple[list[DistrictSummary], queries.DeviceCounts, queries.KeyMetricStats, dict[str, dict[str, int]]]:
    silent = state.settings.ingest.silent_after_intervals
    counts = await queries.device_counts(conn, silent_after_intervals=silent, district=district)
    stats = await queries.key_metric_stats(conn, silent_after_intervals=silent, district=district)
    air = await city_queries.air_hourly_means(conn, end=at, district=district)
    rains = await city_queries.rain_accumulations(conn, at=at, district=district)
    alerts = await alert_queries.active_counts(conn, district)
    summaries = []
    for d in DISTRICTS if district is None else (DISTRICT_BY_SLUG[district],):
        devices, by_kind = _devices(counts.get(d.slug, {}))
        summaries.append(
            DistrictSummary(
                district=d.slug,
                name=d.name,
                population=d.population,
                devices=devices,
                devices_by_kind=by_kind,
                key_metrics=_key_metrics(stats.get(d.slug)),
                aqi=_aqi([s for s in air if s.district == d.slug]),
                rain=_rain([s for s in rains if s.district == d.slug]),
                alerts=_alerts(alerts.get(d.slug, {})),
            )
        )
    return summaries, counts, stats, alerts


async def _render_summary(state: ApiState, district: str) -> RenderedView:
    async with state_connection(state) as conn:
        at = datetime.now(tz=UTC)
        summaries, *_ = await _summaries(conn, state, at, district)
    summary = summaries[0]
    body = DistrictSummaryResponse(at=at, method=_METHOD, **summary.model_dump())
    return _rendered(body, summary.model_dump_json())


async def _render_overview(state: ApiState) -> RenderedView:
    async with state_connection(state) as conn:
        at = datetime.now(tz=UTC)
        summaries, counts, stats, alerts = await _summaries(conn, state, at, None)
    devices, by_kind = _devices(_merge(counts))
    by_severity: dict[str, int] = {}
    for per_district in alerts.values():
        for severity, n in per_district.items():
            by_severity[severity] = by_severity.get(severity, 0) + n
    body = CityOverviewResponse(
        at=at,
        method=_METHOD,
        population=sum(d.population for d in DISTRICTS),
        devices=devices,
        devices_by_kind=by_kind,
        key_metrics=_key_metrics(stats.get(None)),
        alerts=_alerts(by_severity),
        districts=summaries,
    )
    return _rendered(body, body.model_dump_json(exclude={"at"}))


def _rendered(body: BaseModel, content: str) -> RenderedView:
    # The tag covers everything but the evaluation time: a poll gets 304 while the figures stand.
    return RenderedView(body.model_dump_json().encode(), make_etag(content, weak=True))


@router.get(
    "/districts/{district}/summary",
    response_model=DistrictSummaryResponse,
    responses=NOT_MODIFIED,
    summary="One district at a glance: devices, key metrics, AQI, rain, alerts",
)
async def district_summary(
    request: Request,
    district: Annotated[str, Path(description="district slug", examples=["futian"])],
    state: State,
) -> Response:
    """Shared by every screen polling it: at most api.shared_view_max_age_ms older than the data,
    or 10 render times for a view slow to render (api.shared_view_render_share). Sends a weak ETag that ignores ``at``; If-None-Match naming it gets 304 while nothing changed."""
    check_district(district)
    view = await state.views.get(("summary", district), lambda: _render_summary(state, district))
    return answer(request, view.body, view.etag)


@router.get(
    "/overview",
    response_model=CityOverviewResponse,
    responses=NOT_MODIFIED,
    summary="The whole city at a glance, with every district's summary",
)
async def city_overview(request: Request, state: State) -> Response:
    """Shared like the district summary: at most api.shared_view_max_age_ms older than the data,
    or 10 render times for a view slow to render (api.shared_view_render_share)."""
    view = await state.views.get(("overview",), lambda: _render_overview(state))
    return answer(request, view.body, view.etag)
