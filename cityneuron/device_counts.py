"""Devices per district, kind and state, kept by the database as the registry changes.

At 17 M devices, counting states with ``GROUP BY`` over ``devices`` costs seconds per request
and per silence check. Instead statement-level triggers with transition tables (one aggregate
per INSERT/UPDATE/DELETE statement, whatever its size, so a 2,000-device ingest batch costs one
small upsert) on ``device_activity`` (cityneuron.device_activity: each device's state, copied
from ``devices`` where it is not its own) keep ``device_state_counts``: for each (district,
kind) the devices that are

- ``offline`` (``online`` is false), ``unknown`` (never heard from), or
- ``seen``: counted in the bucket of their ``last_seen_at``. Buckets are 1/100 of the kind's
  reporting interval wide (``kind_liveness.bucket_s``), so "silent" (nothing for
  ``silent_after_intervals`` x the interval, api.queries.liveness) is a sum over the buckets
  wholly older than the threshold: exact to 1 % of the interval, at a cost that depends on the
  number of buckets (thousands), not of devices.

Every path that changes a device's state (ingest's quality counters, statuses through the
copy of ``online``, auto-registration, the registry COPY, deletion) goes through that table and
its triggers, so there is nothing to keep in step by hand. Rows whose count fell to zero are removed by :func:`prune`.
"""

from __future__ import annotations

from collections.abc import Iterable

import psycopg
from psycopg import sql

from cityneuron.catalog import KINDS, Kind

# A bucket is this fraction of the kind's interval (never under a second).
BUCKETS_PER_INTERVAL = 100
# Kinds outside the catalog (auto-registered oddities) are bucketed by the minute.
_DEFAULT_BUCKET_S = 60.0


def bucket_s(kind: Kind) -> float:
    return max(1.0, kind.interval_s / BUCKETS_PER_INTERVAL)


# (state, bucket) of one row of a devices transition table ``t`` joined to kind_liveness ``k``.
_STATE = (
    "CASE WHEN t.online IS FALSE THEN 'offline' WHEN t.last_seen_at IS NULL THEN 'unknown' ELSE 'seen' END"
)
_BUCKET = (
    "CASE WHEN t.online IS FALSE OR t.last_seen_at IS NULL THEN '-infinity'::timestamptz"
    f" ELSE date_bin(make_interval(secs => coalesce(k.bucket_s, {_DEFAULT_BUCKET_S})), t.last_seen_at,"
    " 'epoch'::timestamptz) END"
)


# The SQL below is assembled from this module's constants only (no input): DDL for the migration.


def _aggregate(sources: Iterable[tuple[str, int]]) -> str:
    """SELECT of (district, kind, state, bucket, delta) over transition tables ``(name, sign)``."""
    union = " UNION ALL ".join(
        f"SELECT district, kind, online, last_seen_at, {sign} AS d FROM {name}"  # noqa: S608
        for name, sign in sources
    )
    return (
        f"SELECT t.district, t.kind, {_STATE}, {_BUCKET}, sum(t.d)::bigint"  # noqa: S608
        f" FROM ({union}) AS t LEFT JOIN kind_liveness AS k ON k.kind = t.kind"
        " GROUP BY 1, 2, 3, 4 HAVING sum(t.d) <> 0 ORDER BY 1, 2, 3, 4"
    )


def _apply(sources: Iterable[tuple[str, int]]) -> str:
    return (
        "INSERT INTO device_state_counts AS c (district, kind, state, seen_bucket, n) "
        + _aggregate(sources)
        + " ON CONFLICT (district, kind, state, seen_bucket) DO UPDATE SET n = c.n + EXCLUDED.n"
    )


def _function(name: str, body: str) -> str:
    return (
        f"CREATE OR REPLACE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $fn$"
        f" BEGIN {body}; RETURN NULL; END $fn$"
    )


_NEW = ("new_rows", 1)
_OLD = ("old_rows", -1)

# The triggers keeping the counts: name -> (event, what follows the table name). On ``devices``
# from schema version 3, on ``device_activity`` from version 5 (cityneuron.device_activity).
TRIGGERS: dict[str, tuple[str, str]] = {
    "device_counts_insert": (
        "AFTER INSERT",
        "REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION device_counts_insert()",
    ),
    "device_counts_update": (
        "AFTER UPDATE",
        "REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows"
        " FOR EACH STATEMENT EXECUTE FUNCTION device_counts_update()",
    ),
    "device_counts_delete": (
        "AFTER DELETE",
        "REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION device_counts_delete()",
    ),
    "device_counts_truncate": (
        "AFTER TRUNCATE",
        "FOR EACH STATEMENT EXECUTE FUNCTION device_counts_truncate()",
    ),
}

