"""Prometheus metrics and the small HTTP server exposing ``/metrics`` and ``/ready``."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Self

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from ingest.alerts.engine import Transition
from ingest.errors import IngestError
from ingest.store import BatchOutcome

log = logging.getLogger("cityneuron.ingest")

_BATCH_SIZE_BUCKETS = (1, 5, 10, 50, 100, 250, 500, 1000, 2000, 4000, 8000)
_COMMIT_SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Device time to commit: sub-second when live, hours or days for store-and-forward uploads.
_LAG_SECONDS_BUCKETS: tuple[float, ...] = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
_LAG_SECONDS_BUCKETS += (900.0, 3600.0, 6 * 3600.0, 86_400.0, 7 * 86_400.0)


class BulkHistogram(Collector):
    """A histogram fed a whole numpy array at a time (one observe() per reading would cost more
    than the rest of the accounting at 100 k readings/s)."""

    def __init__(self, name: str, documentation: str, buckets: tuple[float, ...]) -> None:
        self._name = name
        self._documentation = documentation
        self._bounds = np.array(buckets, dtype=np.float64)
        self._counts = np.zeros(len(buckets) + 1, dtype=np.int64)
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe_many(self, values: np.ndarray) -> None:
        if not len(values):
            return
        # side="left": a value equal to a bound falls in that bucket (le = less or equal).
        counts = np.bincount(np.searchsorted(self._bounds, values, side="left"), minlength=len(self._counts))
        with self._lock:
            self._counts += counts
            self._sum += float(values.sum())

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            cumulative = np.cumsum(self._counts).tolist()
            total = self._sum
        labels = [*(f"{b:g}" for b in self._bounds), "+Inf"]
        family = HistogramMetricFamily(self._name, self._documentation)
        family.add_metric([], list(zip(labels, cumulative, strict=True)), total)
        yield family


class IngestMetrics:
    """The service's metrics, in their own registry so several services can share a process."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.received = Counter(
            "cityneuron_ingest_messages_received", "MQTT messages received", ["channel"], registry=r
        )
        self.stored = Counter(
            "cityneuron_ingest_readings_stored", "readings newly stored in history", ["kind"], registry=r
        )
        self.duplicates = Counter(
            "cityneuron_ingest_duplicates",
            "readings not stored again: same device and timestamp already stored",
            ["kind"],
            registry=r,
        )
        self.dead_letters = Counter(
            "cityneuron_ingest_dead_letters", "dead letters written, by reason", ["reason"], registry=r
        )
        self.rows_expired = Counter(
            "cityneuron_ingest_rows_expired",
            "dead letters and closed alerts deleted past their retention, by table",
            ["table"],
            registry=r,
        )
        self.statuses = Counter(
            "cityneuron_ingest_status_updates",
            "status messages applied, or stale (older than the stored status)",
            ["outcome"],
            registry=r,
        )
        self.registered = Counter(
            "cityneuron_ingest_devices_auto_registered", "devices registered from their topic", registry=r
        )
        self.db_retries = Counter(
            "cityneuron_ingest_db_retries",
            "batch attempts that failed on the database connection",
            registry=r,
        )
        self.fallbacks = Counter(
            "cityneuron_ingest_batch_fallbacks",
            "batches rejected by the database and rewritten message by message",
            registry=r,
        )
        self.batch_size = Histogram(
            "cityneuron_ingest_batch_messages",
            "messages per committed batch",
            buckets=_BATCH_SIZE_BUCKETS,
            registry=r,
        )
        self.commit_seconds = Histogram(
            "cityneuron_ingest_commit_seconds",
            "time to write and commit one batch",
            buckets=_COMMIT_SECONDS_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "cityneuron_ingest_queue_depth", "messages received and waiting for the writer", registry=r
        )
        self.ready = Gauge(
            "cityneuron_ingest_ready", "1 when subscribed and connected to the database", registry=r
        )
        self.lag_seconds = BulkHistogram(
            "cityneuron_ingest_lag_seconds",
            "commit time minus device time of each newly stored reading",
            _LAG_SECONDS_BUCKETS,
        )
        r.register(self.lag_seconds)
        self.seq_gaps = Counter(
            "cityneuron_ingest_seq_gaps",
            "sequence numbers missing when a higher seq arrived",
            ["kind"],
            registry=r,
        )
        self.seq_gaps_filled = Counter(
            "cityneuron_ingest_seq_gaps_filled",
            "missing sequence numbers that arrived later (reordered)",
            ["kind"],
            registry=r,
        )
        self.seq_reordered = Counter(
            "cityneuron_ingest_seq_reordered",
            "readings that arrived after a higher seq of the same device",
            ["kind"],
            registry=r,
        )
        self.seq_restarts = Counter(
            "cityneuron_ingest_seq_restarts",
            "sequence counters that started again (a lower seq on a newer reading)",
            ["kind"],
            registry=r,
        )
        self.devices_silent = Gauge(
            "cityneuron_ingest_devices_silent",
            "devices that sent nothing for silent_after_intervals x their kind's interval",
            ["kind"],
            registry=r,
        )
        self.alerts_opened = Counter(
            "cityneuron_ingest_alerts_opened", "alerts opened (written to the table)", ["rule"], registry=r
        )
        self.alerts_closed = Counter(
            "cityneuron_ingest_alerts_closed", "alerts closed (written to the table)", ["rule"], registry=r
        )
        self.alerts_published = Counter(
            "cityneuron_ingest_alerts_published",
            "alert transitions handed to the MQTT client (QoS 1)",
            ["state"],
            registry=r,
        )

    def count_outcome(self, outcome: BatchOutcome) -> None:
        for kind, n in outcome.stored.items():
            self.stored.labels(kind).inc(n)
        for kind, n in outcome.duplicates.items():
            if n:
                self.duplicates.labels(kind).inc(n)
        for reason, n in outcome.dead_letters.items():
            self.dead_letters.labels(reason).inc(n)
        if outcome.statuses_applied:
            self.statuses.labels("applied").inc(outcome.statuses_applied)
        if outcome.statuses_stale:
            self.statuses.labels("stale").inc(outcome.statuses_stale)
        if outcome.registered:
            self.registered.inc(outcome.registered)
        quality = outcome.quality
        for counter, counts in (
            (self.seq_gaps, quality.gaps),
            (self.seq_gaps_filled, quality.gaps_filled),
            (self.seq_reordered, quality.reordered),
            (self.seq_restarts, quality.restarts),
        ):
            for kind, n in counts.items():
                counter.labels(kind).inc(n)
        self.count_alerts(outcome.alerts)

    def count_alerts(self, transitions: list[Transition]) -> None:
        for transition in transitions:
            counter = self.alerts_opened if transition.state == "open" else self.alerts_closed
            counter.labels(transition.rule).inc()


