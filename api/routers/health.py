"""GET /health (broker, database, versions), GET /health/ready (the devices are visible) and GET /metrics."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import PlainTextResponse

from api.deps import State
from api.metrics import metrics_response
from api.models import HealthResponse, Versions
from api.probes import probe_broker, probe_database
from api.state import ApiState
from cityneuron import __version__
from cityneuron.contract import CONTRACT_VERSION
from cityneuron.schema import SCHEMA_VERSION

# Health must answer fast even when a dependency hangs; load balancers time out at a few seconds.
PROBE_TIMEOUT_S = 2.0

router = APIRouter(tags=["health"])


@router.get(
    "/health",
    response_model=HealthResponse,
    responses={503: {"model": HealthResponse, "description": "broker or database unreachable (same body)"}},
    summary="Broker and database reachability, TimescaleDB, versions, readiness",
)
async def health(state: State, response: Response) -> HealthResponse:
    """200 when both the MQTT broker and the database answer, 503 with the same body otherwise.
    ``ready`` says whether the registry has devices yet (see /health/ready)."""
    body = await _health(state, min_devices=1)
    response.status_code = 200 if body.status == "ok" else 503
    return body


@router.get(
    "/health/ready",
    response_model=HealthResponse,
    responses={503: {"model": HealthResponse, "description": "not ready: ready_detail says why (same body)"}},
    summary="Readiness: 200 once the devices are visible in /devices",
)
async def ready(
    state: State,
    response: Response,
    min_devices: Annotated[
        int,
        Query(
            ge=1,
            le=100_000_000,
            description="ready once the registry holds at least this many devices (`cityneuron up`"
            " asks for its whole city)",
            examples=[1],
        ),
    ] = 1,
) -> HealthResponse:
    """200 when /health is ok, the schema is initialised and the registry holds at least
    ``min_devices`` devices; 503 with the same body until then. The API answers /health as soon as
    it runs, seconds before the ingest has registered a starting city: wait for this instead."""
    body = await _health(state, min_devices=min_devices)
    response.status_code = 200 if body.ready else 503
    return body


async def _health(state: ApiState, *, min_devices: int) -> HealthResponse:
    settings = state.settings
    broker, database = await asyncio.gather(
        probe_broker(settings.mqtt, PROBE_TIMEOUT_S),
        probe_database(settings.database, PROBE_TIMEOUT_S, min_devices),
    )
    ok = broker.reachable and database.reachable
    not_ready = None
    if not broker.reachable:
        not_ready = "the broker is not reachable"
    elif not database.reachable or database.devices is None:
        not_ready = database.detail or "the database is not reachable"
    elif database.devices < min_devices:
        not_ready = (
            f"the device registry holds {database.devices} device(s), fewer than {min_devices}:"
            " the ingest has not registered them yet"
        )
    return HealthResponse(
        status="ok" if ok else "unavailable",
        broker=broker,
        database=database,
        versions=Versions(cityneuron=__version__, contract=CONTRACT_VERSION, schema_=SCHEMA_VERSION),
        ready=not_ready is None,
        ready_detail=not_ready,
    )


@router.get(
    "/metrics",
    response_class=PlainTextResponse,
    responses={200: {"content": {"text/plain": {"example": "cityneuron_api_requests_total{...} 12.0"}}}},
    summary="Prometheus metrics: request counts and latency histograms by route template",
)
async def metrics(request: Request) -> Response:
    """Prometheus text exposition format 0.0.4."""
    return metrics_response(request)
