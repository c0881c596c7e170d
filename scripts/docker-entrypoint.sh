#!/bin/sh
# Container entrypoint: read the database password from a Docker secret file (never from the
# compose file) and hand it to libpq, then run the cityneuron command.
set -eu
if [ -n "${CITYNEURON_DATABASE_PASSWORD_FILE:-}" ] && [ -r "$CITYNEURON_DATABASE_PASSWORD_FILE" ]; then
    PGPASSWORD="$(cat "$CITYNEURON_DATABASE_PASSWORD_FILE")"
    export PGPASSWORD
fi
exec cityneuron "$@"