class _Handler(BaseHTTPRequestHandler):
    server: _ObservabilityServer

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._reply(200, generate_latest(self.server.metrics.registry), CONTENT_TYPE_LATEST)
        elif path == "/ready":
            ready = self.server.is_ready()
            self._reply(200 if ready else 503, b"ready\n" if ready else b"not ready\n", "text/plain")
        else:
            self._reply(404, b"not found\n", "text/plain")

    def _reply(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        log.debug("http %s", format % args)


class _ObservabilityServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self, address: tuple[str, int], metrics: IngestMetrics, is_ready: Callable[[], bool]
    ) -> None:
        super().__init__(address, _Handler)
        self.metrics = metrics
        self.is_ready = is_ready


class ObservabilityServer:
    """Serves ``/metrics`` and ``/ready`` on a thread; port 0 picks a free port (see :attr:`port`)."""

    def __init__(self, host: str, port: int, metrics: IngestMetrics, is_ready: Callable[[], bool]) -> None:
        try:
            self._server = _ObservabilityServer((host, port), metrics, is_ready)
        except OSError as exc:
            raise IngestError(f"cannot serve /metrics on {host}:{port}: {exc}") from exc
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="ingest-http", kwargs={"poll_interval": 0.2}, daemon=True
        )

    def start(self) -> None:
        self._thread.start()
        log.info(
            "metrics and readiness on http://%s:%d/metrics and /ready",
            self._server.server_address[0],
            self.port,
        )

    def stop(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join()
        self._server.server_close()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
