"""Writes decoded batches to the database: one transaction per batch.

Per kind, the rows are COPYed (binary, built in bulk) straight into ``reading_<kind>``, or through
a staging table with ON CONFLICT when a reading was stored before, and each device's newest
reading is folded into ``latest_reading`` (:mod:`ingest.staging`). Device registration, status updates, the per-device
quality counters (:mod:`ingest.quality`), alert transitions (:mod:`ingest.alerts`) and the batch's
dead letters share the same transaction, so a batch is counted, alerted and acked only once.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import psycopg
from psycopg import sql

from cityneuron.decode import DeadLetter, Decoded, expand
from cityneuron.schema import SCHEMA_VERSION, SchemaError, init_schema
from cityneuron.settings import DatabaseSettings
from ingest.alerts.engine import AlertEngine, Plan, Transition
from ingest.alerts.rules import RuleSet
from ingest.alerts.store import SilenceReport, apply_plan, check_silence, load_open_alerts, load_windows
from ingest.errors import IngestError
from ingest.quality import CREATE_STAGE as CREATE_DEVICE_STAGE
from ingest.quality import QualityTotals, account, write_devices
from ingest.registry import Unregistered, apply_statuses, register_devices, resolve_devices
from ingest.staging import STATEMENTS, KindStatements, StagedKind, stage_batch

log = logging.getLogger("cityneuron.ingest")

# Detect a dead server within about 25 s even when no query is running (libpq keepalive options).
_KEEPALIVE_OPTIONS: dict[str, Any] = {
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
}


@dataclass(slots=True)
class BatchOutcome:
    """What a committed batch did; counted into the metrics only after the commit."""

    stored: Counter[str] = field(default_factory=Counter)  # kind -> new rows
    duplicates: Counter[str] = field(default_factory=Counter)  # kind -> rows already stored
    dead_letters: Counter[str] = field(default_factory=Counter)  # reason -> rows
    statuses_applied: int = 0
    statuses_stale: int = 0
    registered: int = 0
    quality: QualityTotals = field(default_factory=QualityTotals)
    # Device timestamps (epoch ms) of the newly stored readings: the lag histogram.
    stored_ts_ms: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    # Alert transitions this batch wrote to the table (to publish once committed).
    alerts: list[Transition] = field(default_factory=list)


# Sorts of a batch (DISTINCT ON, the latest-value pick) spill to disk at the default work_mem
# of 4 MB from a few thousand wide readings on; this keeps them in memory.
_WORK_MEM = "64MB"
# After a batch of a kind met a duplicate, this many of its next batches skip the fast insert.
_SKIP_FAST_INSERT_BATCHES = 16

_DEAD_LETTER_TYPES = ("timestamptz", "text", "text", "text", "text", "bytea")


class ReadingStore:
    """One database connection that writes batches; reconnect with :meth:`connect` after an outage."""

    def __init__(
        self,
        db: DatabaseSettings,
        *,
        auto_register: bool,
        engine: AlertEngine | None = None,
    ) -> None:
        self._db = db
        self._auto_register = auto_register
        self._engine = engine
        self._conn: psycopg.Connection | None = None
        self._conflict_batches_left: Counter[str] = Counter()
        self.retention_s: float | None = None
        # Thresholds of the last silence check (ingest.alerts.store.check_silence); None at start.
        self._silence_checked_to: dict[str, datetime] | None = None

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.closed and not self._conn.broken

    def connect(self) -> None:
        """(Re)connect, initialise the schema when there is none, and create the staging tables.

        Raises psycopg.OperationalError while the database is unreachable (the caller retries),
        IngestError when it never can work (schema newer than this code).
        """
        self.close()
        conn = psycopg.connect(
            self._db.url,
            autocommit=True,
            connect_timeout=max(1, round(self._db.connect_timeout_s)),
            application_name="cityneuron-ingest",
            **_KEEPALIVE_OPTIONS,
        )
        try:
            conn.execute(sql.SQL("SET work_mem = {}").format(sql.Literal(_WORK_MEM)))
            self._ensure_schema(conn)
            for statements in STATEMENTS.values():
                conn.execute(statements.create_stage)
            conn.execute(CREATE_DEVICE_STAGE)
            self.retention_s = self._retention_s(conn)
            if self._engine is not None:
                # The table is the record: after a restart or an outage, start from what it says.
                opened = load_open_alerts(conn, self._engine)
                windows = load_windows(conn, self._engine)
                log.info("alert state loaded open_alerts=%d window_readings=%d", opened, windows)
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def _retention_s(self, conn: psycopg.Connection) -> float | None:
        if not self._db.retention:
            return None
        try:
            row = conn.execute(
                "SELECT extract(epoch FROM %s::interval)::float8", (self._db.retention,)
            ).fetchone()
        except psycopg.errors.DataError as exc:
            raise IngestError(f"database.retention {self._db.retention!r} is not an interval") from exc
        return float(row[0]) if row else None

    def _ensure_schema(self, conn: psycopg.Connection) -> None:
        row = conn.execute(
            "SELECT CASE WHEN to_regclass('schema_version') IS NULL THEN 0"
            " ELSE (SELECT coalesce(max(version), 0) FROM schema_version) END"
        ).fetchone()
        version = int(row[0]) if row else 0
        if version > SCHEMA_VERSION:
            raise IngestError(
                f"database schema is version {version}, newer than this code ({SCHEMA_VERSION}):"
                " upgrade cityneuron"
            )
        if version < SCHEMA_VERSION:
            log.info("database schema is version %d: initialising to %d", version, SCHEMA_VERSION)
            try:
                init_schema(self._db)
            except SchemaError as exc:
                if isinstance(exc.__cause__, psycopg.OperationalError):
                    raise exc.__cause__ from exc
                raise IngestError(str(exc)) from exc

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def ping(self) -> None:
        self._connection().execute("SELECT 1")

    def _connection(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed:
            raise psycopg.OperationalError("not connected to the database")
        return self._conn

    def write(self, batch: list[Decoded]) -> BatchOutcome:
        """Store a batch in one transaction: readings, latest values, quality counters, alerts,
        dead letters; new devices (with ``auto_register``) are registered just before it."""
        conn = self._connection()
        batch = expand(batch)  # gateway batches: one part per device
        try:
            return self._write(conn, batch, register_first=self._auto_register)
        except Unregistered as unknown:
            # Rolled back before it changed anything: register, then write the batch again.
            registered = register_devices(conn, unknown.devices)
        outcome = self._write(conn, batch, register_first=False)
        outcome.registered = registered
        return outcome

    def _write(self, conn: psycopg.Connection, batch: list[Decoded], *, register_first: bool) -> BatchOutcome:
        outcome = BatchOutcome()
        plan = Plan()
        with conn.transaction():
            devices = resolve_devices(conn, batch, register_first=register_first)
            staged = stage_batch(batch)
            with conn.cursor() as cur:
                for kind_name, kind_rows in staged.items():
                    statements = STATEMENTS[kind_name]
                    self._insert(conn, cur, statements, kind_rows)
                    cur.execute(statements.latest)
                    stored = kind_rows.stored
                    outcome.stored[kind_name] += stored
                    outcome.duplicates[kind_name] += len(kind_rows) - stored
            outcome.statuses_applied, outcome.statuses_stale = apply_statuses(conn, batch)
            outcome.quality = account(devices, batch, staged.values())
            write_devices(conn, devices)
            if self._engine is not None:
                plan = self._engine.evaluate(list(staged.values()))
                if plan:
                    outcome.alerts = apply_plan(conn, self._engine, plan)
            letters: list[DeadLetter] = [letter for decoded in batch for letter in decoded.dead_letters]
            self._copy_dead_letters(conn, letters)
            outcome.dead_letters.update(letter.reason for letter in letters)
        # Only facts that are now committed may enter the engine's memory.
        if self._engine is not None and plan:
            self._engine.commit(plan)
        if staged:
            outcome.stored_ts_ms = np.concatenate([k.ts[~k.duplicate] for k in staged.values()])
        return outcome

    def _insert(
        self, conn: psycopg.Connection, cur: psycopg.Cursor[Any], statements: KindStatements, rows: StagedKind
    ) -> None:
        """Store the kind's rows, flagging those stored before; stage what ``latest`` needs.

        Duplicates are rare (resends after a reconnect), so first COPY straight into the readings
        table in a savepoint; a duplicate makes it fail on the unique key and the batch goes
        through the staging table with ON CONFLICT. After a conflict, the next few batches of the
        kind go straight to ON CONFLICT: resends come in runs (a redelivered session), and each
        failed attempt costs a COPY.
        """
        kind = rows.kind.name
        if self._conflict_batches_left[kind] <= 0 and not rows.has_repeats():
            try:
                with conn.transaction(), cur.copy(statements.copy_direct) as copy:
                    copy.write(rows.copy_data(with_ord=False))
            except psycopg.errors.UniqueViolation:
                self._conflict_batches_left[kind] = _SKIP_FAST_INSERT_BATCHES
            else:
                rows.mark_all_new()
                # latest_reading needs only each device's newest reading.
                with cur.copy(statements.copy_stage) as copy:
                    copy.write(rows.copy_data(with_ord=True, rows=rows.newest()))
                return
        elif self._conflict_batches_left[kind] > 0:
            self._conflict_batches_left[kind] -= 1
        with cur.copy(statements.copy_stage) as copy:
            copy.write(rows.copy_data(with_ord=True))
        cur.execute(statements.insert)
        rows.mark_duplicates(ord_ for (ord_,) in cur.fetchall())

    def check_silence(
        self, rules: RuleSet, silent_after_intervals: float, heard_since: datetime | None = None
    ) -> SilenceReport:
        """Count silent devices and open/close silence alerts, in a transaction of its own
        (``heard_since``: see :func:`ingest.alerts.store.check_silence`)."""
        conn = self._connection()
        with conn.transaction():
            report = check_silence(conn, rules, silent_after_intervals, self._silence_checked_to, heard_since)
        # Only once committed: a rolled-back check is redone from the earlier thresholds.
        self._silence_checked_to = report.checked_to
        return report

    def write_dead_letters(self, letters: list[DeadLetter]) -> None:
        """Store dead letters alone, in their own transaction."""
        conn = self._connection()
        with conn.transaction():
            self._copy_dead_letters(conn, letters)

    @staticmethod
    def _copy_dead_letters(conn: psycopg.Connection, letters: list[DeadLetter]) -> None:
        if not letters:
            return
        with (
            conn.cursor() as cur,
            cur.copy(
                "COPY dead_letter (received_at, topic, device_id, reason, detail, payload)"
                " FROM STDIN (FORMAT BINARY)"
            ) as copy,
        ):
            copy.set_types(list(_DEAD_LETTER_TYPES))
            for letter in letters:
                copy.write_row(
                    (
                        datetime.fromtimestamp(letter.received_at, tz=UTC),
                        letter.topic,
                        letter.device_id,
                        letter.reason,
                        letter.detail,
                        letter.payload,
                    )
                )
