#!/usr/bin/env bash
# Install what a fresh Debian 12 / Ubuntu 24.04 machine lacks to run and test CityNeuron, then a
# virtualenv (.venv) with the package. Idempotent: installs only what is missing. Shared by
# scripts/run.sh, scripts/test.sh, scripts/bench.sh and CI.
#
#   scripts/bootstrap.sh            run: Python, Mosquitto >= 2.0.12 + clients, PostgreSQL + pg_partman, curl
#   scripts/bootstrap.sh --test     and what the tests call: Chromium and ChromeDriver (browser tests), openssl
#   scripts/bootstrap.sh --bench    and what the benchmarks call: wrk
#
# Every program the README, the scripts, the tests and the benchmarks call is installed here (a
# fresh Debian 12 minbase root has not even python3): tests/test_bootstrap.py checks the list.
set -euo pipefail
cd "$(dirname "$0")/.."

want_test=0
want_bench=0
for arg in "$@"; do
    case "$arg" in
        --test) want_test=1 ;;
        --bench) want_test=1; want_bench=1 ;;
        *) echo "bootstrap: unknown option $arg (use --test or --bench)" >&2; exit 2 ;;
    esac
done
extras="${CITYNEURON_EXTRAS:-dev}"
venv="${CITYNEURON_VENV:-.venv}"
# Mosquitto before 2.0.12 does not restore the $share subscriptions of persistent sessions after a
# restart (its ChangeLog, 2.0.12), so readings it acknowledges meanwhile are lost.
min_mosquitto="2.0.12"

sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
apt_updated=0
apt_install() {
    if [ "$apt_updated" -eq 0 ]; then
        $sudo apt-get update -qq
        apt_updated=1
    fi
    echo "bootstrap: installing $*"
    $sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

. /etc/os-release
codename="${VERSION_CODENAME:-}"

have() { command -v "$1" >/dev/null 2>&1; }

mosquitto_bin() {
    if have mosquitto; then command -v mosquitto; elif [ -x /usr/sbin/mosquitto ]; then echo /usr/sbin/mosquitto; fi
}
mosquitto_version() {
    local bin
    bin=$(mosquitto_bin)
    [ -n "$bin" ] || return 0
    "$bin" -h 2>&1 | sed -n 's/^mosquitto version \([0-9.]*\).*/\1/p' | head -n 1 || true
}
version_ok() { [ "$(printf '%s\n%s\n' "$min_mosquitto" "$1" | sort -V | head -n 1)" = "$min_mosquitto" ]; }

# Debian 12's own Mosquitto is 2.0.11: take it from bookworm-backports, from the mirror this
# machine already uses for Debian (so a local mirror keeps working).
enable_backports() {
    local list=/etc/apt/sources.list.d/cityneuron-backports.list
    [ -f "$list" ] && return 0
    local mirror
    mirror=$(grep -rhoE 'https?://[^ ]+' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null |
        grep -E '/debian/?$' | head -n 1 || true)
    if [ -z "$mirror" ]; then
        echo "bootstrap: no Debian mirror found in /etc/apt/sources.list*: add bookworm-backports yourself" >&2
        exit 1
    fi
    echo "bootstrap: enabling bookworm-backports ($mirror) for Mosquitto >= $min_mosquitto"
    echo "deb ${mirror%/} bookworm-backports main" | $sudo tee "$list" >/dev/null
    apt_updated=0
}

# --- Python ------------------------------------------------------------------------------------
pkgs=()
if ! have python3; then
    pkgs+=(python3 python3-venv)
elif ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
    pkgs+=(python3-venv)
fi
# --- PostgreSQL (server, and pg_partman for time partitions without TimescaleDB) ---------------
if ! compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
    pkgs+=(postgresql)
fi
# --- programs the README and scripts call ------------------------------------------------------
have curl || pkgs+=(curl)
have ps || pkgs+=(procps)
if [ "$want_test" -eq 1 ]; then
    have chromium || pkgs+=(chromium)
    have chromedriver || pkgs+=(chromium-driver)
    have openssl || pkgs+=(openssl)
    # Chromium draws Chinese labels only with a CJK font.
    [ -d /usr/share/fonts/opentype/noto ] || compgen -G "/usr/share/fonts/*/*/*CJK*" >/dev/null || pkgs+=(fonts-noto-cjk)
fi
if [ "$want_bench" -eq 1 ]; then
    have wrk || pkgs+=(wrk)
fi
[ ${#pkgs[@]} -eq 0 ] || apt_install "${pkgs[@]}"

# pg_partman for the installed server: postgresql-15-partman on Debian 12, postgresql-16-partman on Ubuntu 24.04.
pg_major=$(ls /usr/lib/postgresql | sort -n | tail -n 1)
if [ ! -f "/usr/share/postgresql/$pg_major/extension/pg_partman.control" ]; then
    apt_install "postgresql-$pg_major-partman"
fi

# --- Mosquitto >= 2.0.12 -----------------------------------------------------------------------
current=$(mosquitto_version)
if [ -z "$current" ] || ! version_ok "$current" || ! have mosquitto_sub; then
    if [ "${ID:-}" = debian ] && [ "$codename" = bookworm ]; then
        enable_backports
        apt_updated=0
        apt_install -t bookworm-backports mosquitto mosquitto-clients
    else
        apt_install mosquitto mosquitto-clients
    fi
    current=$(mosquitto_version)
    if [ -z "$current" ] || ! version_ok "$current"; then
        echo "bootstrap: Mosquitto ${current:-(none)} is older than $min_mosquitto, which loses acknowledged readings" \
            "on a broker restart; install $min_mosquitto or newer (Debian 12: bookworm-backports)" >&2
        exit 1
    fi
fi

# The Debian packages start their own services: CityNeuron never uses them (it runs its own
# servers on its own ports), so stop them rather than leave them holding 1883 and 5432.
if have systemctl && [ -d /run/systemd/system ]; then
    $sudo systemctl disable --now mosquitto postgresql >/dev/null 2>&1 || true
elif have service; then
    $sudo service mosquitto stop >/dev/null 2>&1 || true
    $sudo service postgresql stop >/dev/null 2>&1 || true
fi

if ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "bootstrap: CityNeuron needs Python >= 3.11 (found $(python3 --version)); Debian 12 and Ubuntu 24.04 ship it as python3" >&2
    exit 1
fi
if [ ! -x "$venv/bin/python" ]; then
    echo "bootstrap: creating virtualenv $venv"
    python3 -m venv "$venv"
fi
# Reinstall only when pyproject.toml changed since the last install.
stamp="$venv/.cityneuron-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "bootstrap: installing cityneuron[$extras] into $venv"
    "$venv/bin/python" -m pip install -q --upgrade pip
    "$venv/bin/python" -m pip install -q -e ".[$extras]"
    touch "$stamp"
fi
