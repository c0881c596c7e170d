"""GET /map/positions, /map/states, /map/density: what a map of the whole city needs, compactly.

- positions: every device's id, kind, district and place as columns, fetched once (ETag);
- states: the devices not online, then only changes with ``since=`` (a 304 while none);
- density: devices per grid cell, counted in the database, for a city too big to draw dot by dot.

Large answers are gzip-compressed when the client accepts it (positions compress about 5:1).
"""

from __future__ import annotations

import gzip
from collections import OrderedDict
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from api.deps import State, catalog_kind, state_connection
from api.errors import BadRequest
from api.etag import NOT_MODIFIED, make_etag, matches, not_modified, validator_headers
from api.fastjson import dumps
from api.models_map import DensityResponse, PositionsResponse, StatesResponse
from api.queries import devicemap as queries
from api.routers import ERRORS
from api.routers.devices import _bbox
from api.state import ApiState
from api.viewcache import FingerprintCache, RenderedView

router = APIRouter(prefix="/map", tags=["map"], responses=ERRORS)

# More devices than this in one positions answer (about 40 MB of JSON) is refused: ask for a bbox
# or for density bins instead.
MAX_POSITIONS = 1_000_000
# Bodies smaller than this are not worth compressing (an unchanged states poll is a few bytes).
_GZIP_MIN_BYTES = 1024
_GZIP_LEVEL = 5
_gzipped: OrderedDict[str, bytes] = OrderedDict()
_GZIP_KEEP = 16
# Rendered positions by filter, kept while the registry tag stands: building 100 k positions
# costs about a second, checking the tag a few milliseconds.
_positions = FingerprintCache(max_entries=16)

KindParam = Annotated[str | None, Query(description="only this device kind", examples=["smart_pole"])]
BboxParam = Annotated[
    str | None,
    Query(description="min_lon,min_lat,max_lon,max_lat (degrees)", examples=["113.9,22.5,114.1,22.6"]),
]


def _filter(kind: str | None, bbox: str | None) -> queries.MapFilter:
    if kind is not None:
        catalog_kind(kind)
    return queries.MapFilter(kind=kind, bbox=_bbox(bbox) if bbox is not None else None)


def _compressed(etag: str, body: bytes) -> bytes:
    found = _gzipped.get(etag)
    if found is None:
        found = _gzipped[etag] = gzip.compress(body, _GZIP_LEVEL, mtime=0)
        while len(_gzipped) > _GZIP_KEEP:
            _gzipped.popitem(last=False)
    return found


def _answer(request: Request, view: RenderedView) -> Response:
    if matches(request, view.etag):
        return not_modified(view.etag)
    headers = {**validator_headers(view.etag), "Vary": "Accept-Encoding"}
    body = view.body
    if len(body) >= _GZIP_MIN_BYTES and "gzip" in request.headers.get("accept-encoding", ""):
        body = _compressed(view.etag, body)
        headers["Content-Encoding"] = "gzip"
    return Response(body, media_type="application/json", headers=headers)


@router.get(
    "/positions",
    response_model=PositionsResponse,
    responses=NOT_MODIFIED,
    summary="Every device's id, kind, district and position as columns (fetch once)",
)
async def positions(
    request: Request,
    state: State,
    kind: KindParam = None,
    bbox: BboxParam = None,
    max_devices: Annotated[
        int,
        Query(
            alias="max",
            ge=1,
            le=MAX_POSITIONS,
            description="answer 400 too_many_devices instead when more devices than this match",
        ),
    ] = MAX_POSITIONS,
) -> Response:
    """Columns in device id order. Sends an ETag that moves only when the registry changes. More
    than ``max`` (at most 1,000,000) devices is a 400 (narrow with ``bbox`` or use /map/density)."""
    where = _filter(kind, bbox)
    view = await state.views.get(
        ("map-positions", kind, bbox, max_devices), lambda: _render_positions(state, where, max_devices)
    )
    return _answer(request, view)


async def _render_positions(state: ApiState, where: queries.MapFilter, limit: int) -> RenderedView:
    async with state_connection(state) as conn:
        _, registry = await queries.registry_tag(conn)
        key = ("positions", where, limit)
        cached = _positions.get(key, registry)
        if cached is not None:
            return RenderedView(cached, make_etag("positions", registry, where))
        columns = await queries.positions(conn, where, limit)
    if columns is None:
        raise BadRequest(
            f"more than {limit} devices match: narrow with bbox or kind, or use /map/density",
            code="too_many_devices",
        )
    head = dumps(
        {
            "registry": registry,
            "count": columns.count,
            "unplaced": columns.unplaced,
            "scale": queries.POSITION_SCALE,
            "kinds": queries.KIND_NAMES,
            "districts": queries.DISTRICT_SLUGS,
        }
    )
    body = b"".join(
        (
            head[:-1],
            b',"id":',
            columns.ids.encode(),
            b',"kind":',
            columns.kinds.encode(),
            b',"district":',
            columns.districts.encode(),
            b',"lat":',
            columns.lats.encode(),
            b',"lon":',
            columns.lons.encode(),
            b"}",
        )
    )
    _positions.put(key, registry, body)
    # The registry tag alone would do for the unfiltered city; the filter is part of the resource.
    return RenderedView(body, make_etag("positions", registry, where))


