"""Credentials and TLS for the project's MQTT clients: paho ones (simulator per-device mode, API,
load) and, through ``tls_context``, the project's own (simulator gateways, ingest)."""

from __future__ import annotations

import logging
import ssl

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from cityneuron.settings import MqttSettings


def tls_context(settings: MqttSettings) -> ssl.SSLContext | None:
    """A client TLS context verifying the broker against ``tls_ca_file`` (None: plain TCP)."""
    if settings.tls_ca_file is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(settings.tls_ca_file))
    if settings.tls_cert_file is not None:
        context.load_cert_chain(
            str(settings.tls_cert_file), str(settings.tls_key_file or settings.tls_cert_file)
        )
    return context


def configure_client(
    client: mqtt.Client, settings: MqttSettings, *, username: str | None = None, password: str | None = None
) -> None:
    """Apply the username/password (explicit ones win over the settings') and TLS to ``client``."""
    user = username if username is not None else settings.username
    if user:
        client.username_pw_set(user, password if username is not None else settings.password)
    context = tls_context(settings)
    if context is not None:
        client.tls_set_context(context)


_RECONNECT_MIN_DELAY_S = 1
_NOT_CONNECTED = "Client is not connected"


class _NotConnectedIsNoError(logging.Filter):
    """While the broker is unreachable paho's network loop runs once on the missing socket before
    every reconnect attempt and logs that as an ERROR, every few seconds for the whole outage (and
    at shutdown when the broker goes first). The client's owner reports the outage itself (its
    ``on_disconnect``), so the line is demoted to DEBUG."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR and str(record.msg).startswith(_NOT_CONNECTED):
            record.levelno, record.levelname = logging.DEBUG, logging.getLevelName(logging.DEBUG)
        return True


def mqtt5_client(client_id: str, settings: MqttSettings, logger_name: str) -> mqtt.Client:
    """A paho MQTT 5 service client (the API) with credentials, TLS, logging and reconnect back-off
    from 1 s up to ``settings.reconnect_max_delay_s``; callbacks are the caller's."""
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=MQTTProtocolVersion.MQTTv5,
    )
    logger = logging.getLogger(logger_name)
    if not any(isinstance(f, _NotConnectedIsNoError) for f in logger.filters):
        logger.addFilter(_NotConnectedIsNoError())
    client.enable_logger(logger)
    client.reconnect_delay_set(
        min_delay=_RECONNECT_MIN_DELAY_S,
        max_delay=max(_RECONNECT_MIN_DELAY_S, round(settings.reconnect_max_delay_s)),
    )
    configure_client(client, settings)
    return client
