"""API latency under load, measured with wrk (a separate process) against a served API.

Setup: a fresh PostgreSQL cluster (with TimescaleDB where it is installed, plain PostgreSQL
otherwise: ``--storage``; every figure is labelled with the storage it was measured on), the
default ("small") city backfilled over
``--days`` days with ``simulator.direct.backfill_direct`` (the same COPY path as
``cityneuron sim --backfill-from ... --direct``), continuous aggregates refreshed (TimescaleDB), then the API
under uvicorn with ``--workers`` processes in a subprocess. With ``--live`` (default) the city keeps
running while it is measured: a thread writes each few seconds' readings of every device through
the same COPY path (readings, latest values, device last-seen), at the city's own rate (under 10
readings/s for the small city; cheap next to the API). The MQTT broker and ingest are not in the
loop: the views measured read the database only.

Targets (issue 5): latest of one device p99 < 10 ms at 1,000 req/s; latest of a district's poles
and the district summary p99 < 50 ms; 30-day hourly aggregate of one metric for a district
p95 < 100 ms; and requests/s at saturation for each. "latest one device" asks for one air station
every time (many screens watching one device: answers are shared for api.latest_max_age_ms);
"latest any device" holds it to the same bound with a device drawn at random per request from
every device that has reported, so that nearly every request reads the database.

Debian's wrk is wrk 4 (no fixed-rate -R of wrk2): "paced" runs hold the offered rate near a
target with a per-request delay() on each connection, drawn from an exponential distribution so
that the connections' requests arrive as a Poisson stream (closed loop all the same: latency is
not corrected for coordinated omission); "saturation" runs use no delay and report throughput and
latency together. The mean pause is calibrated by a 2 s run first (the closed loop's rate is
connections / (pause + mean latency)); a paced run lasts --duration or long enough for 2,000
requests. A target is met when its paced run reaches at least 90 % of the rate within the bound:
1,000 req/s for the latest of one device, 100 req/s (a hundred screens polling each second) for
the district views, 20 req/s for the 30-day chart.

    python bench/api_latency.py [--days 30] [--duration 10] [--workers 2] [--no-live]
                                [--storage auto|timescaledb|plain]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import machine, scratch_dir
from cityneuron.catalog import KINDS
from cityneuron.schema import CAGG_WIDTHS, init_schema
from cityneuron.servers import PostgresServer, free_port
from cityneuron.settings import ApiSettings, DatabaseSettings, MqttSettings, Settings, SimulatorSettings
from simulator.direct import backfill_direct

_RESULT = re.compile(r"^RESULT (.*)$", re.MULTILINE)
# Paced runs draw each connection's pause from an exponential distribution: the requests of many
# connections then arrive as a Poisson stream (many independent dashboards), not in the lockstep
# bursts that a fixed pause keeps from the first round. BENCH_PATHS names a file of request paths,
# one drawn at random per request (the latest of one device: a different device each time).
_WRK_SCRIPT = """
local pace = tonumber(os.getenv("BENCH_DELAY_MS") or "0")
local paths_file = os.getenv("BENCH_PATHS") or ""
local paths = {}
local next_seed = 1
setup = function(thread)
  thread:set("seed", next_seed)
  next_seed = next_seed + 1