@router.get(
    "/states",
    response_model=StatesResponse,
    responses=NOT_MODIFIED,
    summary="Devices not online, then only the changes since a version (poll with since=)",
)
async def states(
    request: Request,
    state: State,
    since: Annotated[
        int | None,
        Query(ge=0, description="version of the previous answer; omit for every device not online"),
    ] = None,
    bbox: Annotated[
        str | None,
        Query(
            description="min_lon,min_lat,max_lon,max_lat: only the devices in this view, always as a"
            " reset (poll it with If-None-Match); not with since=",
            examples=["114.05,22.53,114.07,22.55"],
        ),
    ] = None,
) -> Response:
    """First call without ``since``: every device that is not online (the others are). Then pass the
    answer's ``version`` as ``since``: only devices whose state changed, each with its current
    state; with If-None-Match, 304 while nothing changed. States are re-read at most once per
    api.shared_view_max_age_ms for all clients together.

    With ``bbox`` (a map zoomed in on a city too big for one list, such as the 1:1 city): the
    devices of that view not online, counted in the database for the view alone; ``version`` is 0
    and ``registry`` empty (the answer is always whole: poll it with If-None-Match)."""
    silent = state.settings.ingest.silent_after_intervals
    if bbox is not None:
        if since is not None:
            raise BadRequest(
                "since= and bbox= do not combine: a bbox answer is always whole", code="invalid_query"
            )
        return _answer(request, await _view_states(state, _filter(None, bbox), bbox, silent))

    async def take() -> tuple[dict[str, str], int, str]:
        async with state_connection(state) as conn:
            devices, registry = await queries.registry_tag(conn)
            return await queries.not_online(conn, silent), devices, registry

    await state.device_states.refresh(take, state.settings.api.shared_view_max_age_ms / 1000)
    found = state.device_states.since(since)
    ids = sorted(found.changes)
    body = dumps(
        {
            "version": found.version,
            "reset": found.reset,
            "registry": found.registry,
            "devices": found.devices,
            "default_status": "online",
            "ids": ids,
            "status": [found.changes[i] for i in ids],
        }
    )
    return _answer(request, RenderedView(body, make_etag(body)))


async def _view_states(state: ApiState, where: queries.MapFilter, bbox: str, silent: float) -> RenderedView:
    async def render() -> RenderedView:
        async with state_connection(state) as conn:
            found, devices = await queries.not_online_in(conn, where, silent)
        ids = sorted(found)
        body = dumps(
            {
                "version": 0,
                "reset": True,
                "registry": "",
                "devices": devices,
                "default_status": "online",
                "ids": ids,
                "status": [found[i] for i in ids],
            }
        )
        return RenderedView(body, make_etag(body))

    return await state.views.get(("map-states", bbox), render)


@router.get(
    "/density",
    response_model=DensityResponse,
    responses=NOT_MODIFIED,
    summary="Devices per grid cell, counted in the database (for maps of very large cities)",
)
async def density(
    request: Request,
    state: State,
    cell_deg: Annotated[
        float, Query(ge=0.001, le=1.0, description="cell edge in degrees (0.01 deg is about 1.1 km)")
    ] = 0.01,
    kind: KindParam = None,
    bbox: BboxParam = None,
) -> Response:
    """Cells with at least one device; ``down`` counts those offline or silent. ETag: 304 while
    the counts stand."""
    where = _filter(kind, bbox)
    silent = state.settings.ingest.silent_after_intervals

    async def render() -> RenderedView:
        async with state_connection(state) as conn:
            bins = await queries.density(conn, where, cell_deg, silent)
        body = dumps(
            {
                "cell_deg": cell_deg,
                "devices": sum(bins.n),
                "x": bins.x,
                "y": bins.y,
                "n": bins.n,
                "down": bins.down,
            }
        )
        return RenderedView(body, make_etag(body))

    view = await state.views.get(("map-density", cell_deg, kind, bbox), render)
    return _answer(request, view)
