"""Ingest throughput: the broker ceiling, the database ceiling and end to end, on the same payloads.

    python bench/ingest_throughput.py [--payload single|array] [--messages N] [--publishers P]
                                      [--qos 0|1] [--timescaledb] [--json]

Everything runs on servers this script starts in a temporary folder (a fresh Mosquitto per
stage with broker/conf.d, one PostgreSQL cluster with a fresh database per stage) and removes
again, also on Ctrl-C or an error. Ingest settings come from CITYNEURON_INGEST__* like for
`python -m ingest`. See bench/README.md for the method and the measured numbers.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, Self

import numpy as np
import psycopg
from _common import (
    BenchError,
    CommandLineSubscriber,
    CpuMeter,
    PublisherGroup,
    PublisherResult,
    WireSubscriber,
    Workload,
    build_workload,
    decode_rows,
    encode_copy,
    machine,
    pid_with_argument,
    process_cpu_s,
    process_tree_cpu_s,
    publish_span,
    publish_times_by_message,
    reading_copy_columns,
    reading_keys,
    scratch_dir,
    utc_now_iso,
)
from psycopg import sql

from cityneuron.contract import now_ms
from cityneuron.decode import Limits, Message
from cityneuron.errors import CityNeuronError
from cityneuron.schema import init_schema
from cityneuron.servers import MosquittoBroker, PostgresServer, free_port
from cityneuron.settings import DatabaseSettings, Settings
from ingest.fastdecode import decode_batch
from ingest.mqtt import telemetry_filter
from ingest.store import ReadingStore

log = logging.getLogger("cityneuron.bench")

_REPO = Path(__file__).resolve().parent.parent
# Sized so the whole default run takes about 1-2 minutes on the 2-core machine of bench/README.md.
_DEFAULT_MESSAGES = {"single": 60_000, "array": 10_000}
# The goals of issue 15 (ingest near the database's ceiling), all judged within one run: arrays,
# 2 ingest processes at least this share of the lower ceiling and this many readings/s where the
# ceilings allow it; single readings at least this share of the broker ceiling; paced p99.
_GOAL_READINGS_PER_S = 100_000
_GOAL_SHARE_OF_CEILING = 0.6
_GOAL_SINGLE_SHARE_OF_BROKER = 0.9
_GOAL_PACED_P99_MS = 1000
# Every ingest process of a stage, and the broker-ceiling subscriber, in one shared subscription
# (set explicitly: it must not depend on the default, which may be a plain subscription).
SHARE_GROUP = "cityneuron-bench"
# End to end fails when nothing new was stored for this long while readings are missing.
_STALL_TIMEOUT_S = 60.0
_POLL_S = 0.2
_READY_TIMEOUT_S = 60.0
_PERCENTILES = (50, 95, 99)
# A stage whose "other" CPU (not used by any process of the benchmark) is above this share of the
# machine's busy time was probably disturbed by something else running on the machine.
_NOISY_OTHER_SHARE = 0.15


@dataclass
class StageResult:
    """One measured stage; ``role`` is "ceiling", "end_to_end", "diagnostic" or "latency"."""

    name: str
    role: str
    messages: int
    readings: int
    seconds: float
    stored: int
    notes: str = ""
    cpu_s: dict[str, float] = field(default_factory=dict)
    machine_busy: float = float("nan")
    latency_ms: dict[str, dict[str, float]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def messages_per_s(self) -> float:
        return self.messages / self.seconds

    @property
    def readings_per_s(self) -> float:
        return self.readings / self.seconds

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "role": self.role,
            "messages": self.messages,
            "readings": self.readings,
            "stored": self.stored,
            "seconds": round(self.seconds, 4),
            "messages_per_s": round(self.messages_per_s, 1),
            "readings_per_s": round(self.readings_per_s, 1),
            "notes": self.notes,
            "cpu_s": {k: round(v, 3) for k, v in self.cpu_s.items()},
            "machine_busy": round(self.machine_busy, 3),
            "latency_ms": self.latency_ms,
            **self.extra,
        }


def _percentiles(values_s: np.ndarray) -> dict[str, float]:
    ms = values_s * 1000.0
    summary = {f"p{p}": round(float(np.percentile(ms, p)), 1) for p in _PERCENTILES}
    summary["max"] = round(float(ms.max()), 1)
    return summary


# --- ingest processes ------------------------------------------------------------------------------


class _IngestProcess:
    """``python -m ingest`` as a child process with its own client id and metrics port."""

    def __init__(self, number: int, *, label: str, mqtt_port: int, db_url: str, log_dir: Path) -> None:
        self.number = number
        self.http_port = free_port()
        self.log_file = log_dir / f"ingest-{label}-{number}.log"
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("CITYNEURON_MQTT__", "CITYNEURON_DATABASE__"))
        }
        env.update(
            {
                "PYTHONUNBUFFERED": "1",
                "CITYNEURON_LOG_LEVEL": "WARNING",
                "CITYNEURON_MQTT__PORT": str(mqtt_port),
                "CITYNEURON_DATABASE__URL": db_url,
                "CITYNEURON_INGEST__CLIENT_ID": f"bench-{label}-ingest-{number}",
                "CITYNEURON_INGEST__HTTP_PORT": str(self.http_port),
                "CITYNEURON_INGEST__SHARE_GROUP": SHARE_GROUP,
            }
        )
        self._env = env
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def __enter__(self) -> Self:
        with self.log_file.open("ab") as log_handle:
            # Its own session: a Ctrl-C in the terminal reaches only the benchmark, which then
            # stops ingest gracefully itself.
            self._process = subprocess.Popen(
                [sys.executable, "-m", "ingest"],
                cwd=_REPO,
                env=self._env,
                stdout=log_handle,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def _get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=5) as reply:
                return reply.status, reply.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, ""
        except OSError:
            return 0, ""

    def check_alive(self) -> None:
        assert self._process is not None
        if self._process.poll() is not None:
            tail = self.log_file.read_text(errors="replace")[-1500:]
            raise BenchError(f"ingest {self.number} exited with {self._process.returncode}:\n{tail}")

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while self._get("/ready")[0] != 200:
            self.check_alive()
            if time.monotonic() > deadline:
                raise BenchError(f"ingest {self.number} not ready after {timeout_s:.0f} s")
            time.sleep(0.1)

    def counters(self) -> tuple[float, float]:
        """(readings stored, dead letters) from its /metrics: counted after each commit."""
        status, text = self._get("/metrics")
        if status != 200:
            self.check_alive()
            return 0.0, 0.0
        stored = dead = 0.0
        for line in text.splitlines():
            if line.startswith("cityneuron_ingest_readings_stored_total{"):
                stored += float(line.rsplit(" ", 1)[1])
            elif line.startswith("cityneuron_ingest_dead_letters_total{"):
                dead += float(line.rsplit(" ", 1)[1])
        return stored, dead

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._process is None or self._process.poll() is not None:
            return
        self._process.send_signal(signal.SIGTERM)
        try:
            self._process.wait(30.0)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()


# --- the benchmark ----------------------------------------------------------------------------------


class Bench:
    """Owns the temp folder and the PostgreSQL cluster; runs the stages."""

    def __init__(self, args: argparse.Namespace, settings: Settings, workload: Workload) -> None:
        self.args = args
        self.settings = settings
        self.workload = workload
        self.root = scratch_dir("cityneuron-bench-")
        self.messages_file = self.root / "messages.pickle"
        self.server = PostgresServer(self.root / "pg", free_port(), timescaledb=args.timescaledb)
        self.results: list[StageResult] = []
        self.postgres_version = ""
        self.timescaledb_version: str | None = None

    def __enter__(self) -> Self:
        try:
            self.workload.save(self.messages_file)
            self.server.start()
            # Commit timestamps give each row its exact commit time (pg_xact_commit_timestamp) for
            # the publish -> committed latency; the setting needs a restart.
            self.server.stop()
            with (self.server.cluster_dir / "postgresql.conf").open("a") as conf:
                conf.write("\n# cityneuron bench: commit time of each row\ntrack_commit_timestamp = on\n")
            self.server.start()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.server.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    # --- helpers --------------------------------------------------------------------------------

    def fresh_database(self, label: str) -> str:
        url = self.server.create_database(f"bench_{label}")
        info = init_schema(DatabaseSettings(url=url))
        self.postgres_version = info.server_version
        self.timescaledb_version = info.timescaledb
        return url

    @contextlib.contextmanager
    def broker(self, label: str) -> Iterator[tuple[MosquittoBroker, int | None]]:
        """A fresh Mosquitto (no session or queue left from another stage) and its pid."""
        with MosquittoBroker(self.root / f"mosquitto-{label}", free_port(), anonymous=True) as broker:
            yield broker, pid_with_argument(str(broker.data_dir / "mosquitto.conf"))

    def _postgres_cpu_s(self) -> float:
        try:
            postmaster = int((self.server.cluster_dir / "postmaster.pid").read_text().split()[0])
        except OSError:
            return 0.0
        return process_tree_cpu_s(postmaster)

    def _publishers(self, port: int, label: str, limit: int, rate: float | None = None) -> PublisherGroup:
        return PublisherGroup(
            self.messages_file,
            limit,
            count=self.args.publishers,
            port=port,
            qos=self.args.qos,
            label=label,
            rate_per_s=rate,
        )

    # --- stages ---------------------------------------------------------------------------------

    def broker_stage(self, *, c_subscriber: str | None = None) -> StageResult:
        """Publishers -> Mosquitto -> one subscriber that only acks: ingest's own MQTT 5 client
        with ingest's set-up, or ``mosquitto_sub`` (C) to see the broker without a Python consumer."""
        w = self.workload
        ingest = self.settings.ingest
        topic_filter = telemetry_filter(SHARE_GROUP)
        label = "csub" if c_subscriber else "ceiling"
        log.info("broker %s: %d messages, no database", label, w.messages)
        with contextlib.ExitStack() as stack:
            broker, mosquitto_pid = stack.enter_context(self.broker(label))
            subscriber: WireSubscriber | CommandLineSubscriber
            sources: dict[str, Callable[[], float]]
            if c_subscriber:
                c_sub = CommandLineSubscriber(
                    c_subscriber, broker.port, topic_filter, ingest.receive_maximum, w.messages
                )
                subscriber = c_sub
                sources = {"subscriber": lambda: process_cpu_s(c_sub.pid)}
            else:
                subscriber = WireSubscriber(broker.port, topic_filter, ingest.receive_maximum, w.messages)
                sources = {"subscriber": time.process_time}
            stack.enter_context(subscriber)
            publishers = stack.enter_context(self._publishers(broker.port, label, w.messages))
            sources["mosquitto"] = lambda: process_cpu_s(mosquitto_pid)
            with CpuMeter(sources) as meter:
                publishers.go()
                results = publishers.results(timeout_s=1800.0)
                if not subscriber.done.wait(_STALL_TIMEOUT_S):
                    log.warning("subscriber received only %d of %d messages", subscriber.received, w.messages)
        if not subscriber.received:
            raise BenchError("the subscriber received nothing")
        first, last = publish_span(results)
        if c_subscriber:
            name, role, notes = "broker, C subscriber (mosquitto_sub)", "diagnostic", "libmosquitto acks"
        else:
            name, role = "broker ceiling: publishers -> mosquitto -> QoS 1 subscriber", "ceiling"
            notes = (
                "ingest's MQTT 5 client (cityneuron.mqtt5client) set up like ingest;"
                " acks each read's messages on arrival, no decoding"
            )
        return StageResult(
            name,
            role,
            w.messages,
            w.readings,
            subscriber.last_at - first,
            stored=subscriber.received * w.readings_per_message,
            notes=notes,
            cpu_s=meter.breakdown(publishers=_publisher_cpu(results)),
            machine_busy=meter.machine_busy,
            extra={"publish_seconds": round(last - first, 3), **_delivery(results, self.args.qos)},
        )

    def database_ceiling(self) -> StageResult:
        w = self.workload
        batch = self.settings.ingest.batch_max_messages
        log.info(
            "database ceiling: binary COPY of %d readings, a transaction per %d messages", w.readings, batch
        )
        rows = decode_rows(w)
        received_ms = now_ms()
        buffers = [
            encode_copy([r for message in rows[i : i + batch] for r in message], received_ms)
            for i in range(0, len(rows), batch)
        ]
        url = self.fresh_database("db_ceiling")
        table = w.kind.table
        copy = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
            sql.Identifier(table), sql.SQL(", ").join(map(sql.Identifier, reading_copy_columns(w.kind)))
        )
        with (
            psycopg.connect(url, autocommit=True) as conn,
            CpuMeter({"postgres": self._postgres_cpu_s, "client": time.process_time}) as meter,
        ):
            started = time.perf_counter()
            for buffer in buffers:
                with conn.transaction(), conn.cursor() as cur, cur.copy(copy) as stream:
                    stream.write(buffer)
            seconds = time.perf_counter() - started
        with psycopg.connect(url) as conn:
            stored = _count(conn, table)
        return StageResult(
            f"database ceiling: binary COPY into {table}",
            "ceiling",
            w.messages,
            w.readings,
            seconds,
            stored=stored,
            notes=f"1 connection, {len(buffers)} transactions; rows decoded and encoded before the clock",
            cpu_s=meter.breakdown(),
            machine_busy=meter.machine_busy,
        )

    def ingest_writer(self) -> StageResult:
        """Ingest's own decode + write path in this process, without MQTT."""
        w = self.workload
        ingest = self.settings.ingest
        batch = ingest.batch_max_messages
        log.info("ingest writer without a broker: decode + ReadingStore.write, %d messages a batch", batch)
        url = self.fresh_database("writer")
        limits = Limits.from_settings(ingest)
        messages = [
            Message(topic, payload, n % 65535 + 1, 1, time.time(), 1)
            for n, (topic, payload) in enumerate(zip(w.topics, w.payloads, strict=True))
        ]
        store = ReadingStore(DatabaseSettings(url=url), auto_register=ingest.auto_register)
        store.connect()
        decode_s = write_s = 0.0
        stored = dead = 0
        try:
            with CpuMeter({"postgres": self._postgres_cpu_s, "ingest": time.process_time}) as meter:
                for i in range(0, len(messages), batch):
                    t0 = time.perf_counter()
                    now = now_ms()
                    decoded = decode_batch(messages[i : i + batch], limits, now)
                    t1 = time.perf_counter()
                    outcome = store.write(decoded)
                    write_s += time.perf_counter() - t1
                    decode_s += t1 - t0
                    stored += sum(outcome.stored.values())
                    dead += sum(outcome.dead_letters.values())
        finally:
            store.close()
        if dead:
            raise BenchError(f"ingest dead-lettered {dead} readings of the workload")
        return StageResult(
            "ingest writer, no broker: decode + ReadingStore.write",
            "diagnostic",
            w.messages,
            w.readings,
            decode_s + write_s,
            stored=stored,
            notes=f"decode+validate {decode_s:.2f} s, write+commit {write_s:.2f} s, one after the other",
            cpu_s=meter.breakdown(),
            machine_busy=meter.machine_busy,
            extra={"decode_seconds": round(decode_s, 3), "write_seconds": round(write_s, 3)},
        )

    def end_to_end(
        self, processes: int, *, rate: float | None = None, limit: int | None = None
    ) -> StageResult:
        w = self.workload.head(limit) if limit else self.workload
        label = f"e2e{processes}" + ("paced" if rate else "")
        log.info(
            "end to end: %d messages -> mosquitto -> %d ingest process(es) -> database%s",
            w.messages,
            processes,
            f", paced at {rate:.0f} msg/s" if rate else "",
        )
        url = self.fresh_database(label)
        with self.broker(label) as (broker, mosquitto_pid), contextlib.ExitStack() as stack:
            ingests = [
                stack.enter_context(
                    _IngestProcess(n + 1, label=label, mqtt_port=broker.port, db_url=url, log_dir=self.root)
                )
                for n in range(processes)
            ]
            for ingest in ingests:
                ingest.wait_ready(_READY_TIMEOUT_S)
            sources = {
                "mosquitto": lambda: process_cpu_s(mosquitto_pid),
                "ingest": lambda: sum(process_cpu_s(i.pid) for i in ingests),
                "postgres": self._postgres_cpu_s,
            }
            with (
                self._publishers(broker.port, label, w.messages, rate) as publishers,
                CpuMeter(sources) as meter,
            ):
                publishers.go()
                results = publishers.results(timeout_s=1800.0)
                _wait_stored(ingests, w.readings)
        first, last = publish_span(results)
        stored, latency, last_commit = _check_stored(url, w, publish_times_by_message(results, w.messages))
        name = f"end to end, {processes} ingest process{'es' if processes > 1 else ''}"
        if rate:
            name += f", paced at {rate:,.0f} msg/s"
        return StageResult(
            name,
            "latency" if rate else "end_to_end",
            w.messages,
            w.readings,
            last_commit - first,
            stored=stored,
            notes="first publish until the last reading is committed",
            cpu_s=meter.breakdown(publishers=_publisher_cpu(results)),
            machine_busy=meter.machine_busy,
            latency_ms=latency,
            extra={"publish_seconds": round(last - first, 3), **_delivery(results, self.args.qos)},
        )


