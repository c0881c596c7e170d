#!/usr/bin/env bash
# The test command (README, CI): install what is missing, lint, then run the whole test suite
# against real Mosquitto and PostgreSQL servers that the fixtures start on free ports.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh --test
venv="${CITYNEURON_VENV:-.venv}"
scripts/lint.sh
exec "$venv/bin/python" -m pytest "$@"
