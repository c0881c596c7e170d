"""Where a batch write's CPU goes: PostgreSQL (its backend) and ingest (Python) per phase of
``ReadingStore.write``, per stored reading, on the same payloads as bench/ingest_throughput.py.

    python bench/ingest_phases.py [--payload single|array] [--messages N]

A fresh PostgreSQL cluster in a temporary folder; the first half of the messages registers the
devices and fills ``latest_reading`` (the steady state of a running city), the second half is
measured. The backend's CPU comes from /proc/<pid>/stat around each phase (10 ms ticks: phases
are summed over many batches). "bookkeeping" = device lock + counters + registry + latest value.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from _common import build_workload, machine, scratch_dir

import ingest.store as store_module
from cityneuron.contract import now_ms
from cityneuron.decode import Limits, Message
from cityneuron.schema import init_schema
from cityneuron.servers import PostgresServer, free_port
from cityneuron.settings import DatabaseSettings, IngestSettings
from ingest.fastdecode import decode_batch

_TICKS_PER_S = os.sysconf("SC_CLK_TCK")
_PHASES = {
    "resolve_devices": "device rows locked and read (+ auto-register)",
    "_insert": "readings: COPY (+ latest staging)",
    "latest": "latest_reading upsert",
    "write_devices": "device counters written",
}
_BOOKKEEPING = ("resolve_devices", "latest", "write_devices")


def _backend_cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS_PER_S


class _Meter:
    def __init__(self) -> None:
        self.pid = 0
        self.postgres: Counter[str] = Counter()
        self.python: Counter[str] = Counter()

    def wrap(self, name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        def measured(*args: Any, **kwargs: Any) -> Any:
            backend, own = _backend_cpu_s(self.pid), time.process_time()
            try:
                return function(*args, **kwargs)
            finally:
                self.postgres[name] += _backend_cpu_s(self.pid) - backend
                self.python[name] += time.process_time() - own

        return measured


def _instrument(meter: _Meter) -> None:
    for name in ("resolve_devices", "write_devices"):
        setattr(store_module, name, meter.wrap(name, getattr(store_module, name)))
    store_module.ReadingStore._insert = meter.wrap("_insert", store_module.ReadingStore._insert)  # type: ignore[method-assign]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--payload", choices=("single", "array"), default="single")
    parser.add_argument("--messages", type=int, help="default: single 40000, array 8000")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)
    messages = args.messages or (40_000 if args.payload == "single" else 8_000)
    workload = build_workload(args.payload, messages, args.seed)
    meter = _Meter()
    _instrument(meter)
    root = scratch_dir("cityneuron-phases-")
    server = PostgresServer(root / "pg", free_port())
    try:
        server.start()
        db = DatabaseSettings(url=server.create_database("phases"))
        info = init_schema(db)
        ingest = IngestSettings()
        store = store_module.ReadingStore(db, auto_register=True)
        store.connect()
        conn = store._connection()
        meter.pid = conn.info.backend_pid
        _measure_latest(meter, conn)
        limits = Limits.from_settings(ingest)
        batch = ingest.batch_max_messages
        all_messages = [
            Message(topic, payload, n % 65535 + 1, 1, time.time(), 1)
            for n, (topic, payload) in enumerate(zip(workload.topics, workload.payloads, strict=True))
        ]
        half = len(all_messages) // 2
        for i in range(0, half, batch):
            store.write(decode_batch(all_messages[i : i + batch], limits, now_ms()))
        meter.postgres.clear()
        meter.python.clear()
        backend, own = _backend_cpu_s(meter.pid), time.process_time()
        for i in range(half, len(all_messages), batch):
            decoded = meter.wrap("decode", decode_batch)(all_messages[i : i + batch], limits, now_ms())
            store.write(decoded)
        total_pg, total_py = _backend_cpu_s(meter.pid) - backend, time.process_time() - own
        hot = _hot_updates(conn)
        store.close()
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
    readings = (len(all_messages) - half) * workload.readings_per_message / 1e6
    m = machine(info.server_version, info.timescaledb)
    print(f"machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}, PostgreSQL {m['postgresql']}")
    print(
        f"workload: --payload {args.payload} ({workload.kind.name}, {workload.readings_per_message} reading(s) a"
        f" message), {len(all_messages) - half:,} messages measured, batches of {batch}"
    )
    print(f"\n{'phase':<40} {'postgres us/reading':>20} {'ingest us/reading':>18}")
    named = {**_PHASES, "decode": "decode + validate (ingest only)"}
    for key, label in named.items():
        print(f"{label:<40} {meter.postgres[key] / readings:>20.2f} {meter.python[key] / readings:>18.2f}")
    rest_pg = total_pg - sum(meter.postgres.values())
    rest_py = total_py - sum(meter.python.values())
    print(
        f"{'rest (statuses, dead letters, commit)':<40} {rest_pg / readings:>20.2f} {rest_py / readings:>18.2f}"
    )
    print(f"{'total':<40} {total_pg / readings:>20.2f} {total_py / readings:>18.2f}")
    copy = meter.postgres["_insert"] / readings
    bookkeeping = sum(meter.postgres[k] for k in _BOOKKEEPING) / readings
    print(
        f"\nPostgreSQL bookkeeping {bookkeeping:.1f} us/reading = {bookkeeping / copy:.1f}x the readings' COPY"
        f" ({copy:.1f} us/reading); issue 15 asks at most 2x"
    )
    print(
        "updates that changed no index (HOT), whole run: " + ", ".join(f"{t} {share:.0%}" for t, share in hot)
    )
    return 0


def _hot_updates(conn: Any) -> list[tuple[str, float]]:
    """Per table, the share of updates that were HOT (no index entry written)."""
    conn.execute("SELECT pg_stat_force_next_flush()")
    conn.execute("SELECT pg_stat_clear_snapshot()")
    rows = conn.execute(
        "SELECT relname, n_tup_hot_upd::float8 / greatest(n_tup_upd, 1) FROM pg_stat_user_tables"
        " WHERE relname IN ('device_activity', 'latest_reading') ORDER BY relname"
    ).fetchall()
    return [(name, share) for name, share in rows]


def _measure_latest(meter: _Meter, conn: Any) -> None:
    """Route the latest_reading upsert through the meter: it is the ``cur.execute`` of a
    statement from ingest.staging.STATEMENTS[...].latest."""
    latest_statements = {id(s.latest) for s in store_module.STATEMENTS.values()}
    cursor_class = type(conn.cursor())
    original = cursor_class.execute

    def execute(self: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
        if id(query) in latest_statements:
            return meter.wrap("latest", original)(self, query, *args, **kwargs)
        return original(self, query, *args, **kwargs)

    cursor_class.execute = execute


if __name__ == "__main__":
    sys.exit(main())
