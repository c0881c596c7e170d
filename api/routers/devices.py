"""GET /devices, /devices/{device_id}, /devices/{device_id}/latest."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query

from api.cursors import decode_cursor, encode_cursor
from api.deps import Conn, Cursor, PageLimit, catalog_kind, check_district
from api.errors import NotFound, device_not_found
from api.models import DeviceDetail, DevicePage, LatestReading
from api.queries import devices as queries
from api.routers import ERRORS

router = APIRouter(prefix="/devices", tags=["devices"], responses=ERRORS)

DeviceId = Annotated[str, Path(description="device id", examples=["aq-futian-001"])]
_DEVICE_CURSOR = "d"


@router.get("", response_model=DevicePage, summary="List devices of the registry")
async def list_devices(
    conn: Conn,
    limit: PageLimit,
    cursor: Cursor = None,
    kind: Annotated[
        str | None, Query(description="device kind from the catalog", examples=["air_station"])
    ] = None,
    district: Annotated[str | None, Query(description="district slug", examples=["futian"])] = None,
) -> DevicePage:
    """Devices ordered by id, optionally of one kind and/or district; page with ``next_cursor``."""
    if kind is not None:
        catalog_kind(kind)
    if district is not None:
        check_district(district)
    after = decode_cursor(cursor, _DEVICE_CURSOR) if cursor is not None else None
    items, more = await queries.list_devices(conn, kind=kind, district=district, after=after, limit=limit)
    next_cursor = encode_cursor(_DEVICE_CURSOR, items[-1].device_id) if more and items else None
    return DevicePage(items=items, next_cursor=next_cursor)


@router.get("/{device_id}", response_model=DeviceDetail, summary="One device: registry, status, last seen")
async def get_device(conn: Conn, device_id: DeviceId) -> DeviceDetail:
    device = await queries.get_device(conn, device_id)
    if device is None:
        raise device_not_found(device_id)
    return device


@router.get("/{device_id}/latest", response_model=LatestReading, summary="Latest values with units")
async def latest(conn: Conn, device_id: DeviceId) -> LatestReading:
    reading = await queries.latest_reading(conn, device_id)
    if reading is not None:
        return reading
    if await queries.device_kind(conn, device_id) is None:
        raise device_not_found(device_id)
    raise NotFound(f"device {device_id!r} has sent no reading yet", code="no_reading")
