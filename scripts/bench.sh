#!/usr/bin/env bash
# Every benchmark of the README's "Measured" tables, one after another, with the README's
# arguments; each writes its JSON result (which includes the machine it ran on) to the folder
# given as argument (default bench/results/<date>, git-ignored). About 30-40 minutes: the
# per-device run alone holds 10,000 connections for 10 minutes. Run it on an otherwise idle
# machine: the numbers are only as good as the quiet around them.
#
#     scripts/bench.sh [RESULTS_DIR]
set -uo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh --bench
venv="${CITYNEURON_VENV:-.venv}"
python="$venv/bin/python"
out="${1:-bench/results/$(date +%Y-%m-%d)}"
mkdir -p "$out"

echo "machine: $(uname -srm), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(free -g | awk '/^Mem:/ {print $2}') GiB RAM"
echo "results: $out"
failed=()

# run NAME ARGS...: print the command, run it with stdout (the JSON) to $out/NAME.json.
run() {
    local name="$1"
    shift
    echo
    echo "+ $* > $out/$name.json"
    if ! "$@" >"$out/$name.json"; then
        failed+=("$name")
        echo "!! $name failed (exit status above); continuing" >&2
    fi
}

run ingest_single "$python" bench/ingest_throughput.py --payload single --json
run ingest_array "$python" bench/ingest_throughput.py --payload array --json
run sim_scale "$python" bench/sim_scale.py --minutes 3 --json
run sim_gateway "$python" bench/sim_gateway.py --messages 20000 --sim-hours 0.5 --json
run sim_devices "$python" bench/sim_devices.py --devices 10000 --minutes 10 --json
# api_latency writes its JSON itself and prints progress (and the machine) on stdout.
echo
echo "+ $python bench/api_latency.py --days 1 --duration 3 --json $out/api_latency.json"
"$python" bench/api_latency.py --days 1 --duration 3 --json "$out/api_latency.json" || failed+=(api_latency)

echo
if [ "${#failed[@]}" -gt 0 ]; then
    echo "failed: ${failed[*]} (results in $out)"
    exit 1
fi
echo "all benchmarks done: results in $out"
