"""Prometheus metrics of the API: request counts and latency by route template, at GET /metrics.

Labels use the route template (``/devices/{device_id}``), never the raw path, so a crawler
walking device ids cannot blow up the series count; unmatched paths share one label.
"""

from __future__ import annotations

import time
from typing import cast

from fastapi import FastAPI, Request, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.types import ASGIApp, Message, Receive, Scope, Send

UNMATCHED_ROUTE = "<unmatched>"
# From sub-millisecond cache hits to the 30 s statement timeout (api/db.py).
LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class ApiMetrics:
    """One registry per application, so several apps in one process (tests) do not collide."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "cityneuron_api_requests",
            "HTTP requests answered, by method, route template and status code",
            ("method", "route", "status"),
            registry=self.registry,
        )
        self.latency = Histogram(
            "cityneuron_api_request_duration_seconds",
            "time from request to the end of the response body, by method and route template",
            ("method", "route"),
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.in_progress = Gauge(
            "cityneuron_api_requests_in_progress", "requests being handled", registry=self.registry
        )

        # labels() validates and locks on every call; the children are looked up once per series
        # (routes are templates and methods a fixed set, so these stay small).
        self._request_counters: dict[tuple[str, str, int], Counter] = {}
        self._latency_children: dict[tuple[str, str], Histogram] = {}

    def observe(self, method: str, route: str, status: int, duration_s: float) -> None:
        """Count one answered request and record its duration."""
        counter = self._request_counters.get((method, route, status))
        if counter is None:
            counter = self._request_counters[(method, route, status)] = self.requests.labels(
                method, route, str(status)
            )
        counter.inc()
        latency = self._latency_children.get((method, route))
        if latency is None:
            latency = self._latency_children[(method, route)] = self.latency.labels(method, route)
        latency.observe(duration_s)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _MetricsMiddleware:
    """Plain ASGI (not BaseHTTPMiddleware): it neither buffers bodies nor breaks streaming responses."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        started = time.perf_counter()

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        self.metrics.in_progress.inc()
        try:
            await self.app(scope, receive, recording_send)
        finally:
            self.metrics.in_progress.dec()
            # The router puts the matched route in the (shared) scope.
            route = scope.get("route")
            template = cast(str, getattr(route, "path", None) or UNMATCHED_ROUTE)
            self.metrics.observe(scope.get("method", ""), template, status, time.perf_counter() - started)


def install_metrics(app: FastAPI) -> ApiMetrics:
    """Measure every request of ``app`` (add it last: outermost, so refusals are counted too)."""
    metrics = ApiMetrics()
    app.state.metrics = metrics
    app.add_middleware(_MetricsMiddleware, metrics=metrics)
    return metrics


def metrics_response(request: Request) -> Response:
    metrics = cast(ApiMetrics, request.app.state.metrics)
    return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
