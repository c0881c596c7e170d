"""Retention of the two ordinary tables that grow with what happens, not with the fleet.

``dead_letter`` (everything ingest refused) and closed ``alerts`` are plain tables on plain
PostgreSQL and with TimescaleDB alike, so their old rows go by DELETE, not by dropping partitions.
A retention shorter than the meters' day of uploads turns each day's upload into ``too_old`` dead
letters (millions an hour at 1:1), so without this the database grows although the reading
partitions are dropped (docs/scale.md).

Each DELETE removes at most ``batch_rows`` rows found through an index, in its own transaction:
no statement holds its row locks long or scans the table, and ingest keeps writing meanwhile.

How long rows are kept (:func:`cutoffs`):

- dead letters: ``database.dead_letter_retention``, capped by ``database.retention`` when that is
  set and shorter: a ``too_old`` dead letter of readings the retention already dropped tells
  nothing the retention did not.
- closed alerts: ``database.closed_alert_retention``, but never less than ``database.retention``:
  an alert explains readings that are still stored. Open alerts are never removed, however old.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import datetime

import psycopg

from cityneuron.errors import ConfigError
from cityneuron.settings import DatabaseSettings

log = logging.getLogger("cityneuron.retention")

# Rows per DELETE: a few tens of milliseconds each, short enough for ingest's writes to slip in.
BATCH_ROWS = 10_000
# Session advisory lock: two ingest replicas (or ingest and a cron `db maintain`) would only
# wait on each other's row locks deleting the same rows.
_LOCK_KEY = 0x43_4E_52_54

_CUTOFFS = """
SELECT now() - least(%(dead)s::interval, %(readings)s::interval),
       now() - greatest(%(alerts)s::interval, %(readings)s::interval),
       coalesce(%(dead)s::interval > interval '0', true)
         AND coalesce(%(alerts)s::interval > interval '0', true)
         AND coalesce(%(readings)s::interval > interval '0', true)
"""

# The oldest ``batch_rows`` dead letters before the cutoff, by the (received_at) index, from where
# the last batch ended (``after``) so no batch walks the index entries of rows already deleted.
_DELETE_DEAD_LETTERS = """
WITH gone AS (
    DELETE FROM dead_letter WHERE ctid = ANY(ARRAY(
        SELECT ctid FROM dead_letter
        WHERE received_at >= %(after)s AND received_at < %(cutoff)s
        ORDER BY received_at LIMIT %(n)s))
    AND received_at < %(cutoff)s
    RETURNING received_at)
