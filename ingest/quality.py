"""Data-quality accounting per device: messages, last seen, and the ``seq`` counters.

Runs inside the batch transaction with two statements per batch whatever its size: one that
locks the batch's ``device_activity`` rows (cityneuron.device_activity) in device_id order, so
concurrent ingest processes never deadlock on them, and reads their counters; one that writes
the new counters back. Semantics
(docs/architecture.md, "Data quality accounting"), per device, readings in received order:

- a reading whose (device, time) is already stored is a duplicate: ``seq_duplicates`` + 1, and
  nothing else changes;
- the first seq seen sets ``seq_max``;
- seq = seq_max + 1 is in order; seq > seq_max + 1 adds seq - seq_max - 1 to ``seq_gaps``;
- seq <= seq_max on a reading older than the device's newest reading arrived late: it fills a
  gap (``seq_reordered`` + 1, ``seq_gaps`` - 1, never below 0);
- seq <= seq_max on a reading newer than every reading of the device is a counter restart
  (reboot, firmware update): ``seq_max`` starts again from it, nothing else is counted.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import psycopg

from cityneuron import contract
from cityneuron.decode import NO_SEQ, Decoded
from ingest.staging import StagedKind


@dataclass(slots=True)
class Device:
    """A device's registry row and quality counters, locked for the batch."""

    kind: str
    district: str
    messages: int
    last_seen_at: datetime | None
    seq_max: int | None
    seq_gaps: int
    seq_duplicates: int
    seq_reordered: int
    newest_ms: int | None
    changed: bool = False


@dataclass(slots=True)
class QualityTotals:
    """Per kind, what this batch added (for the Prometheus counters)."""

    gaps: Counter[str] = field(default_factory=Counter)
    gaps_filled: Counter[str] = field(default_factory=Counter)
    reordered: Counter[str] = field(default_factory=Counter)
    restarts: Counter[str] = field(default_factory=Counter)


def lock_devices(conn: psycopg.Connection, device_ids: list[str]) -> dict[str, Device]:
    """Lock and read the activity rows of the registered devices among ``device_ids`` (sorted:
    concurrent ingest processes then lock in one order), with the time of their newest reading before this batch
    (to tell a late reading from a restarted counter)."""
    if not device_ids:
        return {}
    rows = conn.execute(
        "SELECT a.device_id, a.kind, a.district, a.messages, a.last_seen_at, a.seq_max, a.seq_gaps,"
        " a.seq_duplicates, a.seq_reordered,"
        " (extract(epoch FROM l.time) * 1000)::bigint"
        " FROM device_activity AS a LEFT JOIN latest_reading AS l USING (device_id)"
        " WHERE a.device_id = ANY(%s) ORDER BY a.device_id FOR UPDATE OF a",
        (device_ids,),
    ).fetchall()
    return {row[0]: Device(*row[1:]) for row in rows}


def account(devices: dict[str, Device], batch: list[Decoded], staged: Iterable[StagedKind]) -> QualityTotals:
    """Apply the batch to the locked devices' counters (in memory; see :func:`write_devices`)."""
    for decoded in batch:
        topic = decoded.topic
        device = devices.get(topic.device_id) if topic is not None else None
        if topic is None or device is None or (device.kind, device.district) != (topic.kind, topic.district):
            continue  # unknown device, kind or district mismatch: dead-lettered, not this device's message
        seen_s: float | None = None
        if topic.channel == contract.TELEMETRY:
            device.messages += 1
            seen_s = decoded.message.received_at
        elif decoded.status is not None and decoded.status.online:
            # A retained "online" is delivered again on every new subscription: its own ts, not
            # the delivery time, says when the device last spoke.
            seen_s = min(decoded.status.ts_ms / 1000, decoded.message.received_at)
        if seen_s is not None:
            seen = datetime.fromtimestamp(seen_s, tz=UTC)
            if device.last_seen_at is None or seen > device.last_seen_at:
                device.last_seen_at = seen
            device.changed = True
    totals = QualityTotals()
    for kind_rows in staged:
        _account_kind(devices, kind_rows, totals)
    return totals