def _publisher_cpu(results: list[PublisherResult]) -> float:
    return sum(r.cpu_s for r in results)


def _delivery(results: list[PublisherResult], qos: int) -> dict[str, int]:
    sent = sum(r.sent for r in results)
    unacked = sum(r.unacked for r in results) + sum(r.errors for r in results)
    if qos > 0 and unacked:
        raise BenchError(f"{unacked} of {sent} messages were not acknowledged by the broker")
    return {"published": sent, "unacked": unacked}


def _count(conn: psycopg.Connection, table: str) -> int:
    row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))).fetchone()
    return int(row[0]) if row else 0


def _wait_stored(ingests: list[_IngestProcess], expected: int) -> None:
    """Poll ingest's counters of committed readings until all are stored or nothing more comes
    (QoS 0 may lose messages; the caller counts what is stored)."""
    best = -1.0
    progress_at = time.monotonic()
    while True:
        counts = [i.counters() for i in ingests]
        stored = sum(c[0] for c in counts)
        dead = sum(c[1] for c in counts)
        if dead:
            raise BenchError(f"ingest wrote {dead:.0f} dead letters: the workload should have none")
        if stored >= expected:
            return
        if stored > best:
            best, progress_at = stored, time.monotonic()
        elif time.monotonic() - progress_at > _STALL_TIMEOUT_S:
            log.warning(
                "only %.0f of %d readings stored, none for %.0f s", stored, expected, _STALL_TIMEOUT_S
            )
            return
        time.sleep(_POLL_S)


