"""What the city routes have in common: their query parameters, and how an answer is served.

Without ``at`` a city view is the city *now*, asked by every screen of the operations centre every
few seconds: it is a shared view like the overview (api.viewcache, ``state.views``), rendered once
per api.shared_view_max_age_ms (or spaced out by api.shared_view_render_share) per route and
parameters. With ``at`` it is a historical question, asked rarely and each time differently: it is
answered by its own queries.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable
from datetime import UTC, datetime
from typing import Annotated

from fastapi import Depends, Query, Request, Response
from pydantic import BaseModel

from api.db import AsyncConn
from api.deps import check_district, state_connection
from api.errors import BadRequest
from api.etag import answer, make_etag
from api.state import ApiState
from api.timeparse import parse_instant
from api.viewcache import RenderedView
from cityneuron.catalog import DISTRICTS, District

# One view's answer as of an instant, from its queries on one connection.
Build = Callable[[AsyncConn, datetime], Awaitable[BaseModel]]


async def _at(
    at: Annotated[
        str | None,
        Query(
            description="evaluate as of this time: RFC 3339 with time zone or epoch ms; default now"
            " (then the answer is shared between clients, at most api.shared_view_max_age_ms old)",
            examples=["2026-03-01T08:00:00+08:00", "1772323200000"],
        ),
    ] = None,
) -> datetime | None:
    if at is None:
        return None
    try:
        return parse_instant(at)
    except ValueError as exc:
        raise BadRequest(f"at: {exc}", code="invalid_time") from None


# The instant asked for, None for now.
At = Annotated[datetime | None, Depends(_at)]
DistrictParam = Annotated[str | None, Query(description="only this district", examples=["futian"])]


def districts(district: str | None) -> tuple[District, ...]:
    """Every district, or the one asked for (400 when it is unknown)."""
    if district is None:
        return DISTRICTS
    check_district(district)
    return tuple(d for d in DISTRICTS if d.slug == district)


def rendered(body: BaseModel) -> RenderedView:
    """The answer's bytes with a weak ETag over everything but ``at`` (the evaluation time moves
    on every render): a dashboard polling with If-None-Match gets 304 while the figures stand."""
    content = body.model_dump_json(exclude={"at"})
    return RenderedView(body.model_dump_json().encode(), make_etag(content, weak=True))


async def _render(state: ApiState, build: Build, at: datetime | None) -> RenderedView:
    async with state_connection(state) as conn:
        # "Now" once the connection is ours: a wait for the pool does not age the answer.
        body = await build(conn, at if at is not None else datetime.now(tz=UTC))
    return rendered(body)


async def serve(
    request: Request, state: ApiState, key: tuple[Hashable, ...], at: datetime | None, build: Build
) -> Response:
    """The view ``build`` makes, as of ``at``; without ``at`` the shared one under ``key``, which
    must name the route and every parameter that changes the answer."""
    if at is None:
        view = await state.views.get(key, lambda: _render(state, build, None))
    else:
        view = await _render(state, build, at)
    return answer(request, view.body, view.etag)
