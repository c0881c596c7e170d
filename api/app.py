"""The FastAPI application: built from a Settings, with its pool managed by the lifespan."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from api.db import build_pool, pooled_connection
from api.errors import ApiError, install_error_handlers
from api.routers import aggregates, city, devices, health, readings
from api.state import ApiState
from cityneuron import __version__
from cityneuron.settings import Settings

log = logging.getLogger("cityneuron.api")

_DESCRIPTION = """Devices, readings and aggregates of the CityNeuron sensor network.

Times are RFC 3339 with a time zone in responses; `from`/`to` accept RFC 3339 or epoch milliseconds
and form the half-open window [from, to). Errors are `{"error": {"code": ..., "message": ...}}`.
"""


def _lifespan(settings: Settings) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool = build_pool(settings.database)
        # wait=False: the API starts (and /health tells why) even when the database is down.
        await pool.open(wait=False)
        state = ApiState(settings=settings, pool=pool)
        app.state.api = state
        try:
            async with pooled_connection(pool, settings.database.connect_timeout_s) as conn:
                await state.database_features(conn)
        except ApiError as exc:
            log.warning("database not ready at startup (%s); features detected on first use", exc.message)
        try:
            yield
        finally:
            await pool.close()

    return lifespan


def create_app(settings: Settings) -> FastAPI:
    """The API application for ``settings``; nothing connects until the lifespan starts."""
    app = FastAPI(
        title="CityNeuron API",
        version=__version__,
        description=_DESCRIPTION,
        lifespan=_lifespan(settings),
    )
    install_error_handlers(app)
    if settings.api.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.api.cors_origins,
            allow_methods=["GET"],
            allow_headers=["*"],
        )
    for module in (health, devices, readings, aggregates, city):
        app.include_router(module.router)
    return app