SELECT count(*), max(received_at) FROM gone
"""

# Open alerts stay, so the scan walks on by (opened_at, id) past them instead of meeting them
# again in every batch; closed_at >= opened_at (ingest.alerts.store), so every alert closed
# before the cutoff was opened before it and the (opened_at) index bounds the search.
_SCAN_ALERTS = """
SELECT id, opened_at, closed_at IS NOT NULL AND closed_at < %(cutoff)s FROM alerts
WHERE opened_at < %(cutoff)s AND opened_at >= %(after)s AND (opened_at, id) > (%(after)s, %(after_id)s)
ORDER BY opened_at, id LIMIT %(n)s
"""
_DELETE_ALERTS = "DELETE FROM alerts WHERE id = ANY(%s) AND closed_at < %s"

_BEGINNING = datetime.fromisoformat("0001-01-01T00:00:00+00:00")


@dataclass(frozen=True)
class Pruned:
    """What one run removed, and the cutoffs it removed before (None: that table kept whole)."""

    dead_letters: int = 0
    closed_alerts: int = 0
    dead_letter_cutoff: datetime | None = None
    closed_alert_cutoff: datetime | None = None
    # False when another session held the lock and this run left the tables to it.
    ran: bool = True


def cutoffs(conn: psycopg.Connection, db: DatabaseSettings) -> tuple[datetime | None, datetime | None]:
    """(dead letters received before, alerts closed before) are past their retention; None keeps
    that table whole. Raises ConfigError for a setting that is not a positive interval."""
    try:
        row = conn.execute(
            _CUTOFFS,
            {"dead": db.dead_letter_retention, "alerts": db.closed_alert_retention, "readings": db.retention},
        ).fetchone()
    except psycopg.errors.DataError as exc:
        raise ConfigError(
            "database.retention, dead_letter_retention and closed_alert_retention must be PostgreSQL"
            f" intervals such as '30 days': {str(exc).splitlines()[0]}"
        ) from exc
    assert row is not None
    dead, alerts, positive = row
    if not positive:
        raise ConfigError(
            "database.retention, dead_letter_retention and closed_alert_retention must be longer than zero"
        )
    # least/greatest skip NULLs: without their own retention, closed alerts are kept for good,
    # not for the readings' retention.
    return dead, (alerts if db.closed_alert_retention is not None else None)


def prune_dead_letters(
    conn: psycopg.Connection,
    cutoff: datetime,
    *,
    batch_rows: int = BATCH_ROWS,
    stop: threading.Event | None = None,
) -> int:
    """Delete the dead letters received before ``cutoff``, ``batch_rows`` per statement."""
    removed, after = 0, _BEGINNING
    while stop is None or not stop.is_set():
        row = conn.execute(
            _DELETE_DEAD_LETTERS, {"after": after, "cutoff": cutoff, "n": batch_rows}
        ).fetchone()
        assert row is not None
        count, newest = row
        removed += count
        if count < batch_rows:
            break
        after = newest
    return removed


def prune_closed_alerts(
    conn: psycopg.Connection,
    cutoff: datetime,
    *,
    batch_rows: int = BATCH_ROWS,
    stop: threading.Event | None = None,
) -> int:
    """Delete the alerts closed before ``cutoff``, looking at ``batch_rows`` alerts per statement."""
    removed, after, after_id = 0, _BEGINNING, 0
    while stop is None or not stop.is_set():
        rows = conn.execute(
            _SCAN_ALERTS, {"after": after, "after_id": after_id, "cutoff": cutoff, "n": batch_rows}
        ).fetchall()
        closed = [alert_id for alert_id, _, is_closed in rows if is_closed]
        if closed:
            removed += conn.execute(_DELETE_ALERTS, (closed, cutoff)).rowcount
        if len(rows) < batch_rows:
            break
        after_id, after, _ = rows[-1]
    return removed


def prune(
    conn: psycopg.Connection,
    db: DatabaseSettings,
    *,
    batch_rows: int = BATCH_ROWS,
    stop: threading.Event | None = None,
) -> Pruned:
    """Remove the dead letters and closed alerts past their retention; ``conn`` must be in
    autocommit so that each batch commits on its own. ``stop`` ends the run between batches."""
    if not conn.autocommit:
        raise ValueError("table retention needs an autocommit connection (one transaction per batch)")
    dead_cutoff, alert_cutoff = cutoffs(conn, db)
    if dead_cutoff is None and alert_cutoff is None:
        return Pruned()
    row = conn.execute("SELECT pg_try_advisory_lock(%s)", (_LOCK_KEY,)).fetchone()
    if not (row and row[0]):
        log.info("table retention: another session is applying it, skipped")
        return Pruned(ran=False)
    try:
        dead = (
            0
            if dead_cutoff is None
            else prune_dead_letters(conn, dead_cutoff, batch_rows=batch_rows, stop=stop)
        )
        closed = (
            0
            if alert_cutoff is None
            else prune_closed_alerts(conn, alert_cutoff, batch_rows=batch_rows, stop=stop)
        )
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))
    pruned = Pruned(dead, closed, dead_cutoff, alert_cutoff)
    if dead or closed:
        log.info(
            "table retention: %d dead letters received before %s and %d alerts closed before %s removed",
            dead,
            dead_cutoff,
            closed,
            alert_cutoff,
        )
    return pruned
