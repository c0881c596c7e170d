"""One writer lane: a database connection that writes the batches handed to it, one transaction
each, retrying through outages.

A database outage keeps the batch (uncommitted) and retries it with capped exponential back-off;
its messages stay unacked, they fill the MQTT receive window and the broker stops sending, so
nothing piles up in memory. A batch the database rejects for its content is rewritten message by
message, and the messages that still fail are dead-lettered, so one poison message cannot block
the stream. A lane reports each part it committed whole (:class:`ingest.writer.BatchWriter` acks
a batch once every lane committed its part).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import psycopg

from cityneuron.backoff import backoff_delay_s
from cityneuron.contract import now_ms
from cityneuron.decode import STORE_FAILED, Decoded, Limits
from cityneuron.settings import IngestSettings
from ingest.alerts.engine import Transition, log_transitions
from ingest.alerts.rules import RuleSet
from ingest.errors import IngestError
from ingest.observability import IngestMetrics
from ingest.store import BatchOutcome, ReadingStore

log = logging.getLogger("cityneuron.ingest")

_RETRY_FIRST_DELAY_S = 0.1
_GET_POLL_S = 0.2
# Check an idle connection this often, so /ready reports a database that went away.
_IDLE_PING_S = 5.0
# Under sustained full batches the silence check is put off at most this many intervals.
_MAX_SILENCE_DEFERRALS = 10
# How long the writer waits for the decoder thread to end once it stopped itself.
_DRAIN_JOIN_S = 5.0


@dataclass(frozen=True, slots=True)
class Part:
    """A lane's share of a decoded batch: ``batch`` numbers the batch (acks go in its order),
    ``received`` is how many messages the whole batch collected; ``done`` ends the lane."""

    batch: int
    received: int
    pending: list[Decoded]
    done: bool = False


DONE = Part(-1, 0, [], done=True)


def _first_line(exc: BaseException) -> str:
    # psycopg errors carry DETAIL/CONTEXT lines; the log line keeps the first.
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class Lane:
    """Runs on its own thread (:meth:`run`); owns one database connection.

    ``committed(batch)`` is called once the lane's part of that batch is wholly committed (or
    dead-lettered); a part left unfinished (told to stop during an outage) is never reported, so
    its batch stays unacked and the broker delivers it again.
    """

    def __init__(
        self,
        name: str,
        ingest: IngestSettings,
        store: ReadingStore,
        committed: Callable[[int], None],
        metrics: IngestMetrics,
        *,
        batch_max: int,
        rules: RuleSet | None = None,
        publish: Callable[[list[Transition]], None] | None = None,
    ) -> None:
        self.name = name
        self._store = store
        self._committed_part = committed
        self._metrics = metrics
        # Only the lane given the rules checks for silent devices (one check for the process).
        self._rules = rules
        self._publish = publish
        self._ingest = ingest
        # Not at once: right after a start the broker may still hold a backlog of queued readings.
        self._next_silence_check = time.monotonic() + ingest.silent_check_interval_s
        self._catching_up = False
        self._silence_deferrals = 0
        # Silence is judged only over time this ingest listened (ingest.alerts.store.check_silence).
        self._listening_since = datetime.now(UTC)
        self._batch_max = batch_max
        self._retry_cap_s = ingest.db_retry_max_delay_s
        self._draining = threading.Event()
        self._abort = threading.Event()
        # One part waits here while the previous one is written.
        self.parts: queue.Queue[Part] = queue.Queue(maxsize=1)
        self._db_ok = False
        self._last_db_use = time.monotonic()
        self.limits = Limits.from_settings(ingest)
        self.failure: BaseException | None = None
        self.finished = threading.Event()

    @property
    def db_connected(self) -> bool:
        return self._db_ok and self._store.connected

    def drain(self) -> None:
        """Finish the parts handed over, then return from :meth:`run` at :data:`DONE`."""
        self._draining.set()

    def abort(self) -> None:
        """Return from :meth:`run` as soon as possible, leaving the current part unacked."""
        self._draining.set()
        self._abort.set()

    def run(self) -> None:
        """Write the parts handed over (:attr:`parts`), one after the other, until :data:`DONE`
        or aborted."""
        try:
            if not self._connect():
                return
            while not self._abort.is_set():
                try:
                    part = self.parts.get(timeout=_GET_POLL_S)
                except queue.Empty:
                    part = None
                if part is not None and part.done:
                    return
                if part is not None:
                    # A full batch means messages are waiting: a backlog, not a quiet city.
                    self._catching_up = part.received >= self._batch_max
                    if self._process(part.pending):
                        self._committed_part(part.batch)
                elif time.monotonic() - self._last_db_use > _IDLE_PING_S:
                    self._ping()
                if time.monotonic() >= self._next_silence_check and not self._draining.is_set():
                    self._check_silence()
        except BaseException as exc:
            # Not bad input (that never raises): a broken database or a bug. Stop the service.
            log.exception("ingest writer %s stopped", self.name)
            self.failure = exc
        finally:
            self._abort.set()
            self._db_ok = False
            self._store.close()
            self.finished.set()

    def _process(self, pending: list[Decoded]) -> bool:
        """Commit every message of ``pending`` (or dead-letter it); False when told to stop first."""
        attempt = 0
        while pending:
            if self._abort.is_set() or (self._draining.is_set() and not self._store.connected):
                log.warning(
                    "stopping with %d messages unacked: the broker will deliver them again", len(pending)
                )
                return False
            if not self._store.connected and not self._connect():
                return False
            started = time.perf_counter()
            try:
                outcome = self._store.write(pending)
            except psycopg.OperationalError as exc:
                self._outage(exc, attempt, len(pending))
                attempt += 1
                continue
            except Exception as exc:
                if not self._store.connected:
                    self._outage(exc, attempt, len(pending))
                    attempt += 1
                    continue
                pending = self._one_by_one(pending, exc)
                continue
            self._committed(pending, outcome, time.perf_counter() - started)
            pending = []
        return True

    def _committed(self, batch: list[Decoded], outcome: BatchOutcome, seconds: float) -> None:
        self._last_db_use = time.monotonic()
        self._metrics.commit_seconds.observe(seconds)
        self._metrics.batch_size.observe(len(batch))
        self._metrics.count_outcome(outcome)
        if len(outcome.stored_ts_ms):
            self._metrics.lag_seconds.observe_many((now_ms() - outcome.stored_ts_ms) / 1000.0)
        self._announce(outcome.alerts)
        log.debug(
            "batch committed lane=%s messages=%d stored=%d duplicates=%d dead_letters=%d seconds=%.4f",
            self.name,
            len(batch),
            sum(outcome.stored.values()),
            sum(outcome.duplicates.values()),
            sum(outcome.dead_letters.values()),
            seconds,
        )

    def _one_by_one(self, batch: list[Decoded], cause: Exception) -> list[Decoded]:
        """Write each message in its own transaction; dead-letter those the database refuses.
        Return what is left when the connection fails midway (the caller retries it)."""
        log.warning(
            "batch of %d refused by the database (%s): writing message by message",
            len(batch),
            _first_line(cause),
        )
        self._metrics.fallbacks.inc()
        for index, decoded in enumerate(batch):
            started = time.perf_counter()
            try:
                outcome = self._store.write([decoded])
            except psycopg.OperationalError:
                return batch[index:]
            except Exception as exc:
                if not self._store.connected:
                    return batch[index:]
                if not self._dead_letter_refused(decoded, exc):
                    return batch[index:]
                continue
            self._committed([decoded], outcome, time.perf_counter() - started)
        return []

    def _dead_letter_refused(self, decoded: Decoded, cause: Exception) -> bool:
        """Dead-letter a message the database refused; False if the connection failed."""
        letter = decoded.dead_letter(STORE_FAILED, f"{type(cause).__name__}: {cause}")
        log.warning("message on %s refused by the database: %s", decoded.message.topic, _first_line(cause))
        try:
            self._store.write_dead_letters([letter])
            self._metrics.dead_letters.labels(STORE_FAILED).inc()
        except psycopg.OperationalError:
            return False
        except Exception as exc:
            if not self._store.connected:
                return False
            # The dead letters themselves cannot be written: the schema is broken. Stop rather than
            # ack what is stored nowhere; the broker keeps the message until this is fixed.
            raise IngestError(
                f"cannot write dead letters ({_first_line(exc)}): check the database schema"
            ) from exc
        return True

    # --- alerts and liveness ----------------------------------------------------------------------

    def _announce(self, transitions: list[Transition]) -> None:
        """Log and publish committed alert transitions (the table already holds them)."""
        log_transitions(transitions)
        if transitions and self._publish is not None:
            self._publish(transitions)

    def _check_silence(self) -> None:
        self._next_silence_check = time.monotonic() + self._ingest.silent_check_interval_s
        if self._catching_up and self._silence_deferrals < _MAX_SILENCE_DEFERRALS:
            # Devices whose readings wait in the backlog are not silent: look again later.
            self._silence_deferrals += 1
            return
        self._silence_deferrals = 0
        if self._rules is None or not self._store.connected:
            return
        try:
            report = self._store.check_silence(
                self._rules, self._ingest.silent_after_intervals, self._listening_since
            )
        except psycopg.OperationalError as exc:
            self._outage(exc, 0, 0)
            return
        self._last_db_use = time.monotonic()
        for kind, n in report.silent_by_kind.items():
            self._metrics.devices_silent.labels(kind).set(n)
        self._metrics.count_alerts(report.transitions)
        self._announce(report.transitions)

    # --- the connection -----------------------------------------------------------------------------

    def _connect(self) -> bool:
        """Connect, retrying with back-off; False when told to stop first (what is unacked then
        comes again from the broker)."""
        attempt = 0
        while not self._draining.is_set():
            try:
                self._store.connect()
            except psycopg.OperationalError as exc:
                self._outage(exc, attempt, 0)
                attempt += 1
                continue
            self._db_ok = True
            self._last_db_use = time.monotonic()
            self.limits = Limits.from_settings(self._ingest, self._store.retention_s)
            if attempt:
                log.info("database connection restored after %d attempts", attempt)
            return True
        return False

    def _ping(self) -> None:
        self._last_db_use = time.monotonic()
        try:
            self._store.ping()
        except psycopg.Error as exc:
            self._outage(exc, 0, 0)
            self._connect()

    def _outage(self, exc: BaseException, attempt: int, batch_len: int) -> None:
        self._db_ok = False
        self._store.close()
        self._metrics.db_retries.inc()
        delay = backoff_delay_s(attempt, _RETRY_FIRST_DELAY_S, self._retry_cap_s)
        log.warning(
            "database unavailable attempt=%d unacked_batch=%d retry_in_s=%.2f error=%s",
            attempt + 1,
            batch_len,
            delay,
            _first_line(exc),
        )
        self._draining.wait(delay)
