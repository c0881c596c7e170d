"""Database schema: versioned, idempotent creation driven by the catalog.

``init_schema`` is what ``cityneuron db init`` runs. It detects TimescaleDB and uses hypertables,
continuous aggregates, compression and retention when the extension is there; plain tables with
indexes otherwise (the API then aggregates with ``date_bin``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import psycopg
from psycopg import sql

from cityneuron import device_activity, device_counts
from cityneuron.catalog import KINDS, Kind
from cityneuron.errors import CityNeuronError
from cityneuron.partitions import ensure_partitioned, partman_schema
from cityneuron.settings import DatabaseSettings

log = logging.getLogger("cityneuron.schema")

SCHEMA_VERSION = 5
# Any constant: serialises concurrent `db init` runs (several ingest processes starting at once).
_INIT_LOCK_KEY = 0x43_49_54_59

CAGG_WIDTHS = {"1h": "1 hour", "1d": "1 day"}


class SchemaError(CityNeuronError):
    """The schema could not be created or migrated."""


@dataclass(frozen=True, slots=True)
class DatabaseInfo:
    server_version: str
    timescaledb: str | None
    # Schema pg_partman is installed in (time partitions on plain PostgreSQL: cityneuron.partitions).
    partman: str | None = None

    @property
    def has_timescaledb(self) -> bool:
        return self.timescaledb is not None


_MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        """
        CREATE TABLE devices (
            device_id text PRIMARY KEY,
            kind text NOT NULL,
            district text NOT NULL,
            lat double precision,
            lon double precision,
            installed date,
            meta jsonb NOT NULL DEFAULT '{}'::jsonb,
            auto_registered boolean NOT NULL DEFAULT false,
            registered_at timestamptz NOT NULL DEFAULT now(),
            online boolean,
            status_changed_at timestamptz
        )
        """,
        "CREATE INDEX devices_kind_district ON devices (kind, district, device_id)",
        """
        CREATE TABLE latest_reading (
            device_id text PRIMARY KEY,
            kind text NOT NULL,
            time timestamptz NOT NULL,
            seq bigint,
            metrics jsonb NOT NULL,
            received_at timestamptz NOT NULL
        )
        """,
        "CREATE INDEX latest_reading_kind ON latest_reading (kind, device_id)",
        """
        CREATE TABLE dead_letter (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            received_at timestamptz NOT NULL DEFAULT now(),
            topic text NOT NULL,
            device_id text,
            reason text NOT NULL,
            detail text NOT NULL,
            payload bytea NOT NULL
        )
        """,
        "CREATE INDEX dead_letter_received ON dead_letter (received_at)",
        "CREATE INDEX dead_letter_reason ON dead_letter (reason, received_at)",
        """
        CREATE TABLE kind_schema (
            kind text PRIMARY KEY,
            metrics text[] NOT NULL,
            updated_at timestamptz NOT NULL DEFAULT now()
        )
        """,
    ),
    2: (
        # Data-quality accounting per device (issue 4): the ingest keeps these current.
        """
        ALTER TABLE devices
            ADD COLUMN last_seen_at timestamptz,
            ADD COLUMN messages bigint NOT NULL DEFAULT 0,
            ADD COLUMN seq_max bigint,
            ADD COLUMN seq_gaps bigint NOT NULL DEFAULT 0,
            ADD COLUMN seq_duplicates bigint NOT NULL DEFAULT 0,
            ADD COLUMN seq_reordered bigint NOT NULL DEFAULT 0
        """,
        """
        CREATE TABLE alerts (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            device_id text NOT NULL,
            kind text NOT NULL,
            district text NOT NULL,
            rule text NOT NULL,
            severity text NOT NULL,
            opened_at timestamptz NOT NULL,
            closed_at timestamptz,
            value double precision,
            peak_value double precision,
            close_value double precision,
            detail text NOT NULL DEFAULT ''
        )
        """,
        # Hysteresis in the database too: at most one open alert per device and rule.
        "CREATE UNIQUE INDEX alerts_one_open ON alerts (device_id, rule) WHERE closed_at IS NULL",
        "CREATE INDEX alerts_opened ON alerts (opened_at DESC)",
        "CREATE INDEX alerts_district ON alerts (district, opened_at DESC)",
        """
        CREATE TABLE commands (
            command_id text PRIMARY KEY,
            device_id text NOT NULL,
            command text NOT NULL,
            args jsonb NOT NULL DEFAULT '{}'::jsonb,
            created_at timestamptz NOT NULL DEFAULT now(),
            expires_at timestamptz NOT NULL,
            state text NOT NULL DEFAULT 'pending',
            acked_at timestamptz,
            ok boolean,
            detail text NOT NULL DEFAULT ''
        )
        """,
        "CREATE INDEX commands_device ON commands (device_id, created_at DESC)",
        """
        CREATE TABLE api_keys (
            key_id text PRIMARY KEY,
            name text NOT NULL,
            scopes text[] NOT NULL,
            secret_hash text NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            revoked_at timestamptz,
            last_used_at timestamptz
        )
        """,
    ),
    # Device counts by district, kind and state kept by triggers (issue 16: 17 M devices).
    3: device_counts.MIGRATION,
    # Room on each page for a row's next version: the latest-value upsert then changes no index
    # entry (a HOT update) instead of inserting into both indexes of a 17 M-row table. Pages
    # written before keep their fill; their rows move to new, roomier pages on their next update.
    4: ("ALTER TABLE latest_reading SET (fillfactor = 70)",),
    # What every message changes (last seen, quality counters) in a narrow table of its own, so
    # the 17 M-row registry is not rewritten, with all its indexes, per message.
    5: device_activity.MIGRATION,
}


def database_info(conn: psycopg.Connection) -> DatabaseInfo:
    """Server version and the installed TimescaleDB version (None on plain PostgreSQL)."""
    row = conn.execute(
        "SELECT current_setting('server_version'),"
        " (SELECT extversion FROM pg_extension WHERE extname = 'timescaledb')"
    ).fetchone()
    assert row is not None
    return DatabaseInfo(server_version=row[0], timescaledb=row[1], partman=partman_schema(conn))


def _try_create_timescaledb(conn: psycopg.Connection) -> None:
    row = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'),"
        " EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'),"
        " (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)"
    ).fetchone()
    assert row is not None
    installed, available, superuser = row
    if installed:
        return
    if not (available and superuser):
        # Only a superuser may create it; the stack's launchers create it when they set up the DB.
        log.info("TimescaleDB is not installed in this database: using plain PostgreSQL tables")
        return
    preloaded = conn.execute("SELECT current_setting('shared_preload_libraries')").fetchone()
    if not preloaded or "timescaledb" not in preloaded[0]:
        # Creating it without the preload makes the server drop the connection.
        log.info("TimescaleDB is installed but not preloaded: using plain PostgreSQL tables")
        return
    try:
        with conn.transaction():
            conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
    except psycopg.Error as exc:
        log.warning("TimescaleDB could not be created (%s): using plain tables", exc)


def _current_version(conn: psycopg.Connection) -> int:
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_version ("
        " version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
    )
    row = conn.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()
    return int(row[0]) if row else 0


def _reading_table_ddl(kind: Kind, *, partitioned: bool = False) -> sql.Composed:
    """The wide table of one kind; ``partitioned``: a parent partitioned by range of time (the
    unique key includes time, as PostgreSQL requires of a partitioned table's unique keys)."""
    metric_columns = sql.SQL(", ").join(
        sql.SQL("{} double precision").format(sql.Identifier(m.name)) for m in kind.metrics
    )
    return sql.SQL(
        "CREATE TABLE IF NOT EXISTS {table} ("
        " time timestamptz NOT NULL, device_id text NOT NULL, seq bigint,"
        " received_at timestamptz NOT NULL DEFAULT now(), {metrics},"
        " CONSTRAINT {unique} UNIQUE (device_id, time)){partition}"
    ).format(
        table=sql.Identifier(kind.table),
        metrics=metric_columns,
        unique=sql.Identifier(f"{kind.table}_device_time"),
        partition=sql.SQL(" PARTITION BY RANGE (time)" if partitioned else ""),
    )


def _cagg_name(kind: Kind, width: str) -> str:
    return f"{kind.table}_{width}"


def _cagg_ddl(kind: Kind, width: str) -> sql.Composed:
    """Continuous aggregate keeping count/sum/min/max per metric, so any coarser bucket can be
    recomputed exactly (avg = sum / count) and hourly rolls up into daily."""
    interval = sql.Literal(CAGG_WIDTHS[width])
    columns: list[sql.Composable] = [sql.SQL("count(*) AS n")]
    if width == "1h":
        source = sql.Identifier(kind.table)
        bucket = sql.SQL("time_bucket({}, time)").format(interval)
        for m in kind.metrics:
            col = sql.Identifier(m.name)
            columns += [
                sql.SQL("count({c}) AS {a}").format(c=col, a=sql.Identifier(f"{m.name}_count")),
                sql.SQL("sum({c}) AS {a}").format(c=col, a=sql.Identifier(f"{m.name}_sum")),
                sql.SQL("min({c}) AS {a}").format(c=col, a=sql.Identifier(f"{m.name}_min")),
                sql.SQL("max({c}) AS {a}").format(c=col, a=sql.Identifier(f"{m.name}_max")),
            ]
    else:
        # Hierarchical: the daily aggregate rolls up the hourly one.
        source = sql.Identifier(_cagg_name(kind, "1h"))
        bucket = sql.SQL("time_bucket({}, bucket)").format(interval)
        columns = [sql.SQL("sum(n)::bigint AS n")]
        for m in kind.metrics:
            for part, fn in (("count", "sum"), ("sum", "sum"), ("min", "min"), ("max", "max")):
                name = f"{m.name}_{part}"
                expr = sql.SQL("{fn}({c})").format(fn=sql.SQL(fn), c=sql.Identifier(name))
                if part == "count":
                    expr = sql.SQL("{}::bigint").format(expr)
                columns.append(sql.SQL("{} AS {}").format(expr, sql.Identifier(name)))
    return sql.SQL(
        "CREATE MATERIALIZED VIEW IF NOT EXISTS {view}"
        " WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS"
        " SELECT {bucket} AS bucket, device_id, {columns} FROM {source}"
        " GROUP BY 1, device_id WITH NO DATA"
    ).format(
        view=sql.Identifier(_cagg_name(kind, width)),
        bucket=bucket,
        columns=sql.SQL(", ").join(columns),
        source=source,
    )


def _sync_kind(conn: psycopg.Connection, kind: Kind, info: DatabaseInfo, db: DatabaseSettings) -> None:
    """Bring one kind's table (and aggregates) in line with the catalog; a no-op when it already is."""
    row = conn.execute("SELECT metrics FROM kind_schema WHERE kind = %s", (kind.name,)).fetchone()
    recorded = list(row[0]) if row else None
    wanted = list(kind.metric_names)
    if info.partman is not None and not info.has_timescaledb:
        ensure_partitioned(conn, info.partman, kind, db, _reading_table_ddl(kind, partitioned=True))
    else:
        conn.execute(_reading_table_ddl(kind))
    for metric in kind.metrics:
        conn.execute(
            sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} double precision").format(
                sql.Identifier(kind.table), sql.Identifier(metric.name)
            )
        )
    conn.execute(
        sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} (time DESC)").format(
            sql.Identifier(f"{kind.table}_time"), sql.Identifier(kind.table)
        )
    )
    if info.has_timescaledb:
        _sync_timescale(conn, kind, db, rebuild_aggregates=recorded is not None and recorded != wanted)
    conn.execute(
        "INSERT INTO kind_schema (kind, metrics) VALUES (%s, %s)"
        " ON CONFLICT (kind) DO UPDATE SET metrics = EXCLUDED.metrics, updated_at = now()"
        " WHERE kind_schema.metrics IS DISTINCT FROM EXCLUDED.metrics",
        (kind.name, wanted),
    )