def _check_stored(
    url: str, workload: Workload, published_at: np.ndarray
) -> tuple[int, dict[str, dict[str, float]], float]:
    """Count the published readings that are stored (each once: (device_id, time) is unique) and
    compute latencies from each row's receive and commit times.

    Returns (readings of the workload stored, latency percentiles, last commit time)."""
    query = sql.SQL(
        "SELECT device_id, (extract(epoch FROM time) * 1000)::bigint, extract(epoch FROM received_at),"
        " extract(epoch FROM pg_xact_commit_timestamp(xmin)) FROM {}"
    ).format(sql.Identifier(workload.kind.table))
    with psycopg.connect(url) as conn:
        rows = conn.execute(query).fetchall()
        dead = conn.execute("SELECT count(*) FROM dead_letter").fetchone()
    if dead and dead[0]:
        raise BenchError(f"{dead[0]} dead letters: the workload should have none")
    keys = reading_keys(workload)
    received = np.full(workload.messages, np.inf)
    committed = np.full(workload.messages, -np.inf)
    matched: set[tuple[str, int]] = set()
    for device_id, ts_ms, received_at, committed_at in rows:
        index = keys.get((device_id, ts_ms))
        if index is None or committed_at is None:
            continue
        matched.add((device_id, ts_ms))
        received[index] = min(received[index], float(received_at))
        committed[index] = max(committed[index], float(committed_at))
    if len(rows) != len(matched):
        raise BenchError(f"{len(rows) - len(matched)} stored rows are not readings of the workload")
    if not matched:
        raise BenchError("nothing was stored")
    # Percentiles over the messages that were stored (all of them unless QoS 0 lost some).
    done = np.isfinite(committed)
    latency = {
        "publish_to_commit": _percentiles(committed[done] - published_at[done]),
        "publish_to_receive": _percentiles(received[done] - published_at[done]),
        "receive_to_commit": _percentiles(committed[done] - received[done]),
    }
    return len(matched), latency, float(committed[done].max())


