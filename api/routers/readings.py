"""GET /devices/{device_id}/readings (raw history) and GET /latest (live view of many devices)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated

import orjson
from fastapi import APIRouter, Path, Query, Request, Response

from api.cursors import decode_cursor, encode_cursor
from api.db import AsyncConn
from api.deps import Conn, Cursor, PageLimit, State, Window, catalog_kind, check_district, parse_time
from api.errors import BadRequest, device_not_found
from api.etag import NOT_MODIFIED, make_etag, matches, not_modified, validator_headers
from api.fastjson import OrjsonResponse, dumps
from api.models import LatestPage, ReadingPage
from api.queries import devices as device_queries
from api.queries.readings import device_readings, latest_readings, latest_state
from api.routers import ERRORS
from api.state import ApiState
from api.timeparse import from_epoch_us, to_epoch_us
from cityneuron.catalog import Kind, Metric

router = APIRouter(tags=["readings"], responses=ERRORS)

# How far next_since trails the database clock. received_at is stamped by the ingest when a
# message arrives and committed up to one flush later, possibly by another host: the margin covers
# the flush interval plus the clock skew NTP keeps hosts within (well under a second, 5 s allowed).
CLOCK_SKEW_ALLOWANCE = timedelta(seconds=5)

_TIME_CURSOR = "t"


def _metrics(kind: Kind, metric: str | None) -> tuple[Metric, ...]:
    if metric is None:
        return kind.metrics
    found = kind.metric_by_name.get(metric)
    if found is None:
        raise BadRequest(
            f"kind {kind.name} has no metric {metric!r}; known: {', '.join(kind.metric_names)}",
            code="unknown_metric",
        )
    return (found,)


def _after(cursor: str | None) -> datetime | None:
    if cursor is None:
        return None
    value = decode_cursor(cursor, _TIME_CURSOR)
    try:
        return from_epoch_us(int(value))
    except (ValueError, OverflowError):
        raise BadRequest(
            "cursor is not valid: pass next_cursor from the previous page", code="bad_cursor"
        ) from None


@router.get("/devices/{device_id}/readings", response_model=ReadingPage, summary="Raw readings of a device")
async def readings(
    conn: Conn,
    device_id: Annotated[str, Path(description="device id", examples=["air-futian-00001"])],
    window: Window,
    limit: PageLimit,
    cursor: Cursor = None,
    metric: Annotated[
        str | None,
        Query(description="one metric of the device's kind; all metrics when absent", examples=["pm25"]),
    ] = None,
) -> ReadingPage:
    """Readings in [from, to), oldest first; with ``metric``, only readings that carried it."""
    kind_name = await device_queries.device_kind(conn, device_id)
    if kind_name is None:
        raise device_not_found(device_id)
    kind = catalog_kind(kind_name)
    metrics = _metrics(kind, metric)
    items, more = await device_readings(
        conn,
        kind=kind,
        device_id=device_id,
        metrics=metrics,
        start=window.start,
        end=window.end,
        after=_after(cursor),
        limit=limit,
    )
    next_cursor = encode_cursor(_TIME_CURSOR, str(to_epoch_us(items[-1].time))) if more and items else None
    return ReadingPage(
        device_id=device_id,
        kind=kind.name,
        start=window.start,
        end=window.end,
        units={m.name: m.unit for m in metrics},
        items=items,
        next_cursor=next_cursor,
    )


@router.get(
    "/latest",
    response_model=LatestPage,
    responses=NOT_MODIFIED,
    summary="Latest values of every device of a kind (in a district), for polling",
)
async def latest_of_kind(
    request: Request,
    state: State,
    conn: Conn,
    kind: Annotated[str, Query(description="device kind from the catalog", examples=["smart_pole"])],
    district: Annotated[str | None, Query(description="district slug", examples=["futian"])] = None,
    since: Annotated[
        str | None,
        Query(
            description="next_since of the previous poll (RFC 3339 or epoch ms): only devices whose"
            " latest reading was received after it",
            examples=["2026-03-01T07:59:55Z"],
        ),
    ] = None,
) -> Response:
    """One call for a dashboard tile. Poll with ``since`` for changes only, and send the ETag back
    in If-None-Match to get 304 (no body, no reading fetched) while nothing changed."""
    catalog_kind(kind)
    if district is not None:
        check_district(district)
    after = parse_time("since", since) if since is not None else None
    # The fingerprint is read before the rows: a change committed in between makes the next poll
    # miss the tag and fetch again, never the other way round.
    fingerprint = await latest_state(conn, kind=kind, district=district)
    etag = make_etag("latest", kind, district, fingerprint.fingerprint())
    if matches(request, etag):
        return not_modified(etag)
    items = await _latest_items(state, conn, kind, district, after, fingerprint.fingerprint())
    flush = timedelta(milliseconds=state.settings.ingest.flush_interval_ms)
    page = {
        "kind": kind,
        "district": district,
        "since": after,
        "next_since": fingerprint.db_now - flush - CLOCK_SKEW_ALLOWANCE,
        "devices": fingerprint.devices,
        "items": orjson.Fragment(items),
    }
    return OrjsonResponse(page, headers=validator_headers(etag))


async def _latest_items(
    state: ApiState,
    conn: AsyncConn,
    kind: str,
    district: str | None,
    since: datetime | None,
    fingerprint: str,
) -> bytes:
    """The items of /latest as JSON; the full view (no ``since``) is reused while its
    fingerprint stands: many screens polling one district fetch and serialise its rows once per
    change rather than once per poll."""
    if since is not None:
        return dumps(await latest_readings(conn, kind=kind, district=district, since=since))
    key = (kind, district)
    items = state.latest_items.get(key, fingerprint)
    if items is None:
        items = dumps(await latest_readings(conn, kind=kind, district=district, since=None))
        state.latest_items.put(key, fingerprint, items)
    return items
