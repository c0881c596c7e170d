"""Ingest's timer for the retention of the dead letters and closed alerts.

The reading partitions have their own schedulers (pg_partman's background worker, TimescaleDB's
jobs), but neither deletes rows of an ordinary table, and a user's own PostgreSQL may have no cron
running ``cityneuron db maintain``. Ingest writes the dead letters, so it also expires them: every
``ingest.table_retention_interval_s`` on a connection of its own (never a writer lane's, so the
batched DELETEs do not hold up readings), through cityneuron.table_retention.
"""

from __future__ import annotations

import logging
import threading

import psycopg

from cityneuron.errors import ConfigError
from cityneuron.settings import DatabaseSettings
from cityneuron.table_retention import prune
from ingest.observability import IngestMetrics

log = logging.getLogger("cityneuron.ingest")


class TableExpiry:
    """A daemon thread running :func:`cityneuron.table_retention.prune` every ``interval_s``; the
    first run comes one interval after :meth:`start` (a restarted ingest first catches up)."""

    def __init__(self, db: DatabaseSettings, interval_s: float, metrics: IngestMetrics) -> None:
        self._db = db
        self._interval_s = interval_s
        self._metrics = metrics
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ingest-table-expiry", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float) -> None:
        """Stop between two batches; a DELETE under way finishes (each is bounded)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                self.run_once()
            except ConfigError as exc:
                # Every run would fail the same way; ingest itself keeps storing readings.
                log.error("table retention disabled: %s", exc)
                return
            except psycopg.Error as exc:
                # An outage: the writer lanes report and ride it out; try again next interval.
                log.warning("table retention: %s", (str(exc).strip() or type(exc).__name__).splitlines()[0])

    def run_once(self) -> None:
        with psycopg.connect(
            self._db.url, autocommit=True, connect_timeout=int(self._db.connect_timeout_s)
        ) as conn:
            pruned = prune(conn, self._db, stop=self._stop)
        self._metrics.rows_expired.labels("dead_letter").inc(pruned.dead_letters)
        self._metrics.rows_expired.labels("alerts").inc(pruned.closed_alerts)
