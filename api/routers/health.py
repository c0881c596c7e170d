"""GET /health (broker, database and versions) and GET /metrics (Prometheus)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request, Response
from fastapi.responses import PlainTextResponse

from api.deps import State
from api.metrics import metrics_response
from api.models import HealthResponse, Versions
from api.probes import probe_broker, probe_database
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
    summary="Broker and database reachability, TimescaleDB, versions",
)
async def health(state: State, response: Response) -> HealthResponse:
    """200 when both the MQTT broker and the database answer, 503 with the same body otherwise."""
    settings = state.settings
    broker, database = await asyncio.gather(
        probe_broker(settings.mqtt, PROBE_TIMEOUT_S),
        probe_database(settings.database, PROBE_TIMEOUT_S),
    )
    ok = broker.reachable and database.reachable
    response.status_code = 200 if ok else 503
    return HealthResponse(
        status="ok" if ok else "unavailable",
        broker=broker,
        database=database,
        versions=Versions(cityneuron=__version__, contract=CONTRACT_VERSION, schema_=SCHEMA_VERSION),
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
