"""Per-kind SQL of a batch write, and the batch's readings of each kind as columns for COPY.

The usual case (no reading of the batch stored before) COPYs the readings straight into
``reading_<kind>`` (binary, built in bulk by :mod:`ingest.copybuf`). A resent reading makes that
COPY fail on the unique key; then the readings go through a temporary staging table into
``reading_<kind>`` with ``ON CONFLICT (device_id, time) DO NOTHING`` (a resent reading is stored
once). Either way the newest reading per device is folded into ``latest_reading`` from the
staging table, where it is newer than what that table holds.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
from psycopg import sql

from cityneuron.catalog import KIND_BY_NAME, KINDS, Kind
from cityneuron.decode import NO_SEQ, Block, Decoded
from ingest.copybuf import PG_EPOCH_US, CopyColumns

# jsonb_build_object takes at most 100 arguments (PostgreSQL FUNC_MAX_ARGS): 50 key/value pairs.
_JSONB_PAIRS_PER_CALL = 50


@dataclass(frozen=True, slots=True)
class KindStatements:
    create_stage: sql.Composed
    # COPY into reading_<kind> itself: fails on the first reading stored before.
    copy_direct: sql.Composed
    # COPY into the staging table (the same columns, plus ``ord``: the row's place in the batch).
    copy_stage: sql.Composed
    # Inserts the staged rows and returns the ``ord`` of those it did not insert (stored before).
    insert: sql.Composed
    latest: sql.Composed


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
    columns = ["time", "device_id", "seq", "received_at", *kind.metric_names]
    create_stage = sql.SQL(
        "CREATE TEMP TABLE IF NOT EXISTS {stage} (ord integer, time timestamptz, device_id text,"
        " seq bigint, received_at timestamptz, {metrics}) ON COMMIT DELETE ROWS"
    ).format(
        stage=stage,
        metrics=sql.SQL(", ").join(sql.SQL("{} double precision").format(m) for m in metric_ids),
    )
    copy_direct = sql.SQL("COPY {table} ({columns}) FROM STDIN (FORMAT BINARY)").format(
        table=sql.Identifier(kind.table), columns=sql.SQL(", ").join(map(sql.Identifier, columns))
    )
    copy_stage = sql.SQL("COPY {stage} ({columns}) FROM STDIN (FORMAT BINARY)").format(
        stage=stage, columns=sql.SQL(", ").join(map(sql.Identifier, ["ord", *columns]))
    )
    names = {"table": sql.Identifier(kind.table), "metrics": metric_list, "stage": stage}
    # DISTINCT ON: a reading sent twice within one batch is stored once, the first received wins,
    # as ON CONFLICT DO NOTHING does across batches. The anti-join returns only the rows already
    # stored before (rare), not every inserted row, so the sequence accounting costs little.
    insert = sql.SQL(
        "WITH inserted AS ("
        " INSERT INTO {table} (time, device_id, seq, received_at, {metrics})"
        " SELECT DISTINCT ON (device_id, time) time, device_id, seq, received_at, {metrics}"
        " FROM {stage} ORDER BY device_id, time, ord"
        " ON CONFLICT (device_id, time) DO NOTHING RETURNING device_id, time)"
        " SELECT s.ord FROM {stage} AS s WHERE NOT EXISTS (SELECT 1 FROM inserted AS i"
        " WHERE i.device_id = s.device_id AND i.time = s.time)"
    ).format(**names)
    # The newest device timestamp wins; a late, older reading only goes to history. A newer
    # reading that carries only some metrics keeps the others from before (old || new). The
    # newest row per device is picked first, so only one row per device builds a jsonb.
    latest = sql.SQL(
        "INSERT INTO latest_reading (device_id, kind, time, seq, metrics, received_at)"
        " SELECT device_id, {kind}, time, seq, {jsonb}, received_at"
        " FROM (SELECT DISTINCT ON (device_id) * FROM {stage} ORDER BY device_id, time DESC, ord) AS newest"
        " ON CONFLICT (device_id) DO UPDATE SET kind = EXCLUDED.kind, time = EXCLUDED.time,"
        " seq = EXCLUDED.seq, metrics = latest_reading.metrics || EXCLUDED.metrics,"
        " received_at = EXCLUDED.received_at"
        " WHERE EXCLUDED.time > latest_reading.time"
    ).format(kind=sql.Literal(kind.name), jsonb=_metrics_jsonb(kind), stage=stage)
    return KindStatements(create_stage, copy_direct, copy_stage, insert, latest)


STATEMENTS: dict[str, KindStatements] = {kind.name: _kind_statements(kind) for kind in KINDS}


@dataclass(slots=True)
class StagedKind:
    """One kind's readings of a batch in received order, as columns, plus what the insert said.

    A segment is one message's readings (one device, one receive time).
    """

    kind: Kind
    devices: list[str]  # per segment
    received_us: np.ndarray  # per segment: epoch microseconds
    segment: np.ndarray  # per row: its segment
    code: np.ndarray  # per row: the device as a small integer (equal ids, equal codes)
    ts: np.ndarray  # per row: epoch ms
    seq: np.ndarray  # per row: NO_SEQ when absent
    values: np.ndarray  # (rows, metrics), NaN = absent
    districts: dict[str, str] = field(default_factory=dict)
    # Per row: True when the (device, time) was stored before or earlier in this batch.
    duplicate: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))

    def __len__(self) -> int:
        return len(self.ts)

    @property
    def stored(self) -> int:
        return len(self.ts) - int(np.count_nonzero(self.duplicate))

    def ts_ms(self) -> np.ndarray:
        return self.ts

    def column(self, metric: str) -> np.ndarray:
        """The metric's values (NaN where a reading does not carry it)."""
        return self.values[:, self.kind.metric_names.index(metric)]

    def device_ids(self) -> list[str]:
        devices = self.devices
        return [devices[s] for s in self.segment.tolist()]

    def _key_order(self) -> tuple[np.ndarray, np.ndarray]:
        """Rows sorted by (device, time, received order), and which of them repeat the previous key."""
        order = np.lexsort((np.arange(len(self.ts)), self.ts, self.code))
        code, ts = self.code[order], self.ts[order]
        repeat = (code[1:] == code[:-1]) & (ts[1:] == ts[:-1])
        return order, repeat

    def has_repeats(self) -> bool:
        """True when some (device, time) occurs twice in this batch."""
        return bool(self._key_order()[1].any())

    def mark_all_new(self) -> None:
        self.duplicate = np.zeros(len(self.ts), dtype=bool)

    def mark_duplicates(self, stored_before: Iterable[int]) -> None:
        """Flag the rows the database did not insert: ``stored_before`` holds their ``ord`` (row
        index); a second copy of a (device, time) within the batch is flagged here."""
        duplicate = np.zeros(len(self.ts), dtype=bool)
        duplicate[np.fromiter(stored_before, dtype=np.int64)] = True
        order, repeat = self._key_order()
        duplicate[order[1:][repeat]] = True
        self.duplicate = duplicate

    def newest(self) -> np.ndarray:
        """Per device, the row of its newest reading (the first received among equals)."""
        order = np.lexsort((np.arange(len(self.ts)), -self.ts, self.code))
        code = self.code[order]
        first = np.ones(len(order), dtype=bool)
        first[1:] = code[1:] != code[:-1]
        return np.sort(order[first])

    def copy_data(self, *, with_ord: bool, rows: np.ndarray | None = None) -> bytes:
        """A binary COPY stream of the rows (all, or the given indices) in the column order of
        ``copy_stage`` (``with_ord``) or ``copy_direct``."""
        take = (lambda a: a) if rows is None else (lambda a: a[rows])
        segment = take(self.segment)
        n = len(segment)
        seq = take(self.seq)
        values = take(self.values)
        columns = CopyColumns(n)
        if with_ord:
            columns.fixed("int4", np.arange(len(self.ts), dtype=np.int32) if rows is None else rows)
        columns.fixed("int8", take(self.ts) * 1000 - PG_EPOCH_US)
        columns.text(segment, [device.encode() for device in self.devices])
        columns.fixed("int8", seq, seq == NO_SEQ)
        columns.fixed("int8", self.received_us[segment] - PG_EPOCH_US)
        absent = np.isnan(values)
        for index in range(values.shape[1]):
            columns.fixed("float8", values[:, index], absent[:, index])
        return columns.encode()