# Schema version 3 (cityneuron.schema): the tables, the triggers, and the counts of the devices
# already registered (one scan, at migration time).
MIGRATION: tuple[str, ...] = (
    "CREATE TABLE kind_liveness (kind text PRIMARY KEY, bucket_s double precision NOT NULL)",
    """
    CREATE TABLE device_state_counts (
        district text NOT NULL,
        kind text NOT NULL,
        state text NOT NULL,
        seen_bucket timestamptz NOT NULL,
        n bigint NOT NULL,
        PRIMARY KEY (district, kind, state, seen_bucket)
    )
    """,
    _function("device_counts_insert", _apply([_NEW])),
    _function("device_counts_update", _apply([_NEW, _OLD])),
    _function("device_counts_delete", _apply([_OLD])),
    _function("device_counts_truncate", "DELETE FROM device_state_counts"),
    *(f"CREATE TRIGGER {name} {event} ON devices {rest}" for name, (event, rest) in TRIGGERS.items()),
    # Silence alerts find the devices that just fell silent by range, not by scanning them all.
    "CREATE INDEX devices_kind_last_seen ON devices (kind, last_seen_at)",
    # /devices?kind=...: pages in id order within a kind. Without it, a kind whose ids sort last
    # ("water-...") is found by walking the primary key past 10 M other devices.
    "CREATE INDEX devices_kind_id ON devices (kind, device_id)",
)


def sync_kind_liveness(conn: psycopg.Connection) -> None:
    """Bucket widths from the catalog, then recount from ``devices`` when they changed.

    On the first run after the migration the table is empty: this fills it and counts the
    devices already registered (the migration cannot: the widths come from the catalog).
    """
    wanted = {k.name: bucket_s(k) for k in KINDS}
    stored: dict[str, float] = dict(conn.execute("SELECT kind, bucket_s FROM kind_liveness").fetchall())
    if stored == wanted:
        return
    # No device changes while recounting (writers wait; this runs on migration or catalog change).
    conn.execute("LOCK TABLE device_activity IN SHARE MODE")
    conn.execute("DELETE FROM kind_liveness")
    with conn.cursor() as cur:
        cur.executemany("INSERT INTO kind_liveness (kind, bucket_s) VALUES (%s, %s)", list(wanted.items()))
    conn.execute("DELETE FROM device_state_counts")
    conn.execute(
        "INSERT INTO device_state_counts (district, kind, state, seen_bucket, n)"  # noqa: S608
        f" SELECT t.district, t.kind, {_STATE}, {_BUCKET}, count(*)"
        " FROM device_activity AS t LEFT JOIN kind_liveness AS k ON k.kind = t.kind GROUP BY 1, 2, 3, 4"
    )


def prune(conn: psycopg.Connection) -> int:
    """Remove the rows whose count fell to zero (devices moved to newer buckets)."""
    return conn.execute("DELETE FROM device_state_counts WHERE n = 0").rowcount


def status_counts_sql(
    silent_after_intervals: float, district: str | None = None
) -> tuple[sql.Composed, list[object]]:
    """Query and parameters giving (district, kind, status, n) from the counts: a bucket is
    silent when all of it is older than ``silent_after_intervals`` x the kind's interval (the
    rule of api.queries.liveness); ``district`` limits it to one district."""
    params: list[object] = [[k.name for k in KINDS], [k.interval_s * silent_after_intervals for k in KINDS]]
    where = sql.SQL("")
    if district is not None:
        where = sql.SQL(" AND c.district = %s")
        params.append(district)
    query = sql.SQL(
        "SELECT c.district, c.kind, CASE WHEN c.state <> 'seen' THEN c.state"
        " WHEN a.after_s IS NOT NULL AND c.seen_bucket"
        " + make_interval(secs => coalesce(l.bucket_s, {default}))"
        " <= now() - make_interval(secs => a.after_s) THEN 'silent' ELSE 'online' END AS status,"
        " sum(c.n)::bigint FROM device_state_counts c"
        " LEFT JOIN kind_liveness l ON l.kind = c.kind"
        " LEFT JOIN unnest(%s::text[], %s::float8[]) AS a(kind, after_s) ON a.kind = c.kind"
        " WHERE c.n <> 0{where} GROUP BY 1, 2, 3"
    ).format(default=sql.Literal(_DEFAULT_BUCKET_S), where=where)
    return query, params
