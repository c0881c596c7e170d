"""The whole city end to end on this machine: ``cityneuron up`` with a preset, measured.

    python bench/city_scale.py [--preset shenzhen] [--scale 1.0] [--minutes 60]
                               [--speed N --retention-hours H] [--home DIR] [--json]

Runs ``cityneuron up`` exactly as a user does (a real Mosquitto, ingest, PostgreSQL and API),
then reports:

- start-up: seconds from the command to the banner (the registry is in and the city publishes);
- per kind, readings the simulator handed to the broker (its own count, printed when it stops)
  against rows stored, dead letters and duplicates (the simulator is stopped first and the
  ingest drained, so nothing is in flight when they are compared);
- lag: the ingest's histogram (commit time minus device time; water and gas meters upload 24
  hourly frozen readings a day, so their readings are up to a day "late" by design) and, per
  real-time kind, arrival minus device time of the rows stored after warm-up;
- CPU (cores) and resident memory (PSS, so PostgreSQL's shared buffers count once) per process
  group, sampled through the run, and their sum;
- broker backlog: telemetry messages the simulator published minus those ingest received;
- disk: database and broker folder sizes, growth per hour after warm-up (with ``--speed`` and
  ``--retention-hours`` a time series, to see the growth stop once partitions are dropped);
- the API at ``--api-rate`` requests/s for ``--api-seconds``: p50/p99 per endpoint.

The machine is described with the numbers (bench/_common.machine); on a shared machine the
figures include the neighbours' load, which the report shows as the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx
import psycopg
from _common import machine

from cityneuron.catalog import KINDS
from cityneuron.servers import free_port

_GROUPS = ("simulator", "ingest", "api", "up", "mosquitto", "postgres")
_CLK_TCK = os.sysconf("SC_CLK_TCK")
# Kinds whose readings are sent as they are taken (meters upload frozen hourly readings).
_REALTIME_KINDS = ("smart_pole", "manhole_cover", "electricity_meter", "air_station", "hydrology_station")


# --- processes -----------------------------------------------------------------------------------


def _tree(root: int) -> list[int]:
    children: dict[int, list[int]] = defaultdict(list)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            children[int(fields[1])].append(int(entry.name))
    found, todo = [root], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _group(pid: int) -> str | None:
    try:
        cmd = (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return None
    if "postgres" in cmd:
        return "postgres"
    if "mosquitto" in cmd:
        return "mosquitto"
    for name, marker in (
        ("simulator", "cityneuron sim"),
        ("ingest", "cityneuron ingest"),
        ("api", "cityneuron api"),
    ):
        if marker in cmd:
            return name
    return "up" if "cityneuron up" in cmd else None


def _cpu_ticks(pid: int) -> int:
    fields = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)


def _pss_kib(pid: int) -> int:
    for line in (Path("/proc") / str(pid) / "smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return 0


class ProcessSampler:
    """CPU (cores, between samples) and PSS per process group of the stack."""

    def __init__(self, root: int) -> None:
        self.root = root
        self._ticks: dict[int, int] = {}
        self._t = time.monotonic()
        self.cpu: dict[str, list[float]] = defaultdict(list)
        self.rss_mib: dict[str, list[float]] = defaultdict(list)
        self.total_rss_mib: list[float] = []

    def sample(self) -> None:
        now = time.monotonic()
        cpu: dict[str, float] = defaultdict(float)
        rss: dict[str, float] = defaultdict(float)
        ticks: dict[int, int] = {}
        for pid in _tree(self.root):
            group = _group(pid)
            if group is None:
                continue
            try:
                ticks[pid] = _cpu_ticks(pid)
                rss[group] += _pss_kib(pid) / 1024
            except (OSError, IndexError):
                continue
            if pid in self._ticks:
                cpu[group] += (ticks[pid] - self._ticks[pid]) / _CLK_TCK / max(now - self._t, 1e-3)
        if self._ticks:
            for group in _GROUPS:
                self.cpu[group].append(cpu.get(group, 0.0))
        for group in _GROUPS:
            self.rss_mib[group].append(rss.get(group, 0.0))
        self.total_rss_mib.append(sum(rss.values()))
        self._ticks, self._t = ticks, now

    def pid_of(self, group: str) -> int | None:
        return next((p for p in _tree(self.root) if _group(p) == group), None)


# --- the stack's output and metrics --------------------------------------------------------------


class StackOutput:
    """Reads ``up``'s output into a log file, noting the banner and the simulator's counts."""

    _PROGRESS = re.compile(r"([\d,]+) msgs \(")

    def __init__(self, process: subprocess.Popen[str], log_file: Path) -> None:
        self.banner = threading.Event()
        self.summary: dict[str, Any] = {}
        self.published_messages = 0
        self._process = process
        self._log = log_file.open("w")
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self._process.stdout is not None
        for raw in self._process.stdout:
            for line in raw.split("\r"):
                self._log.write(line if line.endswith("\n") else line + "\n")
                if "Press Ctrl-C to stop" in line:
                    self.banner.set()
                if match := self._PROGRESS.search(line):
                    self.published_messages = int(match.group(1).replace(",", ""))
                if line.startswith("simulator summary:"):
                    self.summary = _parse_summary(line)
        self._log.close()


def _parse_summary(line: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for part in line.split(":", 1)[1].split():
        key, sep, value = part.partition("=")
        if not sep:
            continue
        if value.startswith("{"):
            out[key] = json.loads(value)
        else:
            try:
                out[key] = float(value.replace(",", ""))
            except ValueError:
                out[key] = value
    return out


def _metrics(url: str) -> dict[str, float]:
    try:
        text = httpx.get(url, timeout=5).text
    except httpx.HTTPError:
        return {}
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            try:
                out[name] = float(value)
            except ValueError:
                continue
    return out


def _histogram_quantiles(
    before: dict[str, float], after: dict[str, float], name: str
) -> dict[str, float | None]:
    """p50/p99 upper bounds from the difference of two snapshots of a Prometheus histogram."""
    buckets = []
    for key, value in after.items():
        if key.startswith(f"{name}_bucket"):
            le = key.split('le="', 1)[1].split('"', 1)[0]
            buckets.append((float("inf") if le == "+Inf" else float(le), value - before.get(key, 0.0)))
    buckets.sort()
    total = buckets[-1][1] if buckets else 0.0
    result: dict[str, float | None] = {"count": total}
    for q in (0.5, 0.99):
        result[f"p{int(q * 100)}_le_s"] = next((le for le, n in buckets if total and n >= q * total), None)
    return result


# --- database ------------------------------------------------------------------------------------


def _db_url(home: Path, port: int) -> str:
    password = (home / "postgres" / "cityneuron.password").read_text().strip()
    return f"postgresql://cityneuron:{password}@127.0.0.1:{port}/cityneuron"


def _db_size(url: str) -> int:
    with psycopg.connect(url, connect_timeout=5) as conn:
        row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
    return int(row[0]) if row else 0


def _dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


def _stored_since(url: str, since: float) -> dict[str, int]:
    with psycopg.connect(url, connect_timeout=5) as conn:
        return {
            k.name: int(
                conn.execute(
                    f"SELECT count(*) FROM {k.table} WHERE received_at >= to_timestamp(%s)",  # noqa: S608
                    (since,),
                ).fetchone()[0]  # type: ignore[index]
            )
            for k in KINDS
        }


def _arrival_lag(url: str, since: float) -> dict[str, dict[str, float | None]]:
    """Per real-time kind: arrival minus device time of the rows that arrived after ``since``."""
    out: dict[str, dict[str, float | None]] = {}
    with psycopg.connect(url, connect_timeout=5) as conn:
        for name in _REALTIME_KINDS:
            row = conn.execute(
                "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY s), percentile_cont(0.99)"  # noqa: S608
                f" WITHIN GROUP (ORDER BY s), count(*) FROM (SELECT extract(epoch FROM received_at - time) AS s"
                f" FROM reading_{name} WHERE received_at >= to_timestamp(%s)) t",
                (since,),
            ).fetchone()
            if row is not None:
                out[name] = {"p50_s": row[0], "p99_s": row[1], "rows": row[2]}
    return out


# --- the API -------------------------------------------------------------------------------------


def _api_paths(api: str) -> dict[str, str]:
    with httpx.Client(base_url=api, timeout=30) as client:
        page = client.get("/devices", params={"kind": "smart_pole", "limit": 1}).json()
        pole = page["items"][0]["device_id"] if page["items"] else "pole-futian-00001"
        meters = client.get("/devices", params={"kind": "water_meter", "limit": 100}).json()
    cursor = meters.get("next_cursor")
    return {
        "overview": "/city/overview",
        "district summary": "/city/districts/futian/summary",
        "aqi districts": "/city/aqi/districts",
        "water quality": "/city/water-quality/stations",
        "rain districts": "/city/rain/districts",
        "devices page": "/devices?kind=water_meter&limit=100" + (f"&cursor={cursor}" if cursor else ""),
        "latest of one device": f"/devices/{pole}/latest",
    }


def api_load(api: str, rate_per_s: float, seconds: float) -> dict[str, dict[str, float]]:
    """Round-robin over the endpoints at ``rate_per_s`` (paced, not saturating); latency per endpoint.

    Each endpoint is asked once before the clock starts (reported as ``first_ms``): the first
    request of a shared view renders it cold, which a dashboard polling it pays once; the
    percentiles are the steady state of screens that keep polling."""
    paths = list(_api_paths(api).items())
    times: dict[str, list[float]] = defaultdict(list)
    errors: dict[str, int] = defaultdict(int)
    first: dict[str, float] = {}
    interval = 1.0 / rate_per_s
    with httpx.Client(base_url=api, timeout=30) as client:
        for name, path in paths:
            t0 = time.perf_counter()
            client.get(path)
            first[name] = round((time.perf_counter() - t0) * 1000, 1)
        start = time.monotonic()
        n = 0
        while time.monotonic() - start < seconds:
            name, path = paths[n % len(paths)]
            t0 = time.perf_counter()
            status = client.get(path).status_code
            times[name].append((time.perf_counter() - t0) * 1000)
            if status != 200:
                errors[name] += 1
            n += 1
            time.sleep(max(0.0, start + n * interval - time.monotonic()))
    out = {}
    for name, values in times.items():
        values.sort()
        out[name] = {
            "requests": len(values),
            "errors": errors[name],
            "first_ms": first[name],
            "p50_ms": round(values[len(values) // 2], 1),
            "p99_ms": round(values[min(len(values) - 1, int(len(values) * 0.99))], 1),
        }
    return out


# --- the run -------------------------------------------------------------------------------------


def _ports() -> dict[str, int]:
    return {name: free_port() for name in ("mqtt", "postgres", "api", "ingest", "tls")}


def run(args: argparse.Namespace) -> dict[str, Any]:
    home = Path(args.home) if args.home else Path(tempfile.mkdtemp(prefix="city-scale-")) / "home"
    home.parent.mkdir(parents=True, exist_ok=True)
    home.parent.chmod(0o711)
    ports = _ports()
    command = [
        sys.executable, "-m", "cityneuron", "up", "--home", str(home),
        "--preset", args.preset, "--scale", str(args.scale), "--speed", str(args.speed),
        "--mqtt-port", str(ports["mqtt"]), "--postgres-port", str(ports["postgres"]),
        "--api-port", str(ports["api"]), "--ingest-http-port", str(ports["ingest"]),
    ]  # fmt: skip
    if args.retention_hours:
        command += ["--retention-hours", str(args.retention_hours)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "CITYNEURON_STACK__MQTT_TLS_PORT": str(ports["tls"])}
    api = f"http://127.0.0.1:{ports['api']}"
    metrics_url = f"http://127.0.0.1:{ports['ingest']}/metrics"
    t0 = time.monotonic()
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True
    )
    output = StackOutput(process, home.parent / "up.log")
    result: dict[str, Any] = {
        "preset": args.preset,
        "scale": args.scale,
        "speed": args.speed,
        "log": str(home.parent / "up.log"),
    }
    try:
        while not output.banner.wait(1.0):
            if process.poll() is not None:
                raise SystemExit(
                    f"cityneuron up exited with {process.returncode}; see {home.parent / 'up.log'}"
                )
            if time.monotonic() - t0 > args.startup_timeout_s:
                raise SystemExit(f"not up after {args.startup_timeout_s:.0f} s; see {home.parent / 'up.log'}")
        result["startup_s"] = round(time.monotonic() - t0, 1)
        started_wall = time.time()
        url = _db_url(home, ports["postgres"])
        sampler = ProcessSampler(process.pid)
        sampler.sample()
        duration = args.minutes * 60.0
        warmup = min(args.warmup_s, duration / 4)
        deadline = time.monotonic() + duration
        warm: dict[str, Any] | None = None
        backlog: list[int] = []
        disk_series: list[tuple[float, int]] = []
        api_done = False
        while time.monotonic() < deadline:
            time.sleep(min(args.sample_s, max(0.0, deadline - time.monotonic())))
            sampler.sample()
            metrics = _metrics(metrics_url)
            received = int(metrics.get('cityneuron_ingest_messages_received_total{channel="telemetry"}', 0))
            backlog.append(max(0, output.published_messages - received))
            elapsed = time.monotonic() - (deadline - duration)
            disk_series.append((round(elapsed, 1), _db_size(url)))
            if warm is None and elapsed >= warmup:
                warm = {"t": time.monotonic(), "wall": time.time(), "metrics": metrics, "db": disk_series[-1][1],
                        "broker": _dir_size(home / "mosquitto")}  # fmt: skip
            if warm is not None and not api_done and args.api_seconds > 0:
                result["api"] = api_load(api, args.api_rate, args.api_seconds)
                api_done = True
        end_metrics = _metrics(metrics_url)
        if warm is None:
            warm = {
                "t": time.monotonic(),
                "wall": time.time(),
                "metrics": end_metrics,
                "db": _db_size(url),
                "broker": 0,
            }
        hours = max(time.monotonic() - warm["t"], 1e-6) / 3600
        result["lag_ingest_histogram"] = _histogram_quantiles(
            warm["metrics"], end_metrics, "cityneuron_ingest_lag_seconds"
        )
        result["lag_arrival_by_kind"] = _arrival_lag(url, warm["wall"])
        result["disk"] = {
            "db_mib": round(disk_series[-1][1] / 2**20, 1),
            "db_growth_mib_per_h": round((disk_series[-1][1] - warm["db"]) / 2**20 / hours, 1),
            "broker_mib": round(_dir_size(home / "mosquitto") / 2**20, 1),
        }
        if args.retention_hours:
            result["disk"]["series_s_mib"] = [(t, round(b / 2**20, 1)) for t, b in disk_series]
        result["broker_backlog_messages"] = {
            "max": max(backlog, default=0),
            "last": backlog[-1] if backlog else 0,
        }
        result["processes"] = {
            g: {
                "cpu_cores_mean": round(sum(sampler.cpu[g]) / max(len(sampler.cpu[g]), 1), 3),
                "cpu_cores_max": round(max(sampler.cpu[g], default=0.0), 3),
                "rss_mib_max": round(max(sampler.rss_mib[g], default=0.0), 1),
            }
            for g in _GROUPS
        }
        result["rss_total_mib_max"] = round(max(sampler.total_rss_mib, default=0.0), 1)
        # Reconcile: stop the simulator (it prints its own counts), let ingest drain, count rows.
        sim = sampler.pid_of("simulator")
        if sim is not None:
            os.kill(sim, signal.SIGTERM)
            limit = time.monotonic() + 120
            while not output.summary and time.monotonic() < limit:
                time.sleep(0.5)
        # Drained: ingest received at least every message the simulator says it published (the
        # broker's backlog is empty) and its counters stood still for --drain-s. Counters alone
        # stood still for 10 s during a long commit at 1:1 while millions were still queued.
        published_total = int(output.summary.get("messages", output.published_messages))
        stable_since, last = time.monotonic(), -1.0
        drain_deadline = time.monotonic() + args.drain_timeout_s
        while time.monotonic() - stable_since < args.drain_s and time.monotonic() < drain_deadline:
            metrics = _metrics(metrics_url)
            stored = sum(
                v for k, v in metrics.items() if k.startswith("cityneuron_ingest_readings_stored_total")
            )
            received = metrics.get('cityneuron_ingest_messages_received_total{channel="telemetry"}', 0)
            if (
                stored != last
                or metrics.get("cityneuron_ingest_queue_depth", 0) > 0
                or received < published_total
            ):
                stable_since, last = time.monotonic(), stored
            time.sleep(1.0)
        result["drained"] = time.monotonic() - stable_since >= args.drain_s
        published: dict[str, int] = output.summary.get("readings_by_kind", {})
        stored_rows = _stored_since(url, started_wall - 5)
        metrics = _metrics(metrics_url)
        result["reconcile"] = {
            k.name: {
                "published": published.get(k.name, 0),
                "stored": stored_rows.get(k.name, 0),
                "duplicates": int(metrics.get(f'cityneuron_ingest_duplicates_total{{kind="{k.name}"}}', 0)),
            }
            for k in KINDS
        }
        result["dead_letters"] = {
            k.split('"')[1]: int(v)
            for k, v in metrics.items()
            if k.startswith("cityneuron_ingest_dead_letters_total{")
        }
        result["simulator_summary"] = {k: v for k, v in output.summary.items() if k != "readings_by_kind"}
        result["load_average"] = os.getloadavg()
        return result
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=120)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="shenzhen")
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--speed", type=float, default=1.0, help="simulated seconds per second")
    parser.add_argument("--retention-hours", type=float, help="passed to `up` (partitions dropped after it)")
    parser.add_argument("--home", help="stack folder (reuse one to skip the registry load)")
    parser.add_argument("--warmup-s", type=float, default=120.0)
    parser.add_argument("--sample-s", type=float, default=10.0)
    parser.add_argument(
        "--drain-s", type=float, default=10.0, help="ingest counters still this long = drained"
    )
    parser.add_argument(
        "--drain-timeout-s", type=float, default=3600.0, help="give up draining after this long"
    )
    parser.add_argument("--api-rate", type=float, default=10.0)
    parser.add_argument("--api-seconds", type=float, default=60.0)
    parser.add_argument("--startup-timeout-s", type=float, default=1800.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    info = machine("15", None)
    result = run(args)
    if args.json:
        print(json.dumps({"machine": info, "result": result}, indent=2))
        return 0
    print(
        f"machine: {info['cpu']}, {info['cores']} cores, {info['ram_gib']} GiB RAM, load {result['load_average']}"
    )
    for key, value in result.items():
        print(f"  {key}: {json.dumps(value)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
