"""The writer stage: drain the inbox in batches, decode, write, commit, and only then ack.

A database outage keeps the batch (unacked) and retries it with capped exponential back-off;
the unacked messages fill the MQTT receive window and the broker stops sending, so nothing
piles up in memory. A batch the database rejects for its content is rewritten message by
message, and the messages that still fail are dead-lettered, so one poison message cannot
block the stream.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import psycopg

from cityneuron.backoff import backoff_delay_s
from cityneuron.contract import now_ms
from cityneuron.decode import STORE_FAILED, Decoded, Limits, Message
from cityneuron.settings import IngestSettings
from ingest.alerts.engine import Transition, log_transitions
from ingest.alerts.rules import RuleSet
from ingest.errors import IngestError
from ingest.fastdecode import decode_batch
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
class _Handover:
    """A decoded batch (how many messages were collected, what they decoded into), or the
    decoder's last word after a drain."""

    received: int
    pending: list[Decoded]
    done: bool = False


_DONE = _Handover(0, [], done=True)


def _first_line(exc: BaseException) -> str:
    # psycopg errors carry DETAIL/CONTEXT lines; the log line keeps the first.
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def effective_batch_size(ingest: IngestSettings) -> int:
    """Batch size bounded by the receive window: the broker never has more unacked messages in
    flight to us than ``receive_maximum``, so a larger batch could only fill on the timer."""
    if ingest.batch_max_messages > ingest.receive_maximum:
        log.warning(
            "batch_max_messages=%d exceeds receive_maximum=%d: batches are capped at %d",
            ingest.batch_max_messages,
            ingest.receive_maximum,
            ingest.receive_maximum,
        )
        return ingest.receive_maximum
    return ingest.batch_max_messages


class BatchWriter:
    """Runs on its own thread (:meth:`run`); owns the database connection."""

    def __init__(
        self,
        ingest: IngestSettings,
        inbox: queue.Queue[Message],
        store: ReadingStore,
        ack: Callable[[Iterable[Message]], int],
        metrics: IngestMetrics,
        rules: RuleSet | None = None,
        publish: Callable[[list[Transition]], None] | None = None,
    ) -> None:
        self._inbox = inbox
        self._store = store
        self._ack = ack
        self._metrics = metrics
        self._rules = rules
        self._publish = publish
        self._ingest = ingest
        # Not at once: right after a start the broker may still hold a backlog of queued readings.
        self._next_silence_check = time.monotonic() + ingest.silent_check_interval_s
        self._catching_up = False
        self._silence_deferrals = 0
        self._limits = Limits.from_settings(ingest)
        self._batch_max = effective_batch_size(ingest)
        self._flush_interval_s = ingest.flush_interval_ms / 1000
        self._retry_cap_s = ingest.db_retry_max_delay_s
        self._draining = threading.Event()
        self._abort = threading.Event()
        # One decoded batch waits here while the previous one is written.
        self._decoded: queue.Queue[_Handover] = queue.Queue(maxsize=1)
        self._db_ok = False
        self._last_db_use = time.monotonic()
        self.failure: BaseException | None = None

    @property
    def db_connected(self) -> bool:
        return self._db_ok and self._store.connected

    def drain(self) -> None:
        """Finish what is in the inbox, then return from :meth:`run`."""
        self._draining.set()

    def abort(self) -> None:
        """Return from :meth:`run` as soon as possible, leaving the current batch unacked."""
        self._draining.set()
        self._abort.set()

    def run(self) -> None:
        """Write what the decoder thread hands over, batch after batch, until drained or aborted.

        Decoding runs on its own thread (:meth:`_decode_loop`), one batch ahead: while this
        thread waits for PostgreSQL to store batch n (the GIL is released meanwhile), batch n+1
        is collected and decoded. The hand-over holds one batch, so at most two batches are
        unacked in ingest at any time.
        """
        decoder: threading.Thread | None = None
        try:
            if not self._connect():
                return
            decoder = threading.Thread(target=self._decode_loop, name="ingest-decoder", daemon=True)
            decoder.start()
            while not self._abort.is_set():
                try:
                    item = self._decoded.get(timeout=_GET_POLL_S)
                except queue.Empty:
                    item = None
                if item is not None and item.done:
                    return
                if item is not None:
                    # A full batch means messages are waiting: a backlog, not a quiet city.
                    self._catching_up = item.received >= self._batch_max
                    self._process(item.pending)
                elif time.monotonic() - self._last_db_use > _IDLE_PING_S:
                    self._ping()
                if time.monotonic() >= self._next_silence_check and not self._draining.is_set():
                    self._check_silence()
        except BaseException as exc:
            # Not bad input (that never raises): a broken database or a bug. Stop the service.
            log.exception("ingest writer stopped")
            self.failure = exc
        finally:
            self._abort.set()  # the decoder thread ends too
            self._db_ok = False
            self._store.close()
            if decoder is not None:
                decoder.join(_DRAIN_JOIN_S)

    def _decode_loop(self) -> None:
        """Collect and decode batches for :meth:`run`; after a drain, end with ``_DONE``."""
        try:
            while not self._abort.is_set():
                batch = self._collect()
                if batch:
                    item = _Handover(len(batch), decode_batch(batch, self._limits, now_ms()))
                elif self._draining.is_set():
                    item = _DONE
                else:
                    continue
                while not self._abort.is_set():
                    try:
                        self._decoded.put(item, timeout=_GET_POLL_S)
                        break
                    except queue.Full:
                        continue
                if item.done:
                    return
        except BaseException as exc:
            log.exception("ingest decoder stopped")
            self.failure = exc
            self._abort.set()

    # --- batches ----------------------------------------------------------------------------------

    def _collect(self) -> list[Message]:
        try:
            first = self._inbox.get(timeout=_GET_POLL_S)
        except queue.Empty:
            return []
        batch = [first]
        deadline = time.monotonic() + self._flush_interval_s
        while len(batch) < self._batch_max:
            try:
                batch.append(self._inbox.get_nowait())
                continue
            except queue.Empty:
                pass
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                batch.append(self._inbox.get(timeout=remaining))
            except queue.Empty:
                break
        return batch

    def _process(self, pending: list[Decoded]) -> None:
        attempt = 0
        while pending:
            if self._draining.is_set() and not self._store.connected:
                log.warning(
                    "stopping with %d messages unacked: the broker will deliver them again", len(pending)
                )
                return
            if not self._store.connected and not self._connect():
                return
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

    def _committed(self, batch: list[Decoded], outcome: BatchOutcome, seconds: float) -> None:
        self._last_db_use = time.monotonic()
        self._metrics.commit_seconds.observe(seconds)
        self._metrics.batch_size.observe(len(batch))
        self._metrics.count_outcome(outcome)
        if len(outcome.stored_ts_ms):
            self._metrics.lag_seconds.observe_many((now_ms() - outcome.stored_ts_ms) / 1000.0)
        acked = self._ack(decoded.message for decoded in batch)
        self._announce(outcome.alerts)
        log.debug(
            "batch committed messages=%d acked=%d stored=%d duplicates=%d dead_letters=%d seconds=%.4f",
            len(batch),
            acked,
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
        """Dead-letter a message the database refused and ack it; False if the connection failed."""
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
        self._ack([decoded.message])
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
            report = self._store.check_silence(self._rules, self._ingest.silent_after_intervals)
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
            self._limits = Limits.from_settings(self._ingest, self._store.retention_s)
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
