"""The operations screen in headless Chromium: time from navigation to the map drawn, bytes at load
and per unchanged refresh, and browser memory, for the small and district presets.

    .venv/bin/python bench/screen.py --preset small --preset district

Each preset runs a real `cityneuron up --no-sim`, fills it with `cityneuron sim --direct` (the
registry and the last hours of readings, COPY'd straight into PostgreSQL) and keeps it quiet, so an
unchanged refresh really is unchanged. Targets (issue 14): map drawn < 1 s (small), < 3 s
(district); a refresh with nothing changed < 5 kB. The ceiling measured in the same run is the
time the same data takes to fetch with a plain HTTP client (no browser, no drawing).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from browser import Browser, chromium
from stackproc import Stack, running_stack

TARGET_DRAWN_S = {"small": 1.0, "district": 3.0}
TARGET_REFRESH_BYTES = 5000
REFRESH_ROUNDS = 5
_REFRESH = """const done = arguments[arguments.length - 1];
const p = window.cityScreen.pollers;
Promise.all([p.states.runNow(), p.overview.runNow()]).then(() => done(true));"""
BACKFILL_HOURS = 2


def machine() -> dict[str, Any]:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kib = next(
        int(x.split()[1]) for x in Path("/proc/meminfo").read_text().splitlines() if x.startswith("MemTotal")
    )
    browser = subprocess.run(
        ["chromium", "--version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "ram_gib": round(mem_kib / 1024**2, 1),
        "load_avg_1m": os.getloadavg()[0],
        "kernel": platform.release(),
        "browser": browser,
    }


def populate(stack: Stack, preset: str) -> float:
    """Registry and the last BACKFILL_HOURS of readings, straight into the database; seconds taken."""
    start = (datetime.now(tz=UTC) - timedelta(hours=BACKFILL_HOURS)).strftime("%Y-%m-%dT%H:%M:%SZ")
    t0 = time.monotonic()
    subprocess.run(
        [sys.executable, "-m", "cityneuron", "sim", "--preset", preset, "--direct",
         "--database-url", stack.database_url, "--backfill-from", start],
        check=True, capture_output=True,
    )  # fmt: skip
    return time.monotonic() - t0


def fetch_ceiling_s(stack: Stack) -> float:
    """The same first requests as the page, with a plain client: the floor under "map drawn"."""
    with httpx.Client(base_url=stack.api, timeout=60, headers={"Accept-Encoding": "gzip"}) as client:
        t0 = time.perf_counter()
        for path in ("/catalog", "/city/overview", "/map/positions", "/map/states"):
            client.get(path).raise_for_status()
        return time.perf_counter() - t0


_ENTRIES = """return performance.getEntriesByType('navigation').concat(performance.getEntriesByType('resource'))
    .map((e) => [e.name, e.startTime, e.transferSize, e.responseStatus || 0]);"""


def _transfers(page: Browser, after_ms: float = -1.0) -> list[tuple[str, float, int, int]]:
    """(url, start ms, bytes on the wire with headers, status) of every finished request after
    ``after_ms`` (Resource Timing; the open /stream response is not finished, so not counted)."""
    return [(u, t, int(n), int(st)) for u, t, n, st in page.js(_ENTRIES) if t > after_ms]


def browser_pss_mib(page: Browser) -> float:
    """Proportional set size of every process of this Chromium (shared pages split between them)."""
    profile = page.driver.capabilities["chrome"]["userDataDir"]
    total_kib = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            if profile not in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
                continue
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total_kib += int(line.split()[1])
        except OSError:
            continue
    return total_kib / 1024


def run_once(stack: Stack) -> dict[str, Any]:
    with chromium() as page:
        page.driver.execute_cdp_cmd("Performance.enable", {})
        page.driver.get(f"{stack.api}/screen/")
        deadline = time.monotonic() + 120
        while not page.js(
            "return !!(window.cityScreen && (window.cityScreen.ready || window.cityScreen.errors.length))"
        ):
            if time.monotonic() > deadline:
                raise RuntimeError("the screen did not load in 120 s")
            time.sleep(0.05)
        errors = page.js("return window.cityScreen.errors")
        if errors:
            raise RuntimeError(f"the screen failed: {errors}")
        drawn_ms = page.js("return performance.getEntriesByName('map-drawn')[0].startTime")
        drawn = page.js("return window.cityScreen.map.drawn")
        draw_ms = page.js("return window.cityScreen.map.drawMs")
        page.js("performance.setResourceTimingBufferSize(5000)")
        time.sleep(1.0)  # the water and alerts requests after the map
        loaded = _transfers(page)
        # Unchanged refreshes: a refresh (states and overview poll) right after another, so that
        # nothing had time to change; the city is quiet, but its devices still fall silent one by
        # one as their reporting intervals pass, so a round that did change is counted apart.
        polls: list[tuple[str, float, int, int]] = []
        for _ in range(REFRESH_ROUNDS):
            page.driver.execute_async_script(_REFRESH)
            marker = page.js("return performance.now()")
            page.driver.execute_async_script(_REFRESH)
            polls += [
                r for r in _transfers(page, marker) if "/map/states" in r[0] or "/city/overview" in r[0]
            ]
            time.sleep(1.0)
        unchanged = [r for r in polls if r[3] == 304]
        changed = [r for r in polls if r[3] != 304]
        dom_ms = page.js("return performance.getEntriesByType('navigation')[0].domContentLoadedEventEnd")
        heap = {
            m["name"]: m["value"]
            for m in page.driver.execute_cdp_cmd("Performance.getMetrics", {})["metrics"]
        }
        return {
            "drawn_s": drawn_ms / 1000,
            "devices_drawn": drawn,
            "draw_frame_ms": round(draw_ms, 1),
            "load_bytes": sum(r[2] for r in loaded),
            "load_requests": len(loaded),
            "page_and_modules_s": round(dom_ms / 1000, 3),
            "refresh_requests": len(polls),
            # A refresh is one states poll and one overview poll; unchanged, each is a 304.
            "bytes_per_refresh": 2 * round(sum(r[2] for r in unchanged) / len(unchanged)) if unchanged else 0,
            "changed_polls": len(changed),
            "changed_poll_bytes_mean": round(sum(r[2] for r in changed) / len(changed)) if changed else 0,
            "js_heap_mib": round(heap.get("JSHeapUsedSize", 0) / 2**20, 1),
            "browser_pss_mib": round(browser_pss_mib(page), 1),
        }


def bench(preset: str, runs: int) -> dict[str, Any]:
    with running_stack("--no-sim", "--preset", preset) as stack:
        populate_s = populate(stack, preset)
        with httpx.Client(base_url=stack.api, timeout=30) as client:
            devices = client.get("/city/overview").json()["devices"]["total"]
        ceiling = min(fetch_ceiling_s(stack) for _ in range(3))
        results = [run_once(stack) for _ in range(runs)]
    best = min(results, key=lambda r: r["drawn_s"])
    median_drawn = sorted(r["drawn_s"] for r in results)[len(results) // 2]
    return {
        "preset": preset,
        "devices": devices,
        "populate_s": round(populate_s, 1),
        "fetch_ceiling_s": round(ceiling, 3),
        "drawn_s_median": round(median_drawn, 3),
        "drawn_over_fetch": round(median_drawn / ceiling, 2),
        "target_drawn_s": TARGET_DRAWN_S[preset],
        "drawn_ok": median_drawn < TARGET_DRAWN_S[preset],
        "refresh_ok": all(0 < r["bytes_per_refresh"] < TARGET_REFRESH_BYTES for r in results),
        "best_run": best,
        "runs": results,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--preset", action="append", choices=sorted(TARGET_DRAWN_S), help="repeat for several"
    )
    parser.add_argument("--runs", type=int, default=3, help="page loads per preset (fresh browser each)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON only")
    args = parser.parse_args()
    presets = args.preset or ["small", "district"]
    report = {"machine": machine(), "results": [bench(p, args.runs) for p in presets]}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    m = report["machine"]
    print(
        f"machine: {m['cpu']}, {m['cores']} cores, {m['ram_gib']} GiB, load {m['load_avg_1m']:.2f} (shared), {m['browser']}"
    )
    for r in report["results"]:
        b = r["best_run"]
        print(
            f"{r['preset']:>8}: {r['devices']} devices drawn in {r['drawn_s_median']:.3f} s median"
            f" (target < {r['target_drawn_s']} s: {'ok' if r['drawn_ok'] else 'MISSED'};"
            f" page and modules {b['page_and_modules_s']:.3f} s;"
            f" plain fetch of the same data {r['fetch_ceiling_s']:.3f} s, x{r['drawn_over_fetch']});"
            f" load {b['load_bytes'] / 1024:.0f} kB in {b['load_requests']} requests;"
            f" unchanged refresh {b['bytes_per_refresh']} B ({b['refresh_requests']} polls,"
            f" {b['changed_polls']} of them changed, {b['changed_poll_bytes_mean']} B each;"
            f" target < {TARGET_REFRESH_BYTES} B: {'ok' if r['refresh_ok'] else 'MISSED'});"
            f" JS heap {b['js_heap_mib']} MiB, browser PSS {b['browser_pss_mib']} MiB"
        )
    print(json.dumps(report))
    return 0 if all(r["drawn_ok"] and r["refresh_ok"] for r in report["results"]) else 1


if __name__ == "__main__":
    sys.exit(main())
