"""GET /devices, /devices/{device_id}, /devices/{device_id}/latest."""

from __future__ import annotations

import math
from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, Response

from api.cursors import decode_cursor, encode_cursor
from api.deps import (
    Conn,
    Cursor,
    PageLimit,
    State,
    catalog_kind,
    check_district,
    request_state,
    state_connection,
)
from api.errors import BadRequest, NotFound, device_not_found
from api.etag import NOT_MODIFIED, answer, make_etag
from api.fastjson import dumps
from api.models import DeviceDetail, DevicePage, LatestReading, Status
from api.queries import devices as queries
from api.queries.readings import latest_reading
from api.routers import ERRORS
from api.state import ApiState
from api.viewcache import RenderedView

router = APIRouter(prefix="/devices", tags=["devices"], responses=ERRORS)

DeviceId = Annotated[str, Path(description="device id", examples=["air-futian-00001"])]

_DEVICE_CURSOR = "d"


def _bbox(text: str) -> queries.BoundingBox:
    parts = text.split(",")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        raise BadRequest(
            f"bbox {text!r} must be four numbers: min_lon,min_lat,max_lon,max_lat", code="invalid_bbox"
        )
    box = queries.BoundingBox(*values)
    if not (-180 <= box.min_lon <= box.max_lon <= 180 and -90 <= box.min_lat <= box.max_lat <= 90):
        raise BadRequest(
            f"bbox {text!r}: need -180 <= min_lon <= max_lon <= 180 and -90 <= min_lat <= max_lat <= 90",
            code="invalid_bbox",
        )
    return box


@router.get("", response_model=DevicePage, summary="List devices of the registry")
async def list_devices(
    state: State,
    conn: Conn,
    limit: PageLimit,
    cursor: Cursor = None,
    kind: Annotated[
        str | None, Query(description="device kind from the catalog", examples=["air_station"])
    ] = None,
    district: Annotated[str | None, Query(description="district slug", examples=["futian"])] = None,
    status: Annotated[
        Status | None,
        Query(description="only devices in this state (see Device.status)", examples=["silent"]),
    ] = None,
    bbox: Annotated[
        str | None,
        Query(
            description="WGS 84 bounding box min_lon,min_lat,max_lon,max_lat (degrees, edges included)",
            examples=["113.9,22.5,114.1,22.6"],
        ),
    ] = None,
) -> DevicePage:
    """Devices ordered by id, filtered by kind, district, status and/or area; page with ``next_cursor``."""
    if kind is not None:
        catalog_kind(kind)
    if district is not None:
        check_district(district)
    where = queries.DeviceFilter(
        kind=kind, district=district, status=status, bbox=_bbox(bbox) if bbox is not None else None
    )
    after = decode_cursor(cursor, _DEVICE_CURSOR) if cursor is not None else None
    items, more = await queries.list_devices(
        conn,
        where=where,
        silent_after_intervals=state.settings.ingest.silent_after_intervals,
        after=after,
        limit=limit,
    )
    next_cursor = encode_cursor(_DEVICE_CURSOR, items[-1].device_id) if more and items else None
    return DevicePage(items=items, next_cursor=next_cursor)


@router.get(
    "/{device_id}",
    response_model=DeviceDetail,
    summary="One device: registry, status, last seen, data quality",
)
async def get_device(state: State, conn: Conn, device_id: DeviceId) -> DeviceDetail:
    device = await queries.get_device(
        conn, device_id, silent_after_intervals=state.settings.ingest.silent_after_intervals
    )
    if device is None:
        raise device_not_found(device_id)
    return device


@router.get(
    "/{device_id}/latest",
    response_model=LatestReading,
    responses=NOT_MODIFIED,
    summary="Latest values with units",
)
async def latest(request: Request, device_id: DeviceId) -> Response:
    """Shared by every screen polling the device: at most api.latest_max_age_ms older than the data.
    Sends an ETag; with If-None-Match naming it, 304 until the device reports again."""
    # No State/Conn dependencies: the dashboards' most polled route (see api/deps.py).
    state = request_state(request)
    view = await state.device_views.get(("latest", device_id), lambda: _render_latest(state, device_id))
    return answer(request, view.body, view.etag)


async def _render_latest(state: ApiState, device_id: str) -> RenderedView:
    async with state_connection(state) as conn:
        reading = await latest_reading(conn, device_id)
        if reading is None:
            registered = await queries.device_kind(conn, device_id) is not None
    if reading is None:
        if not registered:
            raise device_not_found(device_id)
        raise NotFound(f"device {device_id!r} has sent no reading yet", code="no_reading")
    etag = make_etag(device_id, reading["received_at"].isoformat(), reading["seq"], reading["time"])
    return RenderedView(dumps(reading), etag)
