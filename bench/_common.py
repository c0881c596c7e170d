"""Shared parts of the ingest benchmark: workload, binary COPY, publisher processes, subscribers,
CPU accounting.

Publishers run in their own (spawned) processes so that they do not share a GIL with whatever
they feed; they report the wall time of every publish so latencies can be computed afterwards.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import pickle
import platform
import queue
import shutil
import signal
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import numpy as np
import paho.mqtt.client as paho
from numpy.typing import NDArray
from paho.mqtt.enums import CallbackAPIVersion

from cityneuron.catalog import KIND_BY_NAME, Kind
from cityneuron.contract import check_metrics, decode_reading, decode_telemetry, now_ms
from cityneuron.errors import CityNeuronError
from cityneuron.mqtt5client import Mqtt5Client
from cityneuron.mqtt5wire import RawPublish, Subscription
from cityneuron.settings import MqttSettings
from ingest.mqtt import SESSION_EXPIRY_S
from simulator.city import build_city
from simulator.drivers import Drivers
from simulator.kinds import MODELS
from simulator.messages import telemetry_messages
from simulator.publisher import Gateway
from simulator.schedule import Due, KindSchedule


class BenchError(CityNeuronError):
    """The benchmark could not run or its result is not valid (e.g. readings were lost)."""


def scratch_dir(prefix: str) -> Path:
    """A temp folder the unprivileged 'postgres' and 'mosquitto' users can enter (as in tests/conftest.py)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o711)
    return path


# --- the machine ------------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _ram_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024**2
    except OSError:
        pass
    return float("nan")


