"""``cityneuron api``: serve the API with uvicorn."""

from __future__ import annotations

import logging

import uvicorn

from api.app import create_app
from cityneuron.settings import Settings

log = logging.getLogger("cityneuron.api")


def run(settings: Settings) -> None:
    """Serve the API on ``settings.api.host:port`` until interrupted."""
    log.info("API listening on http://%s:%d (docs at /docs)", settings.api.host, settings.api.port)
    uvicorn.run(
        create_app(settings),
        host=settings.api.host,
        port=settings.api.port,
        log_level=settings.log_level.lower(),
        # The CLI configures logging; uvicorn must not replace it.
        log_config=None,
        # Open SSE streams would otherwise hold a shutdown until every client leaves.
        timeout_graceful_shutdown=5,
    )
