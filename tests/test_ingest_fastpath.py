"""The columnar fast path of ingest: msgspec decode (ingest/fastdecode.py) gives exactly what the
exact path gives, the bulk binary COPY (ingest/copybuf.py) round-trips through a real PostgreSQL,
and the per-device run shortcut of the quality accounting matches the per-reading steps."""

from __future__ import annotations

import random
import time
from datetime import UTC, datetime

import numpy as np
import orjson
import psycopg
import pytest

from cityneuron.catalog import KIND_BY_NAME
from cityneuron.contract import encode_reading, encode_readings, now_ms
from cityneuron.decode import NO_SEQ, Block, Decoded, Limits, Message, decode_message
from cityneuron.settings import DatabaseSettings, IngestSettings
from ingest.copybuf import PG_EPOCH_US, CopyColumns
from ingest.fastdecode import decode_batch
from ingest.quality import Device, QualityTotals, _account_kind, _step
from ingest.staging import StagedKind, stage_batch

POLE = "city/futian/smart_pole/pole-futian-00001/telemetry"
METER = "city/luohu/water_meter/wm-luohu-00002/telemetry"
LIMITS = Limits.from_settings(IngestSettings())


def _message(topic: str, payload: bytes) -> Message:
    return Message(topic, payload, 1, 1, time.time(), 1)


def _same(fast: Decoded, exact: Decoded, metric_names: tuple[str, ...]) -> None:
    assert fast.topic == exact.topic
    assert [(d.reason, d.detail, d.payload) for d in fast.dead_letters] == [
        (d.reason, d.detail, d.payload) for d in exact.dead_letters
    ]
    fast_block = fast.readings_block(metric_names)
    exact_block = exact.readings_block(metric_names)
    if exact_block is None:
        assert fast_block is None
        return
    assert fast_block is not None
    assert fast_block.ts_ms.tolist() == exact_block.ts_ms.tolist()
    assert fast_block.seq.tolist() == exact_block.seq.tolist()
    np.testing.assert_array_equal(fast_block.values, exact_block.values)


def test_decode_batch_matches_the_exact_path_for_valid_and_invalid_messages() -> None:
    now = now_ms()
    t = now - 3_600_000
    meter = {"total_m3": 12.5, "valve_state": 0, "battery_v": 3.6}
    cases = [
        (POLE, encode_reading(t, {"lamp_level": 50, "noise_dba": 61.5}, seq=7)),  # valid, int -> float
        (POLE, encode_reading(t + 1, {"lamp_level": 50.0})),  # valid, no seq
        (METER, encode_readings([(t + i, meter, i) for i in range(24)])),  # valid array
        (POLE, b'{"ts": %d, "m": {"lamp_level": null}}' % t),  # null metric
        (POLE, b'{"ts": %d, "m": {"lamp_level": true}}' % t),  # bool metric
        (POLE, encode_reading(t, {"lamp_level": 500.0, "noise_dba": 60.0})),  # out of range: partial
        (POLE, encode_reading(t, {"lamp_level": 5.0, "bogus": 1.0})),  # unknown metric: partial
        (POLE, encode_reading(t, {})),  # no metrics
        (POLE, b'{"ts": "2026-01-01T00:00:00Z", "m": {"lamp_level": 1}}'),  # RFC 3339 ts (too old here)
        (POLE, orjson.dumps({"ts": datetime.fromtimestamp(t / 1000, UTC).isoformat(), "m": {"pm25": 3}})),
        (POLE, encode_reading(now - 4000 * 86_400_000, {"lamp_level": 1.0})),  # too old
        (POLE, encode_reading(now + 3_600_000, {"lamp_level": 1.0})),  # future
        (POLE, b'{"ts": %d, "seq": -1, "m": {"lamp_level": 1}}' % t),  # bad seq
        (POLE, b'{"ts": %d, "seq": 18446744073709551615, "m": {"lamp_level": 1}}' % t),  # seq > int64
        (POLE, b'{"ts": 1.5e12, "m": {"lamp_level": 1}}'),  # float ts
        (POLE, b'{"ts": true, "m": {"lamp_level": 1}}'),  # bool ts
        (POLE, b'{"ts": 99999999999999999999, "m": {"lamp_level": 1}}'),  # ts beyond int64
        (POLE, b'{"ts": %d, "m": {"lamp_level": NaN}}' % t),  # non-finite
        (POLE, b'{"ts": %d, "m": {"lamp_level": 1e999}}' % t),  # overflowing number
        (POLE, b"[]"),  # empty array
        (POLE, b'[{"ts": %d, "m": {"lamp_level": 1}}, 5]' % t),  # one bad item in an array
        (POLE, b"{not json"),
        (
            METER,
            encode_readings([(t + i, {**meter, "battery_v": 9.0 if i == 3 else 3.6}, i) for i in range(5)]),
        ),
        ("city/futian/smart_pole/pole-1/status", b'{"online": true, "ts": %d}' % t),  # not telemetry
        ("city/futian/nonsense_kind/x-1/telemetry", encode_reading(t, {"a": 1.0})),  # bad topic
    ]
    messages = [_message(topic, payload) for topic, payload in cases]
    fast = decode_batch(messages, LIMITS, now)
    assert len(fast) == len(cases)
    for message, decoded in zip(messages, fast, strict=True):
        assert decoded.message is message
        exact = decode_message(message, LIMITS, now)
        names = KIND_BY_NAME[exact.topic.kind].metric_names if exact.topic else ()
        _same(decoded, exact, names)
    # An RFC 3339 ts among readings that all carry a seq (the columns then fail on the text, not
    # on a missing seq): only that message goes to the exact path, which stores it.
    iso = datetime.fromtimestamp(t / 1000, UTC).isoformat()
    mixed = [
        _message(POLE, orjson.dumps({"ts": iso, "seq": 1, "m": {"pm25": 3}})),
        _message(POLE, encode_reading(t + 5, {"pm25": 4.0}, seq=2)),
    ]
    both = decode_batch(mixed, LIMITS, now)
    assert [d.block is not None for d in both] == [False, True]
    assert [len(d.rows) for d in both] == [1, 0]
    for message, decoded in zip(mixed, both, strict=True):
        _same(decoded, decode_message(message, LIMITS, now), KIND_BY_NAME["smart_pole"].metric_names)
    # The valid ones did take the fast path (columns, no per-reading rows).
    assert [d.block is not None for d in fast[:3]] == [True, True, True]
    assert [i for i, d in enumerate(fast) if d.block is not None] == [0, 1, 2]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_bulk_copy_round_trips_through_postgresql(database: DatabaseSettings, seed: int) -> None:
    """Rows of every shape: NULLs anywhere, device ids of different lengths, in several groups."""
    rng = random.Random(seed)
    devices = [f"d{'x' * rng.randrange(0, 40)}-{i}" for i in range(7)]
    n = 500
    code = np.array([rng.randrange(len(devices)) for _ in range(n)])
    ints = np.array([rng.randrange(-(2**62), 2**62) for _ in range(n)], dtype=np.int64)
    int_null = np.array([rng.random() < 0.3 for _ in range(n)])
    floats = np.array([rng.uniform(-1e6, 1e6) for _ in range(n)])
    float_null = np.array([rng.random() < 0.5 for _ in range(n)])
    stamps = np.array([rng.randrange(0, 4 * 10**15) for _ in range(n)], dtype=np.int64)
    columns = CopyColumns(n)
    columns.fixed("int4", np.arange(n, dtype=np.int32))
    columns.text(code, [d.encode() for d in devices])
    columns.fixed("int8", ints, int_null)
    columns.fixed("float8", floats, float_null)
    columns.fixed("int8", stamps - PG_EPOCH_US)
    with psycopg.connect(database.url) as conn:
        conn.execute("CREATE TEMP TABLE t (ord int4, device text, i int8, f float8, at timestamptz)")
        with conn.cursor() as cur, cur.copy("COPY t FROM STDIN (FORMAT BINARY)") as copy:
            copy.write(columns.encode())
        got = conn.execute(
            "SELECT device, i, f, (extract(epoch FROM at) * 1000000)::bigint FROM t ORDER BY ord"
        ).fetchall()
    assert got == [
        (
            devices[code[r]],
            None if int_null[r] else int(ints[r]),
            None if float_null[r] else float(floats[r]),
            int(stamps[r]),
        )
        for r in range(n)
    ]


