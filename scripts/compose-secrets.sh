#!/usr/bin/env bash
# Create the secrets docker compose reads (once; never committed: secrets/ is git-ignored).
# Broker credentials (device key, service passwords, CA) are not made here: the compose
# `provision` service writes them into volumes on first start (docs/security.md).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p secrets
if [ ! -s secrets/postgres_password.txt ]; then
    umask 077
    python3 -c 'import secrets; print(secrets.token_urlsafe(24))' > secrets/postgres_password.txt
    echo "wrote secrets/postgres_password.txt"
else
    echo "secrets/postgres_password.txt exists: kept"
fi