def stage_batch(batch: Iterable[Decoded]) -> dict[str, StagedKind]:
    """Group the batch's valid readings by kind, in received order, as columns."""
    parts: dict[str, list[tuple[str, str, float, Block]]] = {}
    for decoded in batch:
        topic = decoded.topic
        if topic is None or not decoded.has_readings:
            continue
        block = decoded.readings_block(KIND_BY_NAME[topic.kind].metric_names)
        if block is None:
            continue
        parts.setdefault(topic.kind, []).append(
            (topic.device_id, topic.district, decoded.message.received_at, block)
        )
    return {kind_name: _staged_kind(KIND_BY_NAME[kind_name], group) for kind_name, group in parts.items()}


def _staged_kind(kind: Kind, group: list[tuple[str, str, float, Block]]) -> StagedKind:
    devices = [device for device, _, _, _ in group]
    codes: dict[str, int] = {}
    segment_code = np.fromiter((codes.setdefault(d, len(codes)) for d in devices), np.int64, len(devices))
    counts = np.fromiter((len(block) for _, _, _, block in group), np.int64, len(group))
    segment = np.repeat(np.arange(len(group), dtype=np.int64), counts)
    staged = StagedKind(
        kind,
        devices,
        np.fromiter((int(at * 1_000_000) for _, _, at, _ in group), np.int64, len(group)),
        segment,
        segment_code[segment],
        np.concatenate([block.ts_ms for _, _, _, block in group]),
        np.concatenate([block.seq for _, _, _, block in group]),
        np.concatenate([block.values for _, _, _, block in group]),
        {device: district for device, district, _, _ in group},
    )
    staged.mark_all_new()
    return staged