def _account_kind(devices: dict[str, Device], kind_rows: StagedKind, totals: QualityTotals) -> None:
    """Each device's readings in received order. A device's run whose readings are all new, all
    carry a seq, and count up by one, is in order after its first reading: that reading takes
    the exact step, the rest only move ``seq_max`` and the newest time (no loop per reading)."""
    n = len(kind_rows)
    if not n:
        return
    kind = kind_rows.kind.name
    order = np.lexsort((np.arange(n), kind_rows.code))
    code = kind_rows.code[order]
    starts = np.flatnonzero(np.r_[True, code[1:] != code[:-1]])
    seq_a, ts_a, dup_a = kind_rows.seq[order], kind_rows.ts[order], kind_rows.duplicate[order]
    irregular = dup_a | (seq_a == NO_SEQ)
    irregular[1:] |= seq_a[1:] != seq_a[:-1] + 1
    irregular[starts] = dup_a[starts] | (seq_a[starts] == NO_SEQ)
    simple = ~np.logical_or.reduceat(irregular, starts)
    seq, ts, dup = seq_a.tolist(), ts_a.tolist(), dup_a.tolist()
    segment = kind_rows.segment[order[starts]].tolist()
    ends = [*starts[1:].tolist(), n]
    for start, end, run_is_simple, seg in zip(starts.tolist(), ends, simple.tolist(), segment, strict=True):
        device = devices.get(kind_rows.devices[seg])
        if device is None:
            continue
        device.changed = True
        _apply(device, ts[start], seq[start], dup[start], kind, totals)
        if run_is_simple and device.seq_max == seq[start] and end - start > 1:
            device.seq_max = seq[end - 1]
            newest = max(ts[start + 1 : end])
            if device.newest_ms is None or newest > device.newest_ms:
                device.newest_ms = newest
            continue
        for i in range(start + 1, end):
            _apply(device, ts[i], seq[i], dup[i], kind, totals)


def _apply(device: Device, ts_ms: int, seq: int, duplicate: bool, kind: str, totals: QualityTotals) -> None:
    if duplicate:
        device.seq_duplicates += 1
        return
    if seq != NO_SEQ:
        _step(device, ts_ms, seq, kind, totals)
    if device.newest_ms is None or ts_ms > device.newest_ms:
        device.newest_ms = ts_ms


def _step(device: Device, ts_ms: int, seq: int, kind: str, totals: QualityTotals) -> None:
    if device.seq_max is None:
        device.seq_max = seq
    elif seq > device.seq_max:
        missing = seq - device.seq_max - 1
        if missing:
            device.seq_gaps += missing
            totals.gaps[kind] += missing
        device.seq_max = seq
    elif device.newest_ms is not None and ts_ms > device.newest_ms:
        device.seq_max = seq
        totals.restarts[kind] += 1
    else:
        device.seq_reordered += 1
        totals.reordered[kind] += 1
        if device.seq_gaps > 0:
            device.seq_gaps -= 1
            totals.gaps_filled[kind] += 1


CREATE_STAGE = (
    "CREATE TEMP TABLE IF NOT EXISTS _stage_devices (device_id text, messages int8,"
    " last_seen_at timestamptz, seq_max int8, seq_gaps int8, seq_duplicates int8, seq_reordered int8)"
    " ON COMMIT DELETE ROWS"
)
_STAGE_TYPES = ("text", "int8", "timestamptz", "int8", "int8", "int8", "int8")


def write_devices(conn: psycopg.Connection, devices: dict[str, Device]) -> None:
    """Write the changed devices' counters back (their rows are locked by :func:`lock_devices`).

    Binary COPY into a staging table, then one UPDATE: adapting seven Python lists as array
    parameters costs several times more than COPY for a batch of a few thousand devices.
    """
    with conn.cursor() as cur:
        with cur.copy(
            "COPY _stage_devices (device_id, messages, last_seen_at, seq_max, seq_gaps, seq_duplicates,"
            " seq_reordered) FROM STDIN (FORMAT BINARY)"
        ) as copy:
            copy.set_types(list(_STAGE_TYPES))
            changed = 0
            for device_id, d in devices.items():
                if d.changed:
                    counters = (d.seq_max, d.seq_gaps, d.seq_duplicates, d.seq_reordered)
                    copy.write_row((device_id, d.messages, d.last_seen_at, *counters))
                    changed += 1
        if not changed:
            return
        cur.execute(
            "UPDATE device_activity AS a SET messages = u.messages, last_seen_at = u.last_seen_at,"
            " seq_max = u.seq_max, seq_gaps = u.seq_gaps, seq_duplicates = u.seq_duplicates,"
            " seq_reordered = u.seq_reordered"
            " FROM _stage_devices AS u WHERE a.device_id = u.device_id"
        )
