#!/usr/bin/env bash
# ruff (lint + format check) and mypy on the packages; run by scripts/test.sh and so by CI.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${CITYNEURON_VENV:-.venv}"
"$venv/bin/ruff" check .
"$venv/bin/ruff" format --check .
"$venv/bin/mypy"
