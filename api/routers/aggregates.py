"""GET /aggregates: bucketed avg/min/max/count/sum/percentiles across the city, a district or a device."""

from __future__ import annotations

import math
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Response

from api.deps import ApiConfig, Conn, State, Window, catalog_kind, check_district
from api.errors import BadRequest, device_not_found
from api.fastjson import OrjsonResponse
from api.models import Agg, AggregateResponse, Fill, GroupBy
from api.queries import devices as device_queries
from api.queries.aggregates import AggregateQuery, choose_source, gapfill_usable, run_aggregate
from api.routers import ERRORS
from api.timeparse import parse_bucket

router = APIRouter(tags=["aggregates"], responses=ERRORS)


@router.get("/aggregates", response_model=AggregateResponse, summary="Time-bucketed aggregates of one metric")
async def aggregates(
    state: State,
    config: ApiConfig,
    conn: Conn,
    window: Window,
    kind: Annotated[str, Query(description="device kind from the catalog", examples=["air_station"])],
    metric: Annotated[str, Query(description="metric of that kind", examples=["pm25"])],
    bucket: Annotated[
        str, Query(description="bucket width: <n>s, <n>m, <n>h or <n>d", examples=["15m", "1h", "1d"])
    ] = "1h",
    agg: Annotated[
        Agg,
        Query(
            description="aggregate function; pNN is the continuous percentile (percentile_cont) of the"
            " raw readings in the bucket, always read from the raw table"
        ),
    ] = "avg",
    district: Annotated[
        str | None, Query(description="only devices of this district", examples=["futian"])
    ] = None,
    device_id: Annotated[str | None, Query(description="only this device")] = None,
    group_by: Annotated[GroupBy | None, Query(description="one series per district or per device")] = None,
    fill: Annotated[
        Fill,
        Query(
            description="empty buckets: none leaves them out; null, zero, or previous (the last value"
            " before the gap in the window; null before the first)"
        ),
    ] = "none",
    source: Annotated[
        Literal["auto", "raw"],
        Query(
            description="auto: continuous aggregates when they give the exact answer; raw: always the"
            " readings table (sees late data an aggregate has not refreshed yet)"
        ),
    ] = "auto",
) -> Response:
    """Buckets start at multiples of the width from 2000-01-01T00:00:00Z; empty buckets are omitted
    unless ``fill`` is given. More than api.max_buckets buckets is a 400 naming the limit."""
    catalog = catalog_kind(kind)
    found = catalog.metric_by_name.get(metric)
    if found is None:
        raise BadRequest(
            f"kind {kind} has no metric {metric!r}; known: {', '.join(catalog.metric_names)}",
            code="unknown_metric",
        )
    try:
        width = parse_bucket(bucket)
    except ValueError as exc:
        raise BadRequest(str(exc), code="invalid_bucket") from None
    buckets = math.ceil((window.end - window.start) / width)
    if buckets > config.max_buckets:
        raise BadRequest(
            f"(to - from) / bucket is {buckets} buckets, above the limit of {config.max_buckets}:"
            " ask for a shorter range or a wider bucket",
            code="too_many_buckets",
        )
    if district is not None:
        check_district(district)
    if device_id is not None:
        device_kind = await device_queries.device_kind(conn, device_id)
        if device_kind is None:
            raise device_not_found(device_id)
        if device_kind != kind:
            raise BadRequest(f"device {device_id!r} is a {device_kind}, not a {kind}", code="kind_mismatch")
    query = AggregateQuery(
        kind=catalog,
        metric=found,
        agg=agg,
        bucket=width,
        start=window.start,
        end=window.end,
        district=district,
        device_id=device_id,
        group_by=group_by,
        fill=fill,
    )
    table = catalog.table
    features = await state.database_features(conn)
    if source == "auto":
        table = choose_source(query, features.continuous_aggregates)
    use_gapfill = gapfill_usable(query, features.info.has_timescaledb)
    series = await run_aggregate(conn, query, table, use_gapfill=use_gapfill)
    body = {
        "kind": kind,
        "metric": metric,
        "unit": found.unit,
        "agg": agg,
        "bucket": bucket,
        "bucket_seconds": int(width.total_seconds()),
        # The published names (AggregateResponse's serialization aliases): this body skips the model.
        "from": window.start,
        "to": window.end,
        "district": district,
        "device_id": device_id,
        "group_by": group_by,
        "fill": fill,
        "source": table,
        "series": series,
    }
    return OrjsonResponse(body)
