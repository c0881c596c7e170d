#!/usr/bin/env bash
# The run command (README): install what is missing, then start the whole testbed locally.
# Extra arguments go to `cityneuron up` (e.g. --api-port 8080 --speed 60).
set -euo pipefail
cd "$(dirname "$0")/.."
CITYNEURON_EXTRAS="${CITYNEURON_EXTRAS:-dev}" scripts/bootstrap.sh
venv="${CITYNEURON_VENV:-.venv}"
# The command is not on PATH: say once how the README's examples call it.
echo "cityneuron: $venv/bin/cityneuron (or 'source $venv/bin/activate' once, then 'cityneuron')" >&2
exec "$venv/bin/cityneuron" up "$@"
