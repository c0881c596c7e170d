#!/usr/bin/env bash
# Install what a fresh Debian/Ubuntu machine lacks to run and test CityNeuron:
# Mosquitto, the PostgreSQL server, Python venv support, and a virtualenv (.venv) with the package.
# Idempotent: installs only what is missing. Shared by scripts/run.sh, scripts/test.sh and CI.
set -euo pipefail
cd "$(dirname "$0")/.."

extras="${CITYNEURON_EXTRAS:-dev}"
venv="${CITYNEURON_VENV:-.venv}"

missing=()
if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
    missing+=(mosquitto)
fi
if ! compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null && ! command -v initdb >/dev/null 2>&1; then
    missing+=(postgresql)
fi
if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
    missing+=(python3-venv)
fi
if ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "CityNeuron needs Python >= 3.11 (found $(python3 --version)); Debian 12 / Ubuntu 24.04 have it." >&2
    exit 1
fi

if [ ${#missing[@]} -gt 0 ]; then
    echo "installing system packages: ${missing[*]}"
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    # The Debian packages start their own services: CityNeuron never uses them (it runs its own
    # servers on its own ports), so stop them rather than leave them holding 1883 and 5432.
    if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
        $sudo systemctl disable --now mosquitto postgresql >/dev/null 2>&1 || true
    elif command -v service >/dev/null 2>&1; then
        $sudo service mosquitto stop >/dev/null 2>&1 || true
        $sudo service postgresql stop >/dev/null 2>&1 || true
    fi
fi

if [ ! -x "$venv/bin/python" ]; then
    echo "creating virtualenv $venv"
    python3 -m venv "$venv"
fi
# Reinstall only when pyproject.toml changed since the last install.
stamp="$venv/.cityneuron-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "installing cityneuron[$extras] into $venv"
    "$venv/bin/python" -m pip install -q --upgrade pip
    "$venv/bin/python" -m pip install -q -e ".[$extras]"
    touch "$stamp"
fi
