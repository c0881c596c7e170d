"""The ingest service: MQTT network thread -> bounded inbox -> decoder -> writer lanes -> database,
then acks.

``run`` is what ``cityneuron ingest`` and ``python -m ingest`` call; tests use ``IngestService``.
"""

from __future__ import annotations

import logging
import queue
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType, TracebackType
from typing import Self

from cityneuron.decode import Message
from cityneuron.settings import Settings
from ingest.alerts.engine import AlertEngine
from ingest.alerts.rules import load_rules
from ingest.expiry import TableExpiry
from ingest.lane import Lane
from ingest.mqtt import MqttSource
from ingest.observability import IngestMetrics, ObservabilityServer
from ingest.store import ReadingStore
from ingest.writer import BatchWriter, lane_of

log = logging.getLogger("cityneuron.ingest")

# On stop, the writer gets this long to commit and ack what it already received.
_DRAIN_TIMEOUT_S = 10.0
_STOP_POLL_S = 0.5


class IngestService:
    """One ingest process's worth of pipeline; use as a context manager or start()/stop().

    ``http_port`` is the port of ``/metrics`` and ``/ready`` once started (useful with port 0).
    ``failure`` holds the error that stopped the writer, if any (the service is then not ready).
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        ingest = settings.ingest
        self.metrics = IngestMetrics()
        self._inbox: queue.Queue[Message] = queue.Queue(maxsize=ingest.queue_max_messages)
        self.metrics.queue_depth.set_function(self._inbox.qsize)
        self.metrics.ready.set_function(lambda: 1.0 if self.ready() else 0.0)
        if ingest.queue_max_messages < ingest.receive_maximum:
            log.warning(
                "queue_max_messages=%d < receive_maximum=%d: a full inbox will stall the MQTT network"
                " thread (and its keep-alive)",
                ingest.queue_max_messages,
                ingest.receive_maximum,
            )
        self._source = MqttSource(settings.mqtt, ingest, self._inbox, self.metrics)
        self.rules = load_rules(ingest.rules_file)
        self.alerts: list[AlertEngine] = []
        self._writer = BatchWriter(ingest, self._inbox, self._source.ack, self._lane)
        self._writer_thread = threading.Thread(target=self._writer.run, name="ingest-writer", daemon=True)
        self._expiry = (
            TableExpiry(settings.database, ingest.table_retention_interval_s, self.metrics)
            if ingest.table_retention_interval_s > 0
            else None
        )
        self._http: ObservabilityServer | None = None
        self.http_port: int | None = None
        self._started = False
        self._stopped = False

    def _lane(self, index: int, committed: Callable[[int], None], batch_max: int) -> Lane:
        """Writer lane ``index``: its own connection and the alert state of its devices; lane 0
        also checks for silent devices."""
        settings, ingest = self._settings, self._settings.ingest
        engine = AlertEngine(self.rules, owns=lambda device_id: lane_of(device_id, ingest.writers) == index)
        self.alerts.append(engine)
        store = ReadingStore(settings.database, auto_register=ingest.auto_register, engine=engine)
        return Lane(
            str(index + 1),
            ingest,
            store,
            committed,
            self.metrics,
            batch_max=batch_max,
            rules=self.rules if index == 0 else None,
            publish=self._source.publish_alerts if ingest.publish_alerts else None,
        )

    def open_alerts(self, rule: str) -> int:
        """How many alerts of ``rule`` are open in this process's memory (all lanes)."""
        return sum(engine.open_count(rule) for engine in self.alerts)

    @property
    def failure(self) -> BaseException | None:
        return self._writer.failure

    def ready(self) -> bool:
        """Subscribed to the broker and connected to the database."""
        return self._started and not self._stopped and self._source.subscribed and self._writer.db_connected

    def wait_ready(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while not self.ready():
            if self.failure is not None or time.monotonic() >= deadline:
                return False
            time.sleep(0.02)
        return True

    def start(self) -> None:
        ingest = self._settings.ingest
        self._http = ObservabilityServer(ingest.http_host, ingest.http_port, self.metrics, self.ready)
        self.http_port = self._http.port
        self._http.start()
        self._started = True
        self._writer_thread.start()
        self._source.start()
        if self._expiry is not None:
            self._expiry.start()
        log.info(
            "ingest started client_id=%s share_group=%s writers=%d batch_max=%d flush_ms=%d receive_maximum=%d"
            " alert_rules=%s rules_file=%s publish_alerts=%s",
            ingest.client_id,
            ingest.share_group,
            ingest.writers,
            ingest.batch_max_messages,
            ingest.flush_interval_ms,
            ingest.receive_maximum,
            ",".join(self.rules.names) or "none",
            ingest.rules_file or "default",
            ingest.publish_alerts,
        )
        if ingest.share_group:
            log.warning(
                "shared subscription (share_group=%s): Mosquitto does not keep it across a broker"
                " restart, so readings arriving before ingest subscribes again are lost"
                " (docs/architecture.md)",
                ingest.share_group,
            )

    def stop(self) -> None:
        """Stop receiving, commit and ack what was received, then disconnect (the session stays)."""
        if not self._started or self._stopped:
            return
        self._stopped = True
        if self._expiry is not None:
            self._expiry.stop(_DRAIN_TIMEOUT_S)
        self._source.stop_receiving()
        self._writer.drain()
        self._writer_thread.join(_DRAIN_TIMEOUT_S)
        if self._writer_thread.is_alive():
            log.warning("writer did not drain within %.0f s: leaving the rest unacked", _DRAIN_TIMEOUT_S)
            self._writer.abort()
            self._writer_thread.join(_DRAIN_TIMEOUT_S)
        self._source.stop()
        if self._http is not None:
            self._http.stop()
        log.info("ingest stopped")

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def run(settings: Settings, stop_event: threading.Event | None = None) -> None:
    """Run ingest until ``stop_event`` is set or SIGINT/SIGTERM arrives (handlers are installed only
    on the main thread); re-raise the error that stopped the writer, if any."""
    stop = stop_event or threading.Event()
    previous: dict[signal.Signals, object] = {}
    if threading.current_thread() is threading.main_thread():

        def _on_signal(signum: int, frame: FrameType | None) -> None:
            log.info("signal %s: stopping", signal.Signals(signum).name)
            stop.set()

        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, _on_signal)
    try:
        with IngestService(settings) as service:
            while not stop.wait(_STOP_POLL_S):
                if service.failure is not None:
                    break
        if service.failure is not None:
            raise service.failure
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]
