"""``cityneuron api``: serve the API with uvicorn, in one process or ``api.workers`` processes.

Several workers: uvicorn starts each worker by importing :func:`worker_app` (it needs an import
string, not an application object). The settings built once in the command's ``main()`` reach the
workers as JSON in an environment variable, so every worker serves exactly what the command was
given (command-line overrides included) without reading the environment on its own.

Per worker: its connection pool (``database.pool_max_size`` each), its rate-limit buckets (N workers
admit up to N times ``api.rate_limit_per_s`` per caller), its shared-view cache, and its own broker
link: every worker receives all live readings and command acks, so streams see everything whichever
worker holds them, and an ack is recorded once (the update only matches a pending command).
"""

from __future__ import annotations

import gc
import logging
import os
from typing import Any

import uvicorn
from fastapi import FastAPI

from api.app import create_app
from cityneuron.settings import Settings

log = logging.getLogger("cityneuron.api")

# Not CITYNEURON_-prefixed: Settings() must not mistake it for a setting.
SETTINGS_ENV = "_CITYNEURON_API_WORKER_SETTINGS"


def _served_app(settings: Settings) -> FastAPI:
    app = create_app(settings)
    # What is alive now (modules, the app, its models: ~90 k objects) lives as long as the process.
    # Frozen, a full collection no longer scans it: ~50 ms of pause in the middle of some request
    # otherwise, the worst latency of a polled view.
    gc.freeze()
    return app


def worker_app() -> FastAPI:
    """The application of one worker process, from the settings :func:`run` handed down."""
    serialised = os.environ.get(SETTINGS_ENV)
    if serialised is None:
        raise RuntimeError(f"{SETTINGS_ENV} is not set: start workers with api.main.run")
    return _served_app(Settings.model_validate_json(serialised))


def run(settings: Settings) -> None:
    """Serve the API on ``settings.api.host:port`` with ``settings.api.workers`` processes until interrupted."""
    workers = settings.api.workers
    log.info(
        "API listening on http://%s:%d with %d worker(s) (docs at /docs)",
        settings.api.host,
        settings.api.port,
        workers,
    )
    options: dict[str, Any] = {
        "host": settings.api.host,
        "port": settings.api.port,
        "log_level": settings.log_level.lower(),
        # The CLI configures logging; uvicorn must not replace it.
        "log_config": None,
        # One log line per request costs more than answering a cached view; Prometheus (/metrics)
        # counts and times every request. DEBUG brings the access log back.
        "access_log": settings.log_level.upper() == "DEBUG",
        # Open SSE streams would otherwise hold a shutdown until every client leaves.
        "timeout_graceful_shutdown": 5,
    }
    if workers == 1:
        uvicorn.run(_served_app(settings), **options)
        return
    os.environ[SETTINGS_ENV] = settings.model_dump_json()
    uvicorn.run("api.main:worker_app", factory=True, workers=workers, **options)
