"""Credentials and TLS for every paho client the project creates (ingest, simulator, API, load)."""

from __future__ import annotations

import ssl

import paho.mqtt.client as mqtt

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