# --- output --------------------------------------------------------------------------------------------


def _other_share(result: StageResult) -> float:
    total = sum(result.cpu_s.values())
    return result.cpu_s.get("other", 0.0) / total if total else 0.0


def _min_ceiling(results: list[StageResult]) -> float:
    ceilings = [r.readings_per_s for r in results if r.role == "ceiling"]
    return min(ceilings) if ceilings else float("nan")


def _goal(results: list[StageResult], payload: str) -> str:
    """The targets of issue 15, judged on this run alone (ratios against ceilings of the same run)."""
    e2e = [r for r in results if r.role == "end_to_end"]
    if not e2e:
        return "goal: no end-to-end stage ran"
    lines = []
    if payload == "single":
        broker = next((r for r in results if r.name.startswith("broker ceiling")), None)
        floor = broker.readings_per_s if broker else float("nan")
        best = max(e2e, key=lambda r: r.readings_per_s)
        met = best.readings_per_s >= _GOAL_SINGLE_SHARE_OF_BROKER * floor
        lines.append(
            f"goal (single readings: end to end >= {_GOAL_SINGLE_SHARE_OF_BROKER:.0%} of the broker ceiling with"
            f" ingest's subscriber): best {best.readings_per_s:,.0f} readings/s = {best.readings_per_s / floor:.2f}"
            f" of {floor:,.0f} -> {'met' if met else 'NOT met'}"
        )
    else:
        floor = _min_ceiling(results)
        two = next(
            (r for r in e2e if r.name.startswith("end to end, 2 ")), max(e2e, key=lambda r: r.readings_per_s)
        )
        share_met = two.readings_per_s >= _GOAL_SHARE_OF_CEILING * floor
        reachable = _GOAL_SHARE_OF_CEILING * floor >= _GOAL_READINGS_PER_S
        rate = "met" if two.readings_per_s >= _GOAL_READINGS_PER_S else "NOT met"
        if not reachable:
            rate += (
                f" (the ceilings of this run do not allow it: {_GOAL_SHARE_OF_CEILING:.0%} of {floor:,.0f})"
            )
        lines.append(
            f"goal (arrays, {two.name}: >= {_GOAL_SHARE_OF_CEILING:.0%} of the lower ceiling):"
            f" {two.readings_per_s:,.0f} readings/s = {two.readings_per_s / floor:.2f} of {floor:,.0f}"
            f" -> {'met' if share_met else 'NOT met'}; >= {_GOAL_READINGS_PER_S:,} readings/s -> {rate}"
        )
    paced = [r for r in results if r.role == "latency" and r.latency_ms]
    for r in paced:
        p99 = r.latency_ms["publish_to_commit"]["p99"]
        verdict = "met" if p99 < _GOAL_PACED_P99_MS else "NOT met"
        lines.append(
            f"goal (paced p99 publish->committed < {_GOAL_PACED_P99_MS:,} ms): {p99:,.0f} ms -> {verdict}"
        )
    return "\n".join(lines)


