#!/bin/sh
# Container entrypoint: read secrets from files (Docker secrets and the volume the `provision`
# service writes), never from the compose file, then run the cityneuron command.
#   CITYNEURON_DATABASE_PASSWORD_FILE -> PGPASSWORD (libpq)
#   CITYNEURON_MQTT_PASSWORD_FILE     -> CITYNEURON_MQTT__PASSWORD (this service's broker user)
set -eu
if [ -n "${CITYNEURON_DATABASE_PASSWORD_FILE:-}" ] && [ -r "$CITYNEURON_DATABASE_PASSWORD_FILE" ]; then
    PGPASSWORD="$(cat "$CITYNEURON_DATABASE_PASSWORD_FILE")"
    export PGPASSWORD
fi
if [ -n "${CITYNEURON_MQTT_PASSWORD_FILE:-}" ]; then
    if [ ! -r "$CITYNEURON_MQTT_PASSWORD_FILE" ]; then
        echo "docker-entrypoint: cannot read $CITYNEURON_MQTT_PASSWORD_FILE (did the provision service run?)" >&2
        exit 1
    fi
    CITYNEURON_MQTT__PASSWORD="$(cat "$CITYNEURON_MQTT_PASSWORD_FILE")"
    export CITYNEURON_MQTT__PASSWORD
fi
exec cityneuron "$@"
