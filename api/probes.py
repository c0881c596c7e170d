"""Health probes: an MQTT CONNECT/CONNACK round trip and a fresh database connection."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import ssl
import struct
from typing import Any

import psycopg

from api.models import BrokerHealth, DatabaseHealth
from cityneuron.mqttclient import tls_context
from cityneuron.settings import DatabaseSettings, MqttSettings

# MQTT 3.1.1 (OASIS 2014) section 3.2.2.3: CONNACK return codes.
_CONNACK_CODES = {
    1: "unacceptable protocol version",
    2: "client identifier rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorised",
}


def _utf8(text: str) -> bytes:
    # MQTT 3.1.1 section 1.5.3: UTF-8 string with a two-byte length prefix.
    data = text.encode()
    return struct.pack("!H", len(data)) + data


def _remaining_length(length: int) -> bytes:
    # MQTT 3.1.1 section 2.2.3: variable length encoding, 7 bits per byte.
    out = bytearray()
    while True:
        byte, length = length % 128, length // 128
        out.append(byte | 0x80 if length else byte)
        if not length:
            return bytes(out)


def connect_packet(client_id: str, username: str | None, password: str | None, keepalive_s: int) -> bytes:
    """An MQTT 3.1.1 CONNECT with a clean session (section 3.1), so the probe leaves no session."""
    flags = 0x02
    payload = _utf8(client_id)
    if username is not None:
        flags |= 0x80
        payload += _utf8(username)
        if password is not None:
            flags |= 0x40
            payload += _utf8(password)
    variable = _utf8("MQTT") + bytes([4, flags]) + struct.pack("!H", keepalive_s)
    body = variable + payload
    return bytes([0x10]) + _remaining_length(len(body)) + body


async def _mqtt_handshake(mqtt: MqttSettings) -> str | None:
    context = tls_context(mqtt)
    reader, writer = await asyncio.open_connection(mqtt.host, mqtt.port, ssl=context)
    try:
        # Section 3.1.3.1: servers must accept ids of 1-23 characters; this one has 22.
        client_id = f"cn-health-{secrets.token_hex(6)}"
        writer.write(connect_packet(client_id, mqtt.username, mqtt.password, keepalive_s=10))
        await writer.drain()
        connack = await reader.readexactly(4)
        if connack[0] != 0x20 or connack[1] != 0x02:
            return f"unexpected reply to CONNECT: {connack.hex()}"
        if connack[3] != 0:
            return f"broker refused the connection: {_CONNACK_CODES.get(connack[3], f'code {connack[3]}')}"
        writer.write(b"\xe0\x00")  # DISCONNECT, so the broker logs a clean goodbye
        await writer.drain()
        return None
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def probe_broker(mqtt: MqttSettings, timeout_s: float) -> BrokerHealth:
    """Whether the broker accepts an MQTT connection within ``timeout_s``."""
    try:
        detail = await asyncio.wait_for(_mqtt_handshake(mqtt), timeout_s)
    except TimeoutError:
        detail = f"no CONNACK within {timeout_s:g} s"
    except asyncio.IncompleteReadError:
        detail = "broker closed the connection before CONNACK"
    except ssl.SSLError as exc:
        detail = f"TLS handshake failed: {exc}"
    except OSError as exc:
        detail = f"cannot connect: {exc.strerror or exc}"
    return BrokerHealth(reachable=detail is None, host=mqtt.host, port=mqtt.port, detail=detail)


async def _database_facts(db: DatabaseSettings, min_devices: int) -> dict[str, Any]:
    connect_timeout = max(1, round(db.connect_timeout_s))
    async with await psycopg.AsyncConnection.connect(
        db.url, autocommit=True, connect_timeout=connect_timeout
    ) as conn:
        cur = await conn.execute(
            "SELECT current_setting('server_version'),"
            " (SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'),"
            " to_regclass('schema_version') IS NOT NULL,"
            " to_regclass('device_state_counts') IS NOT NULL"
        )
        row = await cur.fetchone()
        assert row is not None
        facts: dict[str, Any] = {
            "postgresql": row[0],
            "timescaledb": row[1],
            "schema_version": None,
            "devices": None,
        }
        if row[2]:
            cur = await conn.execute("SELECT max(version) FROM schema_version")
            version = await cur.fetchone()
            facts["schema_version"] = version[0] if version else None
            # From the counts the triggers keep (cityneuron.device_counts): a count(*) of a
            # registry of millions takes seconds, and `up` polls this while the registry loads.
            # Before schema version 3 there is no such table: counted up to the threshold only.
            if row[3]:
                cur = await conn.execute("SELECT coalesce(sum(n), 0) FROM device_state_counts")
            else:
                cur = await conn.execute(
                    "SELECT count(*) FROM (SELECT 1 FROM devices LIMIT %s) AS d", (max(1, min_devices),)
                )
            counted = await cur.fetchone()
            facts["devices"] = int(counted[0]) if counted else 0
        return facts


async def probe_database(db: DatabaseSettings, timeout_s: float, min_devices: int = 1) -> DatabaseHealth:
    """Versions from a fresh connection (not the pool: the probe reports the real reason), and
    the registered devices (from device_state_counts, else counted up to ``min_devices``)."""
    try:
        facts = await asyncio.wait_for(_database_facts(db, min_devices), timeout_s)
    except TimeoutError:
        return _unreachable(f"no answer within {timeout_s:g} s")
    except psycopg.Error as exc:
        lines = str(exc).strip().splitlines()
        return _unreachable(lines[0][:300] if lines else type(exc).__name__)
    detail = (
        None if facts["schema_version"] is not None else "schema not initialised: run `cityneuron db init`"
    )
    return DatabaseHealth(
        reachable=True,
        detail=detail,
        postgresql=facts["postgresql"],
        timescaledb=facts["timescaledb"],
        timescaledb_present=facts["timescaledb"] is not None,
        schema_version=facts["schema_version"],
        devices=facts["devices"],
    )


def _unreachable(detail: str) -> DatabaseHealth:
    return DatabaseHealth(
        reachable=False,
        detail=detail,
        postgresql=None,
        timescaledb=None,
        timescaledb_present=None,
        schema_version=None,
        devices=None,
    )