def _report(bench: Bench, info: dict[str, Any]) -> str:
    w, a, results = bench.workload, bench.args, bench.results
    storage = f"TimescaleDB {bench.timescaledb_version}" if bench.timescaledb_version else "plain PostgreSQL"
    floor = _min_ceiling(results)
    ingest = bench.settings.ingest
    width = max(len(r.name) for r in results) + 1
    lines = [
        f"machine: {info['cpu']}, {info['cores']} cores, {info['ram_gib']} GiB RAM, Linux {info['kernel']},"
        f" Python {info['python']} (paho-mqtt {info['paho_mqtt']}, psycopg {info['psycopg']}),"
        f" Mosquitto {info['mosquitto']}, PostgreSQL {info['postgresql']}"
        + (f", TimescaleDB {info['timescaledb']}" if info["timescaledb"] else ""),
        f"workload: --payload {w.style} ({w.kind.name}, {w.readings_per_message} reading(s) a message,"
        f" {w.payload_bytes / w.messages:.0f} B a message), {w.messages:,} messages = {w.readings:,}"
        f" readings; {a.publishers} publisher process(es), QoS {a.qos}; {storage}",
        "ingest: "
        + " ".join(
            f"{k}={getattr(ingest, k)}"
            for k in (
                "writers",
                "batch_max_messages",
                "flush_interval_ms",
                "receive_maximum",
                "queue_max_messages",
            )
        ),
        "",
        f"{'stage':<{width}} {'seconds':>8} {'messages/s':>11} {'readings/s':>11} {'/ceiling':>9}",
    ]
    for r in results:
        ratio = "-" if r.role == "ceiling" else f"{r.readings_per_s / floor:.2f}"
        lines.append(
            f"{r.name:<{width}} {r.seconds:>8.2f} {r.messages_per_s:>11,.0f} {r.readings_per_s:>11,.0f} {ratio:>9}"
        )
    lines += ["", "latency in ms, p50 / p95 / p99 / max"]
    lines.append(f"{'':<{width}} {'publish->commit':>25} {'publish->receive':>25} {'receive->commit':>25}")
    for r in results:
        if r.latency_ms:
            cells = [
                " / ".join(f"{r.latency_ms[k][p]:.0f}" for p in ("p50", "p95", "p99", "max"))
                for k in ("publish_to_commit", "publish_to_receive", "receive_to_commit")
            ]
            lines.append(f"{r.name:<{width}} " + " ".join(f"{c:>25}" for c in cells))
    lines += [
        "",
        f"CPU microseconds per reading by process (other: kernel network work, this script, anything"
        f" else on the machine), and how busy all {info['cores']} cores were",
    ]
    for r in results:
        parts = ", ".join(f"{k} {v / r.readings * 1e6:.1f}" for k, v in r.cpu_s.items())
        lines.append(f"{r.name:<{width}} {parts}; machine {r.machine_busy:.0%} busy")
    lines += ["", "notes"]
    lines += [f"{r.name:<{width}} {r.notes}" for r in results if r.notes]
    lost = [r.name for r in results if r.stored != r.readings]
    noisy = [r.name for r in results if _other_share(r) > _NOISY_OTHER_SHARE]
    lines += [
        "",
        (
            f"WARNING: other processes used over {_NOISY_OTHER_SHARE:.0%} of the busy CPU in: {', '.join(noisy)};"
            " something else ran on the machine or the stage was too short to measure: run again"
            if noisy
            else f"quiet machine: CPU used outside the benchmark's processes <= {_NOISY_OTHER_SHARE:.0%} in every stage"
        ),
        f"zero loss: {'yes' if not lost else 'NO'}: stored == published ({w.readings:,} readings) in every stage"
        + (f"; NOT in: {', '.join(lost)}" if lost else ""),
        "latency: publish = wall clock just before each publish() in the publisher; receive = received_at"
        " stamped by ingest on arrival; commit = pg_xact_commit_timestamp(xmin) of the row"
        " (track_commit_timestamp = on). Unpaced runs publish faster than ingest stores, so their"
        " latency is mostly time queued in the broker.",
        f"/ceiling = readings/s of the stage / the lower ceiling ({floor:,.0f} readings/s)",
        _goal(results, a.payload),
    ]
    return "\n".join(lines)


