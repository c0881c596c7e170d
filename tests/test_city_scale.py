"""bench/city_scale.py's path at 1/1000 of Shenzhen, so the 1:1 run cannot rot: the real `up`, the
simulator's own per-kind counts reconciled with rows stored, and every figure the bench reports."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench" / "city_scale.py"


def test_city_scale_bench_at_a_thousandth_of_shenzhen(process_env: dict[str, str]) -> None:
    # PostgreSQL runs as its own user: the folder must be traversable (pytest's tmp_path is not).
    root = Path(tempfile.mkdtemp(prefix="city-scale-"))
    root.chmod(0o711)
    home = root / "home"
    command = [
        sys.executable, str(BENCH), "--preset", "shenzhen", "--scale", "0.001", "--minutes", "1.5",
        "--warmup-s", "20", "--sample-s", "5", "--api-rate", "10", "--api-seconds", "10",
        "--home", str(home), "--json",
    ]  # fmt: skip
    try:
        done = subprocess.run(command, capture_output=True, text=True, env=process_env, timeout=900)
    finally:
        log = (root / "up.log").read_text() if (root / "up.log").exists() else ""
        shutil.rmtree(root, ignore_errors=True)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:] + log[-3000:]
    result = json.loads(done.stdout)["result"]
    assert 0 < result["startup_s"] < 600
    reconcile = result["reconcile"]
    assert result["drained"] is True  # ingest received everything the simulator published
    # Nothing lost: every reading the simulator handed to the broker is a row (or a counted
    # duplicate); no dead letters in a fault-free run.
    assert sum(r["published"] for r in reconcile.values()) > 0
    for kind, counts in reconcile.items():
        assert counts["published"] == counts["stored"] + counts["duplicates"], (kind, counts)
    assert not any(result["dead_letters"].values()), result["dead_letters"]
    assert result["processes"]["postgres"]["rss_mib_max"] > 0
    assert result["processes"]["ingest"]["cpu_cores_mean"] > 0
    assert result["rss_total_mib_max"] < 16 * 1024
    api = result["api"]
    assert {"overview", "district summary", "devices page", "latest of one device"} <= set(api)
    assert all(figures["errors"] == 0 for figures in api.values()), api
    assert result["disk"]["db_mib"] > 0
    assert "p99_le_s" in result["lag_ingest_histogram"]
