#!/usr/bin/env bash
# The run command (README): install what is missing, then start the whole testbed locally.
# Extra arguments go to `cityneuron up` (e.g. --api-port 8080 --speed 60).
set -euo pipefail
cd "$(dirname "$0")/.."
CITYNEURON_EXTRAS="${CITYNEURON_EXTRAS:-dev}" scripts/bootstrap.sh
venv="${CITYNEURON_VENV:-.venv}"
exec "$venv/bin/cityneuron" up "$@"
