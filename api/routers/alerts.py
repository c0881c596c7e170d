"""GET /alerts: active and historical alerts raised by the ingest's rules."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Path, Query

from api import listparams
from api.cursors import decode_time_key, encode_time_key
from api.deps import Conn, Cursor, PageLimit
from api.errors import BadRequest, NotFound
from api.models_ops import AlertOut, AlertPage, AlertState
from api.queries import alerts as queries
from api.routers import ERRORS
from api.timeparse import parse_instant

router = APIRouter(prefix="/alerts", tags=["alerts"], responses=ERRORS)

_CURSOR = "alert"


def _instant(name: str, value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        return parse_instant(value)
    except ValueError as exc:
        raise BadRequest(f"{name}: {exc}", code="invalid_time") from None


def _decode(cursor: str) -> tuple[datetime, int]:
    opened_at, alert_id = decode_time_key(cursor, _CURSOR)
    if not alert_id.isdigit():
        raise BadRequest("cursor is not valid: pass next_cursor from the previous page", code="bad_cursor")
    return opened_at, int(alert_id)


@router.get("", response_model=AlertPage, summary="Alerts, newest first, filtered")
async def list_alerts(
    conn: Conn,
    limit: PageLimit,
    cursor: Cursor = None,
    state: Annotated[AlertState, Query(description="active (open), closed or all")] = "all",
    district: Annotated[
        list[str] | None, Query(description="district slug(s); repeat or comma-separate", examples=["futian"])
    ] = None,
    kind: Annotated[list[str] | None, Query(description="device kind(s)", examples=["air_station"])] = None,
    device: Annotated[list[str] | None, Query(description="device id(s)")] = None,
    rule: Annotated[
        list[str] | None, Query(description="rule name(s)", examples=["pm25_iaqi_over_100"])
    ] = None,
    severity: Annotated[list[str] | None, Query(description="severity(ies)", examples=["critical"])] = None,
    from_: Annotated[
        str | None,
        Query(
            alias="from",
            description="only alerts still open at or after this time (RFC 3339 or epoch ms)",
            examples=["2026-03-01T00:00:00+08:00"],
        ),
    ] = None,
    to: Annotated[
        str | None,
        Query(description="only alerts opened before this time (RFC 3339 or epoch ms)"),
    ] = None,
) -> AlertPage:
    """With from/to: the alerts that were open at some time in [from, to)."""
    start, end = _instant("from", from_), _instant("to", to)
    if start is not None and end is not None and start >= end:
        raise BadRequest("from must be earlier than to", code="invalid_time")
    flt = queries.AlertFilter(
        state=state,
        districts=listparams.districts(district),
        kinds=listparams.kinds(kind),
        devices=listparams.split_values(device, name="device"),
        rules=listparams.split_values(rule, name="rule"),
        severities=listparams.split_values(severity, name="severity"),
        start=start,
        end=end,
    )
    before = _decode(cursor) if cursor is not None else None
    items, more = await queries.list_alerts(conn, flt, before=before, limit=limit)
    next_cursor = None
    if more and items:
        last = items[-1]
        next_cursor = encode_time_key(_CURSOR, last.opened_at, last.id)
    return AlertPage(items=items, next_cursor=next_cursor)


@router.get("/{alert_id}", response_model=AlertOut, summary="One alert")
async def get_alert(alert_id: Annotated[int, Path(ge=1, le=2**63 - 1)], conn: Conn) -> AlertOut:
    alert = await queries.get_alert(conn, alert_id)
    if alert is None:
        raise NotFound(f"no alert {alert_id}", code="alert_not_found")
    return alert
