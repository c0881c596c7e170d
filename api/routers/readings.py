"""GET /devices/{device_id}/readings: raw readings between two times."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Path, Query

from api.cursors import decode_cursor, encode_cursor
from api.deps import Conn, Cursor, PageLimit, Window, catalog_kind
from api.errors import BadRequest, device_not_found
from api.models import ReadingPage
from api.queries import devices as device_queries
from api.queries.readings import device_readings
from api.routers import ERRORS
from api.timeparse import from_epoch_us, to_epoch_us
from cityneuron.catalog import Kind, Metric

router = APIRouter(prefix="/devices", tags=["readings"], responses=ERRORS)

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


@router.get("/{device_id}/readings", response_model=ReadingPage, summary="Raw readings of a device")
async def readings(
    conn: Conn,
    device_id: Annotated[str, Path(description="device id", examples=["aq-futian-001"])],
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