def _staged(runs: list[tuple[str, list[int], list[int]]]) -> StagedKind:
    """One message per (device, seqs, ts) run, in the order given."""
    decoded = []
    for device, seqs, stamps in runs:
        topic = f"city/futian/smart_pole/{device}/telemetry"
        block = Block(
            np.array(stamps, dtype=np.int64),
            np.array(seqs, dtype=np.int64),
            np.full((len(seqs), len(KIND_BY_NAME["smart_pole"].metrics)), 1.0),
        )
        message = _message(topic, b"")
        decoded.append(Decoded(message, decode_message(message, LIMITS, now_ms()).topic, block=block))
    return stage_batch(decoded)["smart_pole"]


def _reference(devices: dict[str, Device], staged: StagedKind) -> QualityTotals:
    """The per-reading accounting (one step per reading in received order)."""
    totals = QualityTotals()
    for row in range(len(staged)):
        device = devices[staged.devices[staged.segment[row]]]
        device.changed = True
        if staged.duplicate[row]:
            device.seq_duplicates += 1
            continue
        ts, seq = int(staged.ts[row]), int(staged.seq[row])
        if seq != NO_SEQ:
            _step(device, ts, seq, "smart_pole", totals)
        if device.newest_ms is None or ts > device.newest_ms:
            device.newest_ms = ts
    return totals


def _device(seq_max: int | None, newest_ms: int | None) -> Device:
    return Device("smart_pole", "futian", 0, None, seq_max, 0, 0, 0, newest_ms)


@pytest.mark.parametrize("seed", range(6))
def test_quality_run_shortcut_matches_per_reading_steps(seed: int) -> None:
    rng = random.Random(seed)
    runs = []
    for _ in range(40):
        device = f"pole-{rng.randrange(6)}"
        first, start_ts = rng.randrange(0, 50), rng.randrange(10**12, 10**12 + 10**6)
        count = rng.randrange(1, 30)
        if rng.random() < 0.6:  # counting up by one: the shortcut
            seqs = list(range(first, first + count))
        else:  # gaps, repeats, restarts, absent seqs
            seqs = [rng.choice([NO_SEQ, rng.randrange(0, 60)]) for _ in range(count)]
        stamps = [start_ts + rng.randrange(-5000, 5000) for _ in range(count)]
        runs.append((device, seqs, stamps))
    staged = _staged(runs)
    staged.mark_duplicates([i for i in range(len(staged)) if rng.random() < 0.05])
    start = {
        f"pole-{i}": (rng.choice([None, rng.randrange(0, 40)]), rng.choice([None, 10**12])) for i in range(6)
    }
    fast = {d: _device(*s) for d, s in start.items()}
    exact = {d: _device(*s) for d, s in start.items()}
    totals = QualityTotals()
    _account_kind(fast, staged, totals)
    assert totals == _reference(exact, staged)
    assert fast == exact