def _sync_timescale(
    conn: psycopg.Connection, kind: Kind, db: DatabaseSettings, *, rebuild_aggregates: bool
) -> None:
    table = kind.table
    conn.execute(
        "SELECT create_hypertable(%s::regclass, 'time', chunk_time_interval => %s::interval,"
        " if_not_exists => true, migrate_data => true)",
        (table, db.chunk_interval),
    )
    if rebuild_aggregates:
        # A continuous aggregate cannot gain columns: drop and recreate when the catalog changed.
        for width in reversed(CAGG_WIDTHS):
            conn.execute(
                sql.SQL("DROP MATERIALIZED VIEW IF EXISTS {} CASCADE").format(
                    sql.Identifier(_cagg_name(kind, width))
                )
            )
    for width in CAGG_WIDTHS:
        conn.execute(_cagg_ddl(kind, width))
        # start_offset NULL: also re-materialise late data however old (retention bounds it).
        conn.execute(
            "SELECT add_continuous_aggregate_policy(%s::regclass, start_offset => %s::interval,"
            " end_offset => %s::interval, schedule_interval => %s::interval, if_not_exists => true)",
            (
                _cagg_name(kind, width),
                db.retention,
                "1 hour" if width == "1h" else "1 day",
                "10 minutes" if width == "1h" else "1 hour",
            ),
        )
    conn.execute(
        sql.SQL(
            "ALTER TABLE {} SET (timescaledb.compress, timescaledb.compress_segmentby = 'device_id',"
            " timescaledb.compress_orderby = 'time DESC')"
        ).format(sql.Identifier(table))
    )
    conn.execute(
        "SELECT add_compression_policy(%s::regclass, compress_after => %s::interval, if_not_exists => true)",
        (table, db.compress_after),
    )
    if db.retention:
        conn.execute(
            "SELECT add_retention_policy(%s::regclass, drop_after => %s::interval, if_not_exists => true)",
            (table, db.retention),
        )