def _document(bench: Bench, info: dict[str, Any], elapsed_s: float) -> dict[str, Any]:
    w = bench.workload
    return {
        "when": utc_now_iso(),
        "machine": info,
        "args": vars(bench.args),
        "ingest_settings": bench.settings.ingest.model_dump(),
        "workload": {
            "payload": w.style,
            "kind": w.kind.name,
            "messages": w.messages,
            "readings": w.readings,
            "payload_bytes": w.payload_bytes,
        },
        "min_ceiling_readings_per_s": round(_min_ceiling(bench.results), 1),
        "zero_loss": all(r.stored == r.readings for r in bench.results),
        "disturbed_stages": [r.name for r in bench.results if _other_share(r) > _NOISY_OTHER_SHARE],
        "goal": _goal(bench.results, bench.args.payload),
        "stages": [r.as_dict() for r in bench.results],
        "elapsed_s": round(elapsed_s, 1),
    }


# --- command line ----------------------------------------------------------------------------------------


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--payload",
        choices=("single", "array"),
        default="single",
        help="single: smart-pole readings; array: water-meter uploads of 24 hourly readings",
    )
    parser.add_argument(
        "--messages", type=int, help="messages per stage (default: single 60000, array 10000)"
    )
    parser.add_argument("--publishers", type=int, default=1, help="publisher processes (default 1)")
    parser.add_argument("--qos", type=int, choices=(0, 1), default=1, help="publish QoS (default 1)")
    parser.add_argument("--timescaledb", action="store_true", help="use the TimescaleDB extension")
    parser.add_argument(
        "--ingest-processes",
        default="1,2",
        help="end-to-end runs as comma-separated ingest process counts (default 1,2)",
    )
    parser.add_argument(
        "--paced-fraction",
        type=float,
        default=0.5,
        help="extra latency run at this fraction of the 1-process rate; 0 skips it (default 0.5)",
    )
    parser.add_argument(
        "--paced-seconds", type=float, default=10.0, help="length of the paced run (default 10)"
    )
    parser.add_argument("--seed", type=int, default=42, help="simulator seed (default 42)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON instead of tables")
    args = parser.parse_args(argv)
    args.messages = args.messages or _DEFAULT_MESSAGES[args.payload]
    args.ingest_processes = [int(n) for n in args.ingest_processes.split(",") if n.strip()]
    if args.messages < 1 or args.publishers < 1 or any(n < 1 for n in args.ingest_processes):
        parser.error("--messages, --publishers and --ingest-processes must be positive")
    return args


