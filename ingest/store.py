"""Writes decoded batches to the database: one transaction per batch.

Per kind, the rows are COPYed (binary) into a temporary staging table, then moved into
``reading_<kind>`` with ``ON CONFLICT (device_id, time) DO NOTHING`` (a resent reading is stored
once) and folded into ``latest_reading`` where they are newer than what it holds. Device
registration, status updates and the batch's dead letters share the same transaction.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg import sql

from cityneuron.catalog import KIND_BY_NAME, KINDS, Kind
from cityneuron.schema import SCHEMA_VERSION, SchemaError, init_schema
from cityneuron.settings import DatabaseSettings
from ingest.decode import DeadLetter, Decoded
from ingest.errors import IngestError
from ingest.registry import DeviceCache, apply_statuses, resolve_devices

log = logging.getLogger("cityneuron.ingest")

# jsonb_build_object takes at most 100 arguments (PostgreSQL FUNC_MAX_ARGS): 50 key/value pairs.
_JSONB_PAIRS_PER_CALL = 50
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


@dataclass(frozen=True, slots=True)
class _KindStatements:
    create_stage: sql.Composed
    copy: sql.Composed
    types: tuple[str, ...]
    insert: sql.Composed
    latest: sql.Composed


def _epoch_plus(column: str, unit: str) -> sql.Composed:
    # Exact integer arithmetic: no float rounding of the device's millisecond timestamps.
    return sql.SQL("timestamptz 'epoch' + {} * interval {}").format(sql.Identifier(column), sql.Literal(unit))


def _metrics_jsonb(kind: Kind) -> sql.Composable:
    pairs = [sql.SQL("{}, {}").format(sql.Literal(m.name), sql.Identifier(m.name)) for m in kind.metrics]
    calls = [
        sql.SQL("jsonb_build_object({})").format(sql.SQL(", ").join(pairs[i : i + _JSONB_PAIRS_PER_CALL]))
        for i in range(0, len(pairs), _JSONB_PAIRS_PER_CALL)
    ]
    return sql.SQL("jsonb_strip_nulls({})").format(sql.SQL(" || ").join(calls))


def _kind_statements(kind: Kind) -> _KindStatements:
    stage = sql.Identifier(f"_stage_{kind.name}")
    metric_ids = [sql.Identifier(m.name) for m in kind.metrics]
    metric_list = sql.SQL(", ").join(metric_ids)
    stage_columns = ["ord", "ts_ms", "device_id", "seq", "received_us", *kind.metric_names]
    create_stage = sql.SQL(
        "CREATE TEMP TABLE IF NOT EXISTS {stage} (ord integer, ts_ms bigint, device_id text, seq bigint,"
        " received_us bigint, {metrics}) ON COMMIT DELETE ROWS"
    ).format(
        stage=stage,
        metrics=sql.SQL(", ").join(sql.SQL("{} double precision").format(m) for m in metric_ids),
    )
    copy = sql.SQL("COPY {stage} ({columns}) FROM STDIN (FORMAT BINARY)").format(
        stage=stage, columns=sql.SQL(", ").join(map(sql.Identifier, stage_columns))
    )
    time_expr = _epoch_plus("ts_ms", "1 millisecond")
    received_expr = _epoch_plus("received_us", "1 microsecond")
    # DISTINCT ON: a reading sent twice within one batch is stored once, the first received wins,
    # as ON CONFLICT DO NOTHING does across batches.
    insert = sql.SQL(
        "INSERT INTO {table} (time, device_id, seq, received_at, {metrics})"
        " SELECT DISTINCT ON (device_id, ts_ms) {time}, device_id, seq, {received}, {metrics}"
        " FROM {stage} ORDER BY device_id, ts_ms, ord"
        " ON CONFLICT (device_id, time) DO NOTHING"
    ).format(
        table=sql.Identifier(kind.table),
        metrics=metric_list,
        time=time_expr,
        received=received_expr,
        stage=stage,
    )
    # The newest device timestamp wins; a late, older reading only goes to history. A newer
    # reading that carries only some metrics keeps the others from before (old || new).
    latest = sql.SQL(
        "INSERT INTO latest_reading (device_id, kind, time, seq, metrics, received_at)"
        " SELECT DISTINCT ON (device_id) device_id, {kind}, {time}, seq, {jsonb}, {received}"
        " FROM {stage} ORDER BY device_id, ts_ms DESC, ord"
        " ON CONFLICT (device_id) DO UPDATE SET kind = EXCLUDED.kind, time = EXCLUDED.time,"
        " seq = EXCLUDED.seq, metrics = latest_reading.metrics || EXCLUDED.metrics,"
        " received_at = EXCLUDED.received_at"
        " WHERE EXCLUDED.time > latest_reading.time"
    ).format(
        kind=sql.Literal(kind.name),
        time=time_expr,
        jsonb=_metrics_jsonb(kind),
        received=received_expr,
        stage=stage,
    )
    types = ("int4", "int8", "text", "int8", "int8", *("float8" for _ in kind.metrics))
    return _KindStatements(create_stage, copy, types, insert, latest)


_STATEMENTS: dict[str, _KindStatements] = {kind.name: _kind_statements(kind) for kind in KINDS}
_DEAD_LETTER_TYPES = ("timestamptz", "text", "text", "text", "text", "bytea")


class ReadingStore:
    """One database connection that writes batches; reconnect with :meth:`connect` after an outage."""

    def __init__(self, db: DatabaseSettings, cache: DeviceCache, *, auto_register: bool) -> None:
        self._db = db
        self._cache = cache
        self._auto_register = auto_register
        self._conn: psycopg.Connection | None = None

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
            self._ensure_schema(conn)
            for statements in _STATEMENTS.values():
                conn.execute(statements.create_stage)
        except BaseException:
            conn.close()
            raise
        self._conn = conn

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
        """Store a batch in one transaction: readings, latest values, registry, dead letters."""
        conn = self._connection()
        outcome = BatchOutcome()
        with conn.transaction():
            resolution = resolve_devices(conn, batch, self._cache, auto_register=self._auto_register)
            outcome.registered = resolution.registered
            rows_by_kind: dict[str, list[tuple[Any, ...]]] = {}
            letters: list[DeadLetter] = []
            order = 0
            for decoded in batch:
                letters.extend(decoded.dead_letters)
                if not decoded.rows or decoded.topic is None:
                    continue
                topic = decoded.topic
                names = KIND_BY_NAME[topic.kind].metric_names
                received_us = int(decoded.message.received_at * 1_000_000)
                target = rows_by_kind.setdefault(topic.kind, [])
                for row in decoded.rows:
                    values = row.values
                    target.append(
                        (
                            order,
                            row.ts_ms,
                            topic.device_id,
                            row.seq,
                            received_us,
                            *[values.get(n) for n in names],
                        )
                    )
                    order += 1
            with conn.cursor() as cur:
                for kind_name, rows in rows_by_kind.items():
                    statements = _STATEMENTS[kind_name]
                    with cur.copy(statements.copy) as copy:
                        copy.set_types(list(statements.types))
                        for staged in rows:
                            copy.write_row(staged)
                    cur.execute(statements.insert)
                    inserted = max(cur.rowcount, 0)
                    cur.execute(statements.latest)
                    outcome.stored[kind_name] += inserted
                    outcome.duplicates[kind_name] += len(rows) - inserted
            outcome.statuses_applied, outcome.statuses_stale = apply_statuses(conn, batch)
            self._copy_dead_letters(conn, letters)
            outcome.dead_letters.update(letter.reason for letter in letters)
        # Only facts that are now committed may enter the cache.
        self._cache.learn(resolution.learned)
        return outcome

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