def init_schema(db: DatabaseSettings) -> DatabaseInfo:
    """Create or migrate the schema; safe to run again and from several processes at once."""
    try:
        with psycopg.connect(db.url, autocommit=True, connect_timeout=int(db.connect_timeout_s)) as conn:
            conn.execute("SELECT pg_advisory_lock(%s)", (_INIT_LOCK_KEY,))
            try:
                _try_create_timescaledb(conn)
                info = database_info(conn)
                current = _current_version(conn)
                if current > SCHEMA_VERSION:
                    raise SchemaError(
                        f"database schema is version {current}, newer than this code ({SCHEMA_VERSION}):"
                        " upgrade cityneuron"
                    )
                for version in range(current + 1, SCHEMA_VERSION + 1):
                    with conn.transaction():
                        for statement in _MIGRATIONS[version]:
                            conn.execute(statement)
                        conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (version,))
                    log.info("schema migrated to version %d", version)
                for kind in KINDS:
                    with conn.transaction():
                        _sync_kind(conn, kind, info, db)
                with conn.transaction():
                    device_counts.sync_kind_liveness(conn)
            finally:
                conn.execute("SELECT pg_advisory_unlock(%s)", (_INIT_LOCK_KEY,))
    except psycopg.Error as exc:
        raise SchemaError(f"could not initialise the database schema: {exc}") from exc
    log.info(
        "schema version %d ready (PostgreSQL %s, TimescaleDB %s)",
        SCHEMA_VERSION,
        info.server_version,
        info.timescaledb or "absent",
    )
    return info


def schema_version(conn: psycopg.Connection) -> int:
    row = conn.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()
    return int(row[0]) if row else 0