def mosquitto_version() -> str:
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    try:
        out = subprocess.run([binary, "-h"], capture_output=True, text=True, check=False, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    first = (out.stdout or out.stderr).splitlines()
    return first[0].removeprefix("mosquitto version ").strip() if first else "unknown"


def _version_or_absent(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "absent"


def machine(postgres_version: str, timescaledb_version: str | None) -> dict[str, Any]:
    """What the numbers were measured on."""
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count() or 0,
        "ram_gib": round(_ram_gib(), 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "paho_mqtt": metadata.version("paho-mqtt"),
        "psycopg": metadata.version("psycopg"),
        # uvicorn picks httptools and uvloop when installed (uvicorn[standard]); without them the
        # API serves through h11 and asyncio, markedly slower: say which one was measured.
        "uvicorn": _version_or_absent("uvicorn"),
        "httptools": _version_or_absent("httptools"),
        "uvloop": _version_or_absent("uvloop"),
        "mosquitto": mosquitto_version(),
        "postgresql": postgres_version,
        "timescaledb": timescaledb_version,
    }


# --- the workload ------------------------------------------------------------------------------

# "single": smart poles, one reading per message (every 60 s per pole), 10 or 12 metrics.
# "array": NB-IoT water meters, one daily upload carrying 24 hourly frozen readings.
PAYLOAD_KINDS = {"single": "smart_pole", "array": "water_meter"}
# The "district" preset: 3,000 poles, 40,000 water meters (simulator/city.py).
_PRESET = "district"
# Keep every timestamp at least this far in the past: ingest refuses readings from the future.
_END_MARGIN_MS = 3_600_000


@dataclass(frozen=True, slots=True)
class Workload:
    """The messages every stage sends: same topics and payload bytes, unique (device, ts)."""

    style: str
    kind: Kind
    topics: list[str]
    payloads: list[bytes]
    readings_per_message: int

    @property
    def messages(self) -> int:
        return len(self.payloads)

    @property
    def readings(self) -> int:
        return self.messages * self.readings_per_message

    @property
    def payload_bytes(self) -> int:
        return sum(map(len, self.payloads))

    def head(self, messages: int) -> Workload:
        return Workload(
            self.style, self.kind, self.topics[:messages], self.payloads[:messages], self.readings_per_message
        )

    def save(self, path: Path) -> None:
        with path.open("wb") as handle:
            pickle.dump((self.topics, self.payloads), handle, protocol=pickle.HIGHEST_PROTOCOL)


def build_workload(style: str, messages: int, seed: int) -> Workload:
    """``messages`` consecutive reports of the simulated city, ending an hour ago."""
    kind_name = PAYLOAD_KINDS[style]
    table = build_city(_PRESET, seed=seed).tables[kind_name]
    model = MODELS[kind_name](table, Drivers(seed), seed)
    schedule = KindSchedule(table)
    window_ms = math.ceil(messages * schedule.interval_ms / len(table)) + schedule.interval_ms
    end_ms = now_ms() - _END_MARGIN_MS
    due = schedule.due(end_ms - window_ms, end_ms)
    if len(due) < messages:
        raise BenchError(f"schedule produced {len(due)} reports, wanted {messages}")
    due = Due(due.rows[-messages:], due.slot_ms[-messages:])
    topics: list[str] = []
    payloads: list[bytes] = []
    for message in telemetry_messages(model, schedule, due):
        topics.append(message.topic)
        payloads.append(message.payload)
    workload = Workload(style, KIND_BY_NAME[kind_name], topics, payloads, schedule.readings_per_report)
    keys = reading_keys(workload)
    if len(keys) != workload.readings:
        raise BenchError(f"{workload.readings - len(keys)} readings share a (device, ts): not unique")
    return workload


def load_messages(path: Path) -> tuple[list[str], list[bytes]]:
    with path.open("rb") as handle:
        topics, payloads = pickle.load(handle)  # our own file, written by Workload.save
    return topics, payloads


def _device_id(topic: str) -> str:
    return topic.split("/")[3]


def reading_keys(workload: Workload) -> dict[tuple[str, int], int]:
    """(device_id, ts_ms) of every reading -> index of the message carrying it."""
    keys: dict[tuple[str, int], int] = {}
    for index, (topic, payload) in enumerate(zip(workload.topics, workload.payloads, strict=True)):
        device = _device_id(topic)
        for item in decode_telemetry(payload):
            keys[(device, int(item["ts"]))] = index
    return keys


@dataclass(frozen=True, slots=True)
class DecodedRow:
    ts_ms: int
    device_id: str
    seq: int | None
    values: tuple[float | None, ...]


def decode_rows(workload: Workload) -> list[list[DecodedRow]]:
    """The rows of each message, decoded and checked with the wire contract as ingest does."""
    names = workload.kind.metric_names
    decoded: list[list[DecodedRow]] = []
    for topic, payload in zip(workload.topics, workload.payloads, strict=True):
        device = _device_id(topic)
        rows = []
        for item in decode_telemetry(payload):
            reading = decode_reading(item)
            good, problems = check_metrics(workload.kind, reading.metrics)
            if problems:
                raise BenchError(f"the workload has invalid values: {problems[0].detail}")
            rows.append(DecodedRow(reading.ts_ms, device, reading.seq, tuple(good.get(n) for n in names)))
        decoded.append(rows)
    return decoded


# --- binary COPY --------------------------------------------------------------------------------

# PostgreSQL binary COPY format ("COPY", File Formats, PostgreSQL 15 manual): signature, flags
# and header extension length; then per tuple a field count and (length, bytes) per field, -1
# meaning NULL; timestamps are int64 microseconds since 2000-01-01 UTC.
_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 0)
_COPY_TRAILER = struct.pack("!h", -1)
_PG_EPOCH_US = 946_684_800_000_000
_NULL = struct.pack("!i", -1)
_INT8 = struct.Struct("!iq")
_FLOAT8 = struct.Struct("!id")


def reading_copy_columns(kind: Kind) -> tuple[str, ...]:
    return ("time", "device_id", "seq", "received_at", *kind.metric_names)


def encode_copy(rows: list[DecodedRow], received_ms: int) -> bytes:
    """A complete binary COPY stream of ``rows`` in :func:`reading_copy_columns` order."""
    parts = [_COPY_HEADER]
    received = _INT8.pack(8, received_ms * 1000 - _PG_EPOCH_US)
    for row in rows:
        device = row.device_id.encode()
        parts.append(struct.pack("!h", 4 + len(row.values)))
        parts.append(_INT8.pack(8, row.ts_ms * 1000 - _PG_EPOCH_US))
        parts.append(struct.pack("!i", len(device)) + device)
        parts.append(_NULL if row.seq is None else _INT8.pack(8, row.seq))
        parts.append(received)
        parts.extend(_NULL if v is None else _FLOAT8.pack(8, v) for v in row.values)
    parts.append(_COPY_TRAILER)
    return b"".join(parts)


# --- publishers ---------------------------------------------------------------------------------


# Messages a publisher keeps unacknowledged: 100 keeps the broker's queue for the subscriber short
# (the latency figures), and the gateway client (simulator.wireclient) is as fast with it.
PUBLISH_WINDOW = 100


@dataclass(frozen=True, slots=True)
class PublisherResult:
    index: int
    indices: NDArray[np.int64]  # message numbers this publisher sent, in order
    publish_times: NDArray[np.float64]  # epoch seconds just before each publish() call
    sent: int  # workload messages paho took (the gateway's own status message not counted)
    unacked: int
    errors: int
    cpu_s: float


@dataclass(frozen=True, slots=True)
class _PublisherJob:
    index: int
    count: int
    messages_file: Path
    limit: int
    port: int
    qos: int
    rate_per_s: float | None
    client_id: str


def _publish(job: _PublisherJob, ready: Any, go: Any, results: Any) -> None:
    """Body of one publisher process: connect, wait for ``go``, publish its share, drain."""
    # The parent owns shutdown: a Ctrl-C in the terminal must not kill publishers mid-result.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    topics, payloads = load_messages(job.messages_file)
    indices = np.arange(job.index, job.limit, job.count, dtype=np.int64)
    times = np.zeros(len(indices), dtype=np.float64)
    gateway = Gateway(MqttSettings(port=job.port), job.client_id, max_outstanding=PUBLISH_WINDOW)
    gateway.connect()
    ready.set()
    go.wait()
    cpu0 = time.process_time()
    start = time.monotonic()
    interval = 1.0 / job.rate_per_s if job.rate_per_s else 0.0
    clock = time.time
    publish = gateway.publish
    published = 0
    for k, i in enumerate(indices.tolist()):
        if interval:
            ahead = start + k * interval - time.monotonic()
            if ahead > 0.001:
                time.sleep(ahead)
        times[k] = clock()
        published += publish(topics[i], payloads[i], job.qos)
    unacked = gateway.close(goodbye=False, deadline=time.monotonic() + 120.0)
    results.put(
        PublisherResult(
            job.index,
            indices,
            times,
            published,
            unacked,
            gateway.errors,
            time.process_time() - cpu0,
        )
    )


class PublisherGroup:
    """``count`` publisher processes sending the first ``limit`` messages of ``messages_file``,
    interleaved (publisher p sends messages p, p + count, ...); connected on enter, sending on
    :meth:`go`."""

    def __init__(
        self,
        messages_file: Path,
        limit: int,
        *,
        count: int,
        port: int,
        qos: int,
        label: str,
        rate_per_s: float | None = None,
    ) -> None:
        self._ctx = mp.get_context("spawn")
        self._go = self._ctx.Event()
        self._results: Any = self._ctx.Queue()
        self._ready = [self._ctx.Event() for _ in range(count)]
        self._processes = [
            self._ctx.Process(
                target=_publish,
                args=(
                    _PublisherJob(
                        n,
                        count,
                        messages_file,
                        limit,
                        port,
                        qos,
                        rate_per_s / count if rate_per_s else None,
                        f"bench-{label}-pub-{n + 1}",
                    ),
                    self._ready[n],
                    self._go,
                    self._results,
                ),
                name=f"bench-publisher-{n + 1}",
                daemon=True,
            )
            for n in range(count)
        ]

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._processes if p.pid is not None]

    def __enter__(self) -> Self:
        try:
            for process in self._processes:
                process.start()
            deadline = time.monotonic() + 60.0
            for process, ready in zip(self._processes, self._ready, strict=True):
                while not ready.wait(0.2):
                    if not process.is_alive() or time.monotonic() > deadline:
                        raise BenchError(f"{process.name} did not connect to the broker")
        except BaseException:
            self._stop()
            raise
        return self

    def go(self) -> None:
        self._go.set()

    def results(self, timeout_s: float) -> list[PublisherResult]:
        """Wait for every publisher to finish and hand back what it did."""
        collected: list[PublisherResult] = []
        deadline = time.monotonic() + timeout_s
        while len(collected) < len(self._processes):
            try:
                collected.append(self._results.get(timeout=0.5))
            except queue.Empty:
                dead = [p.name for p in self._processes if p.exitcode not in (None, 0)]
                if dead:
                    raise BenchError(f"publisher process failed: {', '.join(dead)}") from None
                if time.monotonic() > deadline:
                    raise BenchError(f"publishers did not finish within {timeout_s:.0f} s") from None
        for process in self._processes:
            process.join(10.0)
        return sorted(collected, key=lambda r: r.index)

    def _stop(self) -> None:
        for process in self._processes:
            if process.is_alive():
                process.terminate()
        for process in self._processes:
            if process.pid is not None:
                process.join(5.0)
                if process.is_alive():
                    process.kill()
                    process.join()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop()