def _run(bench: Bench) -> None:
    args, results = bench.args, bench.results
    results.append(bench.broker_stage())
    c_subscriber = shutil.which("mosquitto_sub")
    if c_subscriber:
        results.append(bench.broker_stage(c_subscriber=c_subscriber))
    results.append(bench.database_ceiling())
    results.append(bench.ingest_writer())
    for processes in args.ingest_processes:
        results.append(bench.end_to_end(processes))
    first = next((r for r in results if r.role == "end_to_end"), None)
    if args.paced_fraction > 0 and first is not None:
        rate = args.paced_fraction * first.messages_per_s
        limit = min(bench.workload.messages, max(1, round(rate * args.paced_seconds)))
        results.append(bench.end_to_end(1, rate=rate, limit=limit))


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    settings = Settings()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    # Ctrl-C and a plain `kill` both clean up; SIGINT explicitly, as a shell starting us in the
    # background leaves it ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    started = time.monotonic()
    try:
        log.info("building %d %s messages with the simulator", args.messages, args.payload)
        workload = build_workload(args.payload, args.messages, args.seed)
        with Bench(args, settings, workload) as bench:
            _run(bench)
            info = machine(bench.postgres_version, bench.timescaledb_version)
            elapsed = time.monotonic() - started
            if args.json:
                print(json.dumps(_document(bench, info, elapsed), indent=2, default=str))
            else:
                print(_report(bench, info))
                print(f"whole run: {elapsed:.0f} s")
            lost = any(r.stored != r.readings for r in bench.results)
    except KeyboardInterrupt:
        log.error("interrupted: servers stopped and temporary files removed")
        return 130
    except CityNeuronError as exc:
        log.error("benchmark failed: %s", exc)
        return 1
    # Loss is a result (reported above) but must not pass for success.
    return 2 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
