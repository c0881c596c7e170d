"""Per-kind SQL of a batch write, and the batch's readings grouped by kind for COPY.

Per kind, the rows are COPYed (binary) into a temporary staging table, then moved into
``reading_<kind>`` with ``ON CONFLICT (device_id, time) DO NOTHING`` (a resent reading is stored
once) and folded into ``latest_reading`` where they are newer than what it holds.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from psycopg import sql

from cityneuron.catalog import KIND_BY_NAME, KINDS, Kind
from ingest.decode import Decoded

# jsonb_build_object takes at most 100 arguments (PostgreSQL FUNC_MAX_ARGS): 50 key/value pairs.
_JSONB_PAIRS_PER_CALL = 50
# Columns of a staged row before the metrics: ord, ts_ms, device_id, seq, received_us.
METRICS_OFFSET = 5


@dataclass(frozen=True, slots=True)
class KindStatements:
    create_stage: sql.Composed
    copy: sql.Composed
    types: tuple[str, ...]
    # Inserts the staged rows and returns the ``ord`` of those it did not insert (stored before).
    insert: sql.Composed
    # Inserts the staged rows without conflict handling: fails on the first duplicate, about
    # twice as fast as ON CONFLICT (speculative insertion) when there is none, the usual case.
    insert_new: sql.Composed
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


def _kind_statements(kind: Kind) -> KindStatements:
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
    names = {
        "table": sql.Identifier(kind.table),
        "metrics": metric_list,
        "time": time_expr,
        "received": received_expr,
        "stage": stage,
    }
    # DISTINCT ON: a reading sent twice within one batch is stored once, the first received wins,
    # as ON CONFLICT DO NOTHING does across batches. The anti-join returns only the rows already
    # stored before (rare), not every inserted row, so the sequence accounting costs little.
    insert = sql.SQL(
        "WITH inserted AS ("
        " INSERT INTO {table} (time, device_id, seq, received_at, {metrics})"
        " SELECT DISTINCT ON (device_id, ts_ms) {time}, device_id, seq, {received}, {metrics}"
        " FROM {stage} ORDER BY device_id, ts_ms, ord"
        " ON CONFLICT (device_id, time) DO NOTHING RETURNING device_id, time)"
        " SELECT s.ord FROM {stage} AS s WHERE NOT EXISTS (SELECT 1 FROM inserted AS i"
        " WHERE i.device_id = s.device_id AND i.time = timestamptz 'epoch' + s.ts_ms * interval '1 millisecond')"
    ).format(**names)
    insert_new = sql.SQL(
        "INSERT INTO {table} (time, device_id, seq, received_at, {metrics})"
        " SELECT {time}, device_id, seq, {received}, {metrics} FROM {stage}"
    ).format(**names)
    # The newest device timestamp wins; a late, older reading only goes to history. A newer
    # reading that carries only some metrics keeps the others from before (old || new). The
    # newest row per device is picked first, so only one row per device builds a jsonb.
    latest = sql.SQL(
        "INSERT INTO latest_reading (device_id, kind, time, seq, metrics, received_at)"
        " SELECT device_id, {kind}, {time}, seq, {jsonb}, {received}"
        " FROM (SELECT DISTINCT ON (device_id) * FROM {stage} ORDER BY device_id, ts_ms DESC, ord) AS newest"
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
    return KindStatements(create_stage, copy, types, insert, insert_new, latest)


STATEMENTS: dict[str, KindStatements] = {kind.name: _kind_statements(kind) for kind in KINDS}


@dataclass(slots=True)
class StagedKind:
    """One kind's readings of a batch in received order, as COPY rows, plus what the insert said."""

    kind: Kind
    rows: list[tuple[Any, ...]] = field(default_factory=list)
    districts: dict[str, str] = field(default_factory=dict)
    # Per row: True when the (device, time) was stored before or earlier in this batch.
    duplicate: list[bool] = field(default_factory=list)

    @property
    def stored(self) -> int:
        return len(self.rows) - sum(self.duplicate)

    def ts_ms(self) -> np.ndarray:
        return np.fromiter((row[1] for row in self.rows), dtype=np.int64, count=len(self.rows))

    def column(self, metric: str) -> np.ndarray:
        """The metric's values (NaN where a reading does not carry it)."""
        index = METRICS_OFFSET + self.kind.metric_names.index(metric)
        return np.array([row[index] for row in self.rows], dtype=np.float64)

    def device_ids(self) -> list[str]:
        return [row[2] for row in self.rows]

    def has_repeats(self) -> bool:
        """True when some (device, time) occurs twice in this batch."""
        return len({(row[2], row[1]) for row in self.rows}) < len(self.rows)

    def mark_all_new(self) -> None:
        self.duplicate = [False] * len(self.rows)

    def mark_duplicates(self, stored_before: Iterable[int]) -> None:
        """Flag the rows the database did not insert: ``stored_before`` holds their ``ord``; a
        second copy of a (device, time) within the batch is flagged here."""
        flagged = set(stored_before)
        seen: set[tuple[str, int]] = set()
        duplicate = []
        for row in self.rows:
            key = (row[2], row[1])
            duplicate.append(row[0] in flagged or key in seen)
            seen.add(key)
        self.duplicate = duplicate


def stage_batch(batch: Iterable[Decoded]) -> dict[str, StagedKind]:
    """Group the batch's valid readings by kind, in received order, as COPY rows."""
    staged: dict[str, StagedKind] = {}
    order = 0
    for decoded in batch:
        if not decoded.rows or decoded.topic is None:
            continue
        topic = decoded.topic
        target = staged.get(topic.kind)
        if target is None:
            target = staged[topic.kind] = StagedKind(KIND_BY_NAME[topic.kind])
        target.districts[topic.device_id] = topic.district
        names = target.kind.metric_names
        received_us = int(decoded.message.received_at * 1_000_000)
        for row in decoded.rows:
            values = row.values
            target.rows.append(
                (order, row.ts_ms, topic.device_id, row.seq, received_us, *[values.get(n) for n in names])
            )
            order += 1
    return staged
