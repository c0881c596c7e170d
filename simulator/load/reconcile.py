"""After the run: what reached the database, per device and in total, and how late."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import psycopg
from psycopg import sql

from cityneuron.catalog import KIND_BY_NAME
from cityneuron.contract import batch_topic
from simulator.errors import SimulatorError
from simulator.load.payloads import LoadDevices

log = logging.getLogger("cityneuron.load")

_POLL_S = 0.5


class ReconcileError(SimulatorError):
    """The database could not be read for reconciliation."""


@dataclass
class Reconciliation:
    expected: int
    stored: int
    missing: int
    missing_by_device: dict[str, int]
    dead_letters_by_reason: dict[str, int]
    duplicates_counted: int  # by the ingest (device_activity.seq_duplicates delta)
    arrival_latency_ms: dict[str, float | None] = field(default_factory=dict)
    settle_s: float = 0.0

    @property
    def dead_lettered(self) -> int:
        return sum(self.dead_letters_by_reason.values())


def duplicates_snapshot(url: str, devices: LoadDevices) -> int:
    """Sum of the ingest's duplicate counters over the load's devices (before/after a run)."""
    try:
        with psycopg.connect(url) as conn:
            row = conn.execute(
                "SELECT coalesce(sum(seq_duplicates), 0) FROM device_activity WHERE device_id = ANY(%s)",
                (devices.ids,),
            ).fetchone()
    except psycopg.Error as exc:
        raise ReconcileError(f"cannot read the device registry: {exc}") from exc
    return int(row[0]) if row else 0


def reconcile(
    url: str,
    devices: LoadDevices,
    keys: np.ndarray,
    *,
    started_ms: int,
    duplicates_before: int,
    settle_timeout_s: float,
) -> Reconciliation:
    """Compare the expected (device, time) readings with the stored ones.

    Waits until everything expected is stored or ``settle_timeout_s`` has passed, whichever
    comes first: a stall of the ingest shorter than that is a delay, not a loss. (Giving up
    earlier because the count stopped growing for a moment reported such stalls as loss.)
    """
    try:
        with psycopg.connect(url) as conn:
            _load_expected(conn, devices, keys)
            started = time.monotonic()
            while True:
                stored = _stored_count(conn)
                remaining = settle_timeout_s - (time.monotonic() - started)
                if stored >= len(keys) or remaining <= 0:
                    break
                time.sleep(min(_POLL_S, remaining))
            settle_s = time.monotonic() - started
            missing_by_device = _missing_by_device(conn)
            latency = _arrival_latency(conn)
            letters = _dead_letters(conn, devices, started_ms)
            duplicates_after = int(
                conn.execute(
                    "SELECT coalesce(sum(seq_duplicates), 0) FROM device_activity WHERE device_id = ANY(%s)",
                    (devices.ids,),
                ).fetchone()[0]  # type: ignore[index]
            )
    except psycopg.Error as exc:
        raise ReconcileError(f"reconciliation query failed: {exc}") from exc
    return Reconciliation(
        expected=len(keys),
        stored=stored,
        missing=len(keys) - stored,
        missing_by_device=missing_by_device,
        dead_letters_by_reason=letters,
        duplicates_counted=duplicates_after - duplicates_before,
        arrival_latency_ms=latency,
        settle_s=round(settle_s, 2),
    )


def _load_expected(conn: psycopg.Connection, devices: LoadDevices, keys: np.ndarray) -> None:
    conn.execute("CREATE TEMP TABLE load_expected (device_id text, kind text, time timestamptz)")
    with conn.cursor().copy("COPY load_expected (device_id, kind, time) FROM STDIN") as copy:
        for device, ts_ms in keys.tolist():
            copy.write_row(
                (devices.ids[device], devices.kind[device], datetime.fromtimestamp(ts_ms / 1000, tz=UTC))
            )
    conn.execute("CREATE INDEX ON load_expected (kind, device_id, time)")
    conn.execute("ANALYZE load_expected")


def _per_kind_join(select: str) -> sql.Composed:
    """``select`` over the expected readings joined with their kind's table, all kinds unioned."""
    kinds = sorted(KIND_BY_NAME)
    parts = [
        sql.SQL(
            "SELECT e.device_id, e.time, r.received_at FROM load_expected e"
            " LEFT JOIN {table} r ON r.device_id = e.device_id AND r.time = e.time WHERE e.kind = {kind}"
        ).format(table=sql.Identifier(KIND_BY_NAME[k].table), kind=sql.Literal(k))
        for k in kinds
    ]
    return sql.SQL(select).format(joined=sql.SQL(" UNION ALL ").join(parts))


def _stored_count(conn: psycopg.Connection) -> int:
    row = conn.execute(_per_kind_join("SELECT count(received_at) FROM ({joined}) j")).fetchone()
    return int(row[0]) if row else 0


def _missing_by_device(conn: psycopg.Connection, limit: int = 50) -> dict[str, int]:
    rows = conn.execute(
        _per_kind_join(
            "SELECT device_id, count(*) FROM ({joined}) j WHERE received_at IS NULL"
            " GROUP BY device_id ORDER BY count(*) DESC, device_id LIMIT %s"
        ),
        (limit,),
    ).fetchall()
    return {device_id: int(n) for device_id, n in rows}


def _arrival_latency(conn: psycopg.Connection) -> dict[str, float | None]:
    """Intended send time (the reading's device time) to the ingest's receive time, ms."""
    row = conn.execute(
        _per_kind_join(
            "SELECT percentile_cont(ARRAY[0.5, 0.9, 0.99, 0.999]) WITHIN GROUP (ORDER BY lat),"
            " max(lat) FROM (SELECT extract(epoch FROM received_at - time) * 1000 AS lat"
            " FROM ({joined}) j WHERE received_at IS NOT NULL) l"
        )
    ).fetchone()
    if row is None or row[0] is None:
        return {"p50": None, "p90": None, "p99": None, "p999": None, "max": None}
    p50, p90, p99, p999 = (round(float(v), 3) for v in row[0])
    return {"p50": p50, "p90": p90, "p99": p99, "p999": p999, "max": round(float(row[1]), 3)}


def _dead_letters(conn: psycopg.Connection, devices: LoadDevices, started_ms: int) -> dict[str, int]:
    """Dead letters of the load's devices, and of its gateway batches as a whole (those name no
    device: a batch refused before its items were read, or an item naming no device)."""
    batch_topics = sorted({batch_topic(devices.district_of(d), devices.kind[d]) for d in range(len(devices))})
    rows = conn.execute(
        "SELECT reason, count(*) FROM dead_letter WHERE received_at >= %s"
        " AND (device_id = ANY(%s) OR (device_id IS NULL AND topic = ANY(%s)))"
        " GROUP BY reason ORDER BY reason",
        (datetime.fromtimestamp(started_ms / 1000, tz=UTC), devices.ids, batch_topics),
    ).fetchall()
    return {reason: int(n) for reason, n in rows}