def publish_span(results: list[PublisherResult]) -> tuple[float, float]:
    """Wall time of the first and of the last publish() call over all publishers."""
    firsts = [float(r.publish_times[0]) for r in results if len(r.publish_times)]
    lasts = [float(r.publish_times[-1]) for r in results if len(r.publish_times)]
    return min(firsts), max(lasts)


def publish_times_by_message(results: list[PublisherResult], messages: int) -> NDArray[np.float64]:
    times = np.full(messages, np.nan)
    for result in results:
        times[result.indices] = result.publish_times
    return times


# --- subscribers of the broker stages -------------------------------------------------------------


class WireSubscriber:
    """An MQTT 5 QoS 1 subscriber set up like ingest's, with ingest's client
    (cityneuron.mqtt5client: shared subscription, persistent session, receive maximum, manual
    acks), that acks each read's messages in one write on arrival and does nothing else."""

    def __init__(self, port: int, topic_filter: str, receive_maximum: int, expected: int) -> None:
        self._filter = topic_filter
        self._expected = expected
        self.received = 0
        self.last_at = 0.0
        self.done = threading.Event()
        self._subscribed = threading.Event()
        self._client = Mqtt5Client(
            MqttSettings(port=port),
            "bench-subscriber",
            clean_start=True,
            session_expiry_s=SESSION_EXPIRY_S,
            receive_maximum=receive_maximum,
            on_connect=self._on_connect,
            on_subscribe=lambda packet_id, codes: self._subscribed.set(),
            on_publishes=self._on_publishes,
        )

    def _on_connect(self, session_present: bool) -> None:
        self._client.subscribe([Subscription(self._filter, qos=1)])

    def _on_publishes(self, batch: list[RawPublish], connection: int) -> None:
        qos1 = [packet_id for first, _, packet_id, _ in batch if first & 0x06 == 0x02]
        qos2 = [packet_id for first, _, packet_id, _ in batch if first & 0x06 == 0x04]
        self._client.ack(qos1, qos2, connection)
        self.received += len(batch)
        self.last_at = time.time()
        if self.received >= self._expected:
            self.done.set()

    def __enter__(self) -> Self:
        self._client.start()
        if not self._subscribed.wait(15.0):
            self.__exit__(None, None, None)
            raise BenchError("the benchmark subscriber did not get its subscription")
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._client.close()


