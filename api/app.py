"""The FastAPI application: built from a Settings, with its pool managed by the lifespan."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from fastapi import FastAPI

from api.auth import install_security
from api.db import build_pool, pooled_connection
from api.docs_ui import install_docs
from api.errors import ApiError, install_error_handlers
from api.live.acks import AckRecorder
from api.live.broker import BrokerLink
from api.metrics import install_metrics
from api.routers import (
    admin,
    aggregates,
    alerts,
    catalog,
    city,
    city_air,
    commands,
    devicemap,
    devices,
    health,
    overview,
    readings,
    streams,
)
from api.screen import install_screen
from api.state import ApiState
from api.viewcache import ViewCache
from cityneuron import __version__
from cityneuron.settings import Settings

log = logging.getLogger("cityneuron.api")

_DESCRIPTION = """Devices, readings and aggregates of the CityNeuron sensor network.

Times are RFC 3339 with a time zone in responses; `from`/`to` accept RFC 3339 or epoch milliseconds
and form the half-open window [from, to). Errors are `{"error": {"code": ..., "message": ...}}`.
Live data: `GET /stream` (Server-Sent Events) and the WebSocket `/ws`, described under the
streams tag.
"""


def _lifespan(settings: Settings) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool = build_pool(settings.database)
        # wait=False: the API starts (and /health tells why) even when the database is down.
        await pool.open(wait=False)
        state = ApiState(
            settings=settings,
            pool=pool,
            views=ViewCache(
                settings.api.shared_view_max_age_ms / 1000,
                keep_warm_s=settings.api.shared_view_keep_warm_s,
                render_share=settings.api.shared_view_render_share,
            ),
            device_views=ViewCache(
                settings.api.latest_max_age_ms / 1000, max_entries=settings.api.latest_cache_devices
            ),
        )
        app.state.api = state
        # The broker link connects in the background: a broker that is down delays only the
        # streams and commands, which answer 503 or "disconnected" until it is back.
        acks = AckRecorder(pool, settings.database.connect_timeout_s)
        state.broker = BrokerLink(settings.mqtt, state.hub, acks)
        state.broker.start(asyncio.get_running_loop())
        try:
            async with pooled_connection(pool, settings.database.connect_timeout_s) as conn:
                await state.database_features(conn)
        except ApiError as exc:
            log.warning("database not ready at startup (%s); features detected on first use", exc.message)
        try:
            yield
        finally:
            await asyncio.to_thread(state.broker.stop)
            await acks.drain()
            await pool.close()

    return lifespan


def create_app(settings: Settings) -> FastAPI:
    """The API application for ``settings``; nothing connects until the lifespan starts."""
    app = FastAPI(
        title="CityNeuron API",
        version=__version__,
        description=_DESCRIPTION,
        lifespan=_lifespan(settings),
        # WebSocket routes have no OpenAPI path: /ws is described with its tag.
        openapi_tags=[streams.OPENAPI_TAG],
        # /docs is served from the package (api/docs_ui.py); ReDoc would need a CDN.
        docs_url=None,
        redoc_url=None,
    )
    install_error_handlers(app)
    # API keys, rate limits, body size limit and the CORS allow-list (see api/auth.py).
    install_security(app, settings.api)
    # Outermost middleware: counts and times every answer, refusals included.
    install_metrics(app)
    for module in (
        health,
        devices,
        readings,
        aggregates,
        city_air,
        city,
        overview,
        admin,
        alerts,
        commands,
        streams,
    ):
        app.include_router(module.router)
    # The catalog, the map feeds and the operations screen (docs/screen.md).
    app.include_router(catalog.router)
    app.include_router(devicemap.router)
    install_screen(app)
    install_docs(app)
    return app