end
init = function(args)
  math.randomseed(os.time() * 100 + (seed or 0))
  if paths_file ~= "" then
    for line in io.lines(paths_file) do paths[#paths + 1] = line end
  end
end
if paths_file ~= "" then
  request = function() return wrk.format(nil, paths[math.random(#paths)]) end
end
if pace > 0 then
  delay = function() return -math.log(1 - math.random()) * pace end
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %d %d %d %d %d %d %d %d\\n", summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(95), latency:percentile(99), latency.max,
    e.status + e.connect + e.read + e.write + e.timeout, latency.mean))
end
"""


@dataclass(frozen=True, slots=True)
class Run:
    view: str
    mode: str
    connections: int
    requests_per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    errors: int


@dataclass(frozen=True, slots=True)
class Load:
    """What wrk asks for: ``url``, or a path drawn from ``paths`` (a file) per request."""

    url: str
    paths: Path | None = None


def _wrk(load: Load, *, connections: int, duration_s: int, delay_ms: float, script: Path) -> list[float]:
    env = {**os.environ, "BENCH_DELAY_MS": str(delay_ms), "BENCH_PATHS": str(load.paths or "")}
    threads = min(2, connections)
    out = subprocess.run(
        [
            "wrk",
            f"-t{threads}",
            f"-c{connections}",
            f"-d{duration_s}s",
            "--timeout",
            "10s",
            "-s",
            str(script),
            load.url,
        ],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stdout
    match = _RESULT.search(out)
    if match is None:
        raise RuntimeError(f"wrk printed no result:\n{out}")
    return [float(v) for v in match.group(1).split()]


def _measure(
    view: str, mode: str, load: Load, connections: int, delay_ms: float, duration_s: int, script: Path
) -> Run:
    requests, duration_us, p50, p95, p99, worst, errors, _ = _wrk(
        load, connections=connections, duration_s=duration_s, delay_ms=delay_ms, script=script
    )
    run = Run(
        view=view,
        mode=mode,
        connections=connections,
        requests_per_s=round(requests / (duration_us / 1e6), 1),
        p50_ms=p50 / 1000,
        p95_ms=p95 / 1000,
        p99_ms=p99 / 1000,
        max_ms=worst / 1000,
        errors=int(errors),
    )
    print(
        f"{view:28s} {mode:12s} c={connections:<3d} {run.requests_per_s:8.1f} req/s"
        f"  p50 {run.p50_ms:7.2f}  p95 {run.p95_ms:7.2f}  p99 {run.p99_ms:7.2f}  max {run.max_ms:7.1f} ms"
        f"  errors {run.errors}",
        flush=True,
    )
    return run


def _serve(settings: Settings, log_path: Path) -> subprocess.Popen[bytes]:
    code = (
        "import logging, sys; from api.main import run; from cityneuron.settings import Settings;"
        " logging.basicConfig(level=logging.WARNING); run(Settings.model_validate_json(sys.argv[1]))"
    )
    with log_path.open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-c", code, settings.model_dump_json()],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=Path(__file__).resolve().parent.parent,
        )


def _wait_ready(base: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("the API exited during startup")
        try:
            if httpx.get(f"{base}/devices?limit=1", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError("the API did not start")


def _refresh_caggs(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        for kind in KINDS:
            for width in CAGG_WIDTHS:
                conn.execute(
                    "CALL refresh_continuous_aggregate(%s::regclass, NULL, NULL)", (f"{kind.table}_{width}",)
                )


class _LiveCity:
    """Writes the city's readings as they fall due, every ``period_s``, until stopped."""

    def __init__(self, settings: Settings, from_ms: int, period_s: float = 5.0) -> None:
        self._settings = settings
        self._done_ms = from_ms
        self._period_s = period_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-live-city", daemon=True)
        self.readings = 0
        self.error: BaseException | None = None

    def _write_due(self) -> None:
        # A second behind the clock: ingest refuses readings from the future too.
        now_ms = int(time.time() * 1000) - 1000
        summary = backfill_direct(self._settings, self._done_ms, now_ms, registry=False)
        self.readings += summary.readings
        self._done_ms = now_ms

    def _run(self) -> None:
        try:
            while not self._stop.wait(self._period_s):
                self._write_due()
        except BaseException as exc:  # reported on exit: a dead writer makes the run not "live"
            self.error = exc

    def __enter__(self) -> _LiveCity:
        # Catch up from the end of the backfill before measuring: only the city's own rate after.
        self._write_due()
        self.readings = 0
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)
        if self.error is not None:
            raise RuntimeError(f"the live city writer failed: {self.error}") from self.error


@dataclass(frozen=True, slots=True)
class Target:
    view: str
    percentile: str
    bound_ms: float
    rate_per_s: int
    connections: int

    @property
    def nominal_delay_ms(self) -> float:
        return 1000 * self.connections / self.rate_per_s

    @property
    def paced_duration_s(self) -> int:
        # Enough requests that the random pauses move the achieved rate by a few per cent only
        # (a Poisson count of n has a relative spread of 1/sqrt(n)).
        return math.ceil(_PACED_REQUESTS / self.rate_per_s)


_PACED_REQUESTS = 2000


def _calibrated_delay_ms(target: Target, load: Load, script: Path) -> float:
    """The mean per-connection pause that offers ``target.rate_per_s``: a closed loop runs at
    connections / (pause + latency), so the mean latency of a short run is taken off the nominal
    pause."""
    *_, mean_latency_us = _wrk(
        load,
        connections=target.connections,
        duration_s=2,
        delay_ms=target.nominal_delay_ms,
        script=script,
    )
    return max(0.0, target.nominal_delay_ms - mean_latency_us / 1000)


TARGETS = (
    Target("latest one device", "p99", 10.0, 1000, 20),
    # Not an issue target: the same bound with a different device each request, so that almost
    # every request reads the database (api.latest_max_age_ms shares answers per device).
    Target("latest any device", "p99", 10.0, 1000, 20),
    Target("latest district poles", "p99", 50.0, 100, 10),
    Target("district summary", "p99", 50.0, 100, 10),
    Target("30d hourly agg district", "p95", 100.0, 20, 4),
)


def _verdict(target: Target, run: Run) -> str:
    latency = run.p99_ms if target.percentile == "p99" else run.p95_ms
    met = latency < target.bound_ms and run.requests_per_s >= 0.9 * target.rate_per_s and run.errors == 0
    return (
        f"{target.view:26s} {target.percentile} {latency:7.2f} ms at {run.requests_per_s:7.1f} req/s"
        f" (target < {target.bound_ms:g} ms at {target.rate_per_s} req/s): {'met' if met else 'NOT met'}"
    )


def _pick(url: str) -> tuple[str, str, list[str]]:
    """An air station of futian (latest of one device), the district to aggregate over, and every
    device that has a latest reading (latest of any device)."""
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT device_id, district FROM devices WHERE kind = 'air_station' AND district = 'futian'"
            " ORDER BY device_id LIMIT 1"
        ).fetchone()
        reporting = [
            str(r[0]) for r in conn.execute("SELECT device_id FROM latest_reading ORDER BY device_id")
        ]
    if row is None:
        raise RuntimeError("no air station in futian")
    return str(row[0]), str(row[1]), reporting


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--days", type=int, default=30, help="days of backfilled history")
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--saturation-connections", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2, help="uvicorn worker processes of the API")
    parser.add_argument(
        "--live",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="keep the city writing readings while measuring (default: on)",
    )
    parser.add_argument(
        "--storage",
        choices=tuple(_STORAGE),
        default="auto",
        help="auto (default): TimescaleDB when its library is installed, plain PostgreSQL otherwise;"
        " timescaledb: require it; plain: never load it",
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    return parser.parse_args(argv)


# --storage -> PostgresServer(timescaledb=...): None loads it when installed.
_STORAGE: dict[str, bool | None] = {"auto": None, "timescaledb": True, "plain": False}


def _storage_label(timescaledb: str | None) -> str:
    return f"TimescaleDB {timescaledb}" if timescaledb else "plain PostgreSQL"


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if shutil.which("wrk") is None:
        print("wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 2
    root = scratch_dir("cityneuron-apibench-")
    server = PostgresServer(root / "pg", free_port(), timescaledb=_STORAGE[args.storage])
    api: subprocess.Popen[bytes] | None = None
    try:
        server.start()
        url = server.create_database("bench_api")
        info = init_schema(DatabaseSettings(url=url))
        # Whole hours, ending an hour ago: ingest-like data, aggregates over aligned windows.
        end = datetime.now(tz=UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
        start = end - timedelta(days=args.days)
        settings = Settings(
            database=DatabaseSettings(url=url, pool_max_size=10),
            simulator=SimulatorSettings(preset="small"),
            # No broker: the views measured here read the database only.
            mqtt=MqttSettings(port=free_port()),
            api=ApiSettings(
                port=free_port(), rate_limit_per_s=1e6, rate_limit_burst=1_000_000, workers=args.workers
            ),
        )
        began = time.monotonic()
        storage = _storage_label(info.timescaledb)
        print(f"storage: {storage}", flush=True)
        summary = backfill_direct(settings, int(start.timestamp() * 1000), int(end.timestamp() * 1000))
        if info.timescaledb:
            _refresh_caggs(url)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE")
        refresh = " (+ aggregates refresh)" if info.timescaledb else ""
        print(f"backfill: {summary}{refresh} in {time.monotonic() - began:.0f} s", flush=True)

        device_id, district, reporting = _pick(url)
        base = f"http://127.0.0.1:{settings.api.port}"
        api = _serve(settings, root / "api.log")
        _wait_ready(base, api)
        iso = lambda t: t.isoformat().replace("+00:00", "Z")  # noqa: E731
        any_device = root / "any_device.paths"
        any_device.write_text("".join(f"/devices/{d}/latest\n" for d in reporting))
        views = {
            "latest one device": Load(f"{base}/devices/{device_id}/latest"),
            "latest any device": Load(f"{base}/", any_device),
            "latest district poles": Load(f"{base}/latest?kind=smart_pole&district={district}"),
            "district summary": Load(f"{base}/city/districts/{district}/summary"),
            "30d hourly agg district": Load(
                f"{base}/aggregates?kind=air_station&metric=pm25&district={district}&bucket=1h"
                f"&from={iso(end - timedelta(days=min(30, args.days)))}&to={iso(end)}"
            ),
        }
        for name, load in views.items():
            sample = load.url if load.paths is None else f"{base}/devices/{reporting[0]}/latest"
            response = httpx.get(sample, timeout=30)
            drawn = "" if load.paths is None else f" (one of {len(reporting)} devices per request)"
            print(
                f"{name}: HTTP {response.status_code}, {len(response.content)} bytes: {sample}{drawn}",
                flush=True,
            )
        host = machine(info.server_version, info.timescaledb)
        print("machine:", json.dumps(host), "(shared with other jobs while measured)", flush=True)
        script = root / "report.lua"
        script.write_text(_WRK_SCRIPT)
        runs: list[Run] = []
        verdicts: list[str] = []
        live = _LiveCity(settings, int(end.timestamp() * 1000)) if args.live else contextlib.nullcontext()
        print(
            f"API workers: {args.workers}; city live: {'yes' if args.live else 'no'}; storage: {storage}",
            flush=True,
        )
        with live:
            for target in TARGETS:
                load = views[target.view]
                paced = _measure(
                    target.view,
                    f"paced {target.rate_per_s}/s",
                    load,
                    target.connections,
                    _calibrated_delay_ms(target, load, script),
                    max(args.duration, target.paced_duration_s),
                    script,
                )
                runs.append(paced)
                verdicts.append(_verdict(target, paced))
                runs.append(
                    _measure(
                        target.view, "saturation", load, args.saturation_connections, 0, args.duration, script
                    )
                )
        if isinstance(live, _LiveCity):
            print(f"live city wrote {live.readings} readings while measured", flush=True)
        print(f"targets ({storage}):", flush=True)
        for line in verdicts:
            print("  " + line, flush=True)
        for run in runs:
            if run.mode == "saturation":
                print(f"  {run.view:26s} saturation {run.requests_per_s:8.1f} req/s", flush=True)
        if args.json:
            args.json.write_text(
                json.dumps(
                    {
                        "machine": host,
                        "days": args.days,
                        "workers": args.workers,
                        "live": args.live,
                        "storage": storage,
                        "runs": [asdict(r) for r in runs],
                        "targets": verdicts,
                    },
                    indent=2,
                )
            )
        return 0
    finally:
        if api is not None:
            api.terminate()
            try:
                api.wait(timeout=15)
            except subprocess.TimeoutExpired:
                api.kill()
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