_PROBE_TOPIC = "city/bench/probe"


class CommandLineSubscriber:
    """``mosquitto_sub`` (C, libmosquitto) on the same shared subscription: the broker stage
    without a Python consumer. It prints each message's topic; a probe topic tells when it has
    subscribed."""

    def __init__(
        self, binary: str, port: int, topic_filter: str, receive_maximum: int, expected: int
    ) -> None:
        self._args = [
            binary,
            *("-V", "mqttv5", "-q", "1", "-p", str(port), "-i", "bench-c-subscriber"),
            *("-D", "connect", "receive-maximum", str(receive_maximum)),
            *("-t", topic_filter, "-t", _PROBE_TOPIC, "-F", "%t"),
        ]
        self._port = port
        self._expected = expected
        self.received = 0
        self.last_at = 0.0
        self.done = threading.Event()
        self._ready = threading.Event()
        self._process: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None

    def _read(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        probe = _PROBE_TOPIC.encode()
        for line in self._process.stdout:
            if line.startswith(probe):
                self._ready.set()
                continue
            self.received += 1
            self.last_at = time.time()
            if self.received >= self._expected:
                self.done.set()

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def __enter__(self) -> Self:
        self._process = subprocess.Popen(self._args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self._reader = threading.Thread(target=self._read, name="bench-c-subscriber", daemon=True)
        self._reader.start()
        prober = paho.Client(CallbackAPIVersion.VERSION2, client_id="bench-probe")
        try:
            prober.connect("127.0.0.1", self._port)
            prober.loop_start()
            deadline = time.monotonic() + 15.0
            while not self._ready.is_set():
                if time.monotonic() > deadline or self._process.poll() is not None:
                    raise BenchError("mosquitto_sub did not subscribe")
                prober.publish(_PROBE_TOPIC, b"probe", qos=0)
                self._ready.wait(0.05)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        finally:
            prober.disconnect()
            prober.loop_stop()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            self._process.wait(10.0)


# --- CPU accounting from /proc -------------------------------------------------------------------

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Fields after "(comm)": state is field 3 of proc(5), so field n is at index n - 3.
    return text.rsplit(")", 1)[1].split()


def process_cpu_s(pid: int | None, *, with_reaped_children: bool = False) -> float:
    """User + system CPU seconds of ``pid`` (threads included); optionally of its reaped children."""
    fields = _stat_fields(pid) if pid else None
    if fields is None:
        return 0.0
    ticks = int(fields[11]) + int(fields[12])
    if with_reaped_children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / _CLOCK_TICKS


def _all_pids() -> Iterator[int]:
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            yield int(entry.name)


def process_tree_cpu_s(root_pid: int) -> float:
    """CPU seconds of a server and its children (PostgreSQL backends), counting ended children
    through the parent's reaped-children totals."""
    total = process_cpu_s(root_pid, with_reaped_children=True)
    for pid in _all_pids():
        fields = _stat_fields(pid)
        if fields is not None and int(fields[1]) == root_pid:
            total += (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS
    return total


def pid_with_argument(argument: str) -> int | None:
    """The process whose command line contains ``argument`` (to find the Mosquitto we started)."""
    for pid in _all_pids():
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argument.encode() in cmdline:
            return pid
    return None


def _machine_jiffies() -> tuple[int, int]:
    """(busy, total) clock ticks of all CPUs since boot: the first line of /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


class CpuMeter:
    """CPU seconds used by named processes over a window, and how busy the whole machine was
    (which also counts what no named process owns: kernel network work, other tenants)."""

    def __init__(self, sources: dict[str, Callable[[], float]]) -> None:
        self._sources = sources
        self._start: dict[str, float] = {}
        self._machine0 = (0, 0)
        self._wall0 = 0.0
        self.cpu_s: dict[str, float] = {}
        self.machine_busy = float("nan")
        self.machine_cpu_s = float("nan")

    def __enter__(self) -> Self:
        self._start = {name: read() for name, read in self._sources.items()}
        self._machine0 = _machine_jiffies()
        self._wall0 = time.monotonic()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is not None:
            return
        busy, total = _machine_jiffies()
        wall_s = time.monotonic() - self._wall0
        self.machine_busy = (busy - self._machine0[0]) / max(1, total - self._machine0[1])
        self.cpu_s = {name: read() - self._start[name] for name, read in self._sources.items()}
        self.machine_cpu_s = self.machine_busy * wall_s * (os.cpu_count() or 1)

    def breakdown(self, **more_cpu_s: float) -> dict[str, float]:
        """CPU seconds by process, ``more_cpu_s`` (measured elsewhere) included, plus "other": what
        the machine used besides (kernel loopback TCP work, this script, other tenants)."""
        named = {**more_cpu_s, **self.cpu_s}
        return {**named, "other": max(0.0, self.machine_cpu_s - sum(named.values()))}


def utc_now_iso() -> str:
    return datetime.now(tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
