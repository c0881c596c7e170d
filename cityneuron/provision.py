"""Broker provisioning: per-device passwords, service users and the ACL Mosquitto enforces.

Every device has its own MQTT identity: username = device id, password derived from one device
key (cityneuron.credentials), so the simulator can play any device without a password list.
The broker holds only hashes, in Mosquitto's own password-file format, and an ACL in which a
device may publish only on its own topics. See docs/security.md.
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from cityneuron.catalog import DISTRICT_BY_SLUG
from cityneuron.contract import ALERTS_TOPIC_ROOT, TOPIC_ROOT, is_device_id
from cityneuron.credentials import new_device_key, read_device_key
from cityneuron.errors import ConfigError
from cityneuron.passwd import (  # noqa: F401  (re-exported: the password file's format lives there)
    HASH_ITERATIONS,
    add_to_password_file,
    check_mosquitto_hash,
    checked_ids,
    mosquitto_hash,
    write_password_file,
)

log = logging.getLogger("cityneuron.provision")

# Service users are named outside the device id alphabet ([a-z0-9-], contract.DEVICE_ID_PATTERN):
# the device patterns (%u) apply to every user, so a service user named like a device could
# publish that device's readings.
INGEST_USER = "svc.ingest"
API_USER = "svc.api"
DASHBOARD_USER = "svc.dashboard"
HEALTH_USER = "svc.health"
SERVICE_USERS = (INGEST_USER, API_USER, DASHBOARD_USER, HEALTH_USER)
GATEWAY_PREFIX = "gw."
CITY_GATEWAY = "gw.city"

PASSWORD_FILE = "passwd"
ACL_FILE = "acl"
DEVICE_KEY_FILE = "device.key"
_SECRET_SUFFIX = ".password"
# Devices added by the user (add-device, provision --devices-file), kept when the city changes.
ADDED_DEVICES_FILE = "devices.added"

_DEVICE_WRITE_CHANNELS = ("telemetry", "status", "event", "cmd/ack")


@dataclass(frozen=True)
class GatewayScope:
    """A gateway account: publishes for the devices of ``districts`` (empty: the whole city)."""

    name: str
    districts: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.name.startswith(GATEWAY_PREFIX) or not is_device_id(self.name[len(GATEWAY_PREFIX) :]):
            raise ConfigError(f"gateway name {self.name!r} must be '{GATEWAY_PREFIX}<a-z0-9->'")
        unknown = [d for d in self.districts if d not in DISTRICT_BY_SLUG]
        if unknown:
            raise ConfigError(f"gateway {self.name}: unknown district(s) {', '.join(unknown)}")

    @classmethod
    def parse(cls, spec: str) -> GatewayScope:
        """``name`` or ``name:district,district`` (the ``gw.`` prefix is added when missing)."""
        name, _, districts = spec.partition(":")
        if not name.startswith(GATEWAY_PREFIX):
            name = GATEWAY_PREFIX + name
        return cls(name, tuple(d for d in districts.split(",") if d))


@dataclass(frozen=True)
class Provisioned:
    """Where provisioning put the broker's files and the clients' secrets."""

    broker_dir: Path
    secrets_dir: Path
    devices: int
    users: tuple[str, ...] = field(default=())

    @property
    def password_file(self) -> Path:
        return self.broker_dir / PASSWORD_FILE

    @property
    def acl_file(self) -> Path:
        return self.broker_dir / ACL_FILE

    @property
    def device_key_file(self) -> Path:
        return self.secrets_dir / DEVICE_KEY_FILE

    def secret_file(self, user: str) -> Path:
        return secret_file(self.secrets_dir, user)

    def password(self, user: str) -> str:
        """The plain password of a service or gateway user."""
        return self.secret_file(user).read_text().strip()


@dataclass(frozen=True)
class Layout:
    """Where a local stack (``cityneuron up``) keeps the broker's and the clients' files."""

    home: Path

    @property
    def broker_data_dir(self) -> Path:
        return self.home / "mosquitto"

    @property
    def broker_dir(self) -> Path:
        """Password file, ACL and the broker's TLS files (owned by the broker's user)."""
        return self.home / "mosquitto" / "auth"

    @property
    def secrets_dir(self) -> Path:
        """The clients' passwords, the device key and the CA certificate."""
        return self.home / "secrets"

    @property
    def pki_dir(self) -> Path:
        """The development CA (with its key) and device certificates."""
        return self.home / "pki"


def secret_file(secrets_dir: Path, user: str) -> Path:
    return secrets_dir / f"{user}{_SECRET_SUFFIX}"


# --- ACL ---------------------------------------------------------------------------------------


def _device_topics(district: str = "+", kind: str = "+", device: str = "+") -> dict[str, str]:
    base = f"{TOPIC_ROOT}/{district}/{kind}/{device}"
    return {channel: f"{base}/{channel}" for channel in (*_DEVICE_WRITE_CHANNELS, "cmd")}


def acl_text(gateways: Sequence[GatewayScope]) -> str:
    """The Mosquitto ACL: devices by pattern, then one block per service and gateway user."""
    own = _device_topics(device="%u")
    every = _device_topics()
    lines = [
        "# Generated by `cityneuron broker provision` (docs/security.md). Do not edit: re-run it.",
        "# Mosquitto 2.0 checks reads when a message is delivered, not at SUBSCRIBE, so every rule",
        "# names message topics; shared subscriptions ($share/<group>/<filter>) are checked the same way.",
        "",
        "# Devices: username = device id. A device publishes only on its own topics and receives",
        "# only its own commands. Patterns apply to every authenticated user.",
        *(f"pattern write {own[c]}" for c in _DEVICE_WRITE_CHANNELS),
        f"pattern read {own['cmd']}",
        "",
        "# Ingest: telemetry, status and events of every device (shared subscription); publishes alerts.",
        f"user {INGEST_USER}",
        f"topic read {every['telemetry']}",
        f"topic read {every['status']}",
        f"topic read {every['event']}",
        f"topic write {ALERTS_TOPIC_ROOT}/#",
        "",
        "# API: live readings, alerts and command acks; publishes commands.",
        f"user {API_USER}",
        f"topic read {every['telemetry']}",
        f"topic read {ALERTS_TOPIC_ROOT}/#",
        f"topic read {every['cmd/ack']}",
        f"topic write {every['cmd']}",
        "",
        "# Browser dashboards over WebSockets: read-only, no commands.",
        f"user {DASHBOARD_USER}",
        f"topic read {every['telemetry']}",
        f"topic read {every['status']}",
        f"topic read {every['event']}",
        f"topic read {ALERTS_TOPIC_ROOT}/#",
        f"topic read {TOPIC_ROOT}/gateways/+/status",
        "",
        "# Health checks (compose): the broker's uptime only.",
        f"user {HEALTH_USER}",
        "topic read $SYS/broker/uptime",
    ]
    for gateway in gateways:
        where = ", ".join(gateway.districts) or "the whole city"
        lines += ["", f"# Gateway for {where}: publishes for its devices and relays their commands."]
        lines.append(f"user {gateway.name}")
        for district in gateway.districts or ("+",):
            topics = _device_topics(district=district)
            lines += [f"topic write {topics[c]}" for c in _DEVICE_WRITE_CHANNELS]
            lines.append(f"topic read {topics['cmd']}")
        # Its own liveness (simulator/publisher.py gateway_topic, also its last will).
        lines.append(f"topic write {TOPIC_ROOT}/gateways/+/status")
    return "\n".join(lines) + "\n"


# --- files -------------------------------------------------------------------------------------


def _write_private(path: Path, text: str, owner: tuple[int, int] | None) -> None:
    """Write ``text`` to ``path`` readable only by its owner (0600), replacing it atomically."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    if owner is not None:
        os.chown(tmp, *owner)
    os.replace(tmp, path)


def _private_dir(path: Path, owner: tuple[int, int] | None) -> None:
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)
    if owner is not None:
        os.chown(path, *owner)


def _service_secret(secrets_dir: Path, user: str, owner: tuple[int, int] | None) -> str:
    """The user's password, created on first provisioning and kept afterwards."""
    path = secret_file(secrets_dir, user)
    if path.exists():
        return path.read_text().strip()
    password = secrets.token_urlsafe(32)
    _write_private(path, password + "\n", owner)
    return password


def _device_key(secrets_dir: Path, owner: tuple[int, int] | None) -> tuple[bytes, bool]:
    """The device key, and whether it was made just now."""
    path = secrets_dir / DEVICE_KEY_FILE
    if path.exists():
        return read_device_key(path), False
    key = new_device_key()
    _write_private(path, key.hex() + "\n", owner)
    return key, True


def added_devices(broker_dir: Path) -> list[str]:
    """The devices the user added next to the city (``cityneuron broker add-device``)."""
    path = broker_dir / ADDED_DEVICES_FILE
    return path.read_text().split() if path.exists() else []


def record_added_devices(broker_dir: Path, device_ids: Iterable[str], owner: tuple[int, int] | None) -> None:
    known = added_devices(broker_dir)
    new = [d for d in dict.fromkeys(checked_ids(device_ids)) if d not in set(known)]
    if new:
        _write_private(broker_dir / ADDED_DEVICES_FILE, "".join(f"{d}\n" for d in (*known, *new)), owner)


def add_devices(
    broker_dir: Path, secrets_dir: Path, device_ids: Sequence[str], *, broker_owner: tuple[int, int] | None
) -> int:
    """Add devices of the user's own to an existing password file, touching nothing else (users,
    gateways, ACL). The ACL needs no change: device rules are ``%u`` patterns. Returns how many
    were not in the file yet."""
    passwd = broker_dir / PASSWORD_FILE
    key_file = secrets_dir / DEVICE_KEY_FILE
    if not passwd.exists() or not key_file.exists():
        raise ConfigError(
            f"no provisioned broker in {broker_dir} (password file and {key_file}):"
            " run `cityneuron up` (or `cityneuron broker provision`) once first"
        )
    _, added = add_to_password_file(passwd, read_device_key(key_file), device_ids, owner=broker_owner)
    record_added_devices(broker_dir, device_ids, broker_owner)
    log.info("added %d of %d devices to %s", added, len(device_ids), passwd)
    return added


# How provision() treats the devices already in the password file:
# replace  - the file gets ``device_ids`` plus the devices the user added (the city's own file);
# add      - ``device_ids`` are added to every device already there and recorded as the user's;
# complete - like add, not recorded (`cityneuron up` putting back city devices missing from it).
PasswordMode = Literal["replace", "add", "complete"]


def provision(
    broker_dir: Path,
    secrets_dir: Path,
    device_ids: Iterable[str],
    *,
    gateways: Sequence[GatewayScope] = (GatewayScope(CITY_GATEWAY),),
    broker_owner: tuple[int, int] | None = None,
    secrets_owner: tuple[int, int] | None = None,
    workers: int = 1,
    mode: PasswordMode = "replace",
) -> Provisioned:
    """Write the broker's password file and ACL, and the clients' secrets.

    ``broker_dir`` gets ``passwd``, ``acl`` and the health-check password, owned by
    ``broker_owner`` (the user Mosquitto runs as). ``secrets_dir`` gets the device key and one
    ``<user>.password`` per service and gateway user. Existing secrets are kept, so provisioning
    again does not change anyone's password. The ACL and the service and gateway lines are
    rewritten; ``mode`` says what happens to the devices already in the password file.
    """
    names = [g.name for g in gateways]
    if len(set(names)) != len(names):
        raise ConfigError(f"duplicate gateway names: {', '.join(names)}")
    _private_dir(broker_dir, broker_owner)
    _private_dir(secrets_dir, secrets_owner)
    users = (*SERVICE_USERS, *names)
    passwords = {user: _service_secret(secrets_dir, user, secrets_owner) for user in users}
    # The broker's own health check runs inside the broker's container: give it its secret there.
    _write_private(secret_file(broker_dir, HEALTH_USER), passwords[HEALTH_USER] + "\n", broker_owner)
    key, new_key = _device_key(secrets_dir, secrets_owner)
    passwd = broker_dir / PASSWORD_FILE
    if mode == "add":
        device_ids = list(device_ids)
        record_added_devices(broker_dir, device_ids, broker_owner)
    if mode == "replace" or new_key:
        # Lines hashed under another key are worthless: rebuild, with the user's own devices.
        devices = write_password_file(
            passwd, key, _with_added(device_ids, broker_dir), passwords, owner=broker_owner, workers=workers
        )
    else:
        devices, _ = add_to_password_file(
            passwd, key, device_ids, passwords, owner=broker_owner, workers=workers
        )
    _write_private(broker_dir / ACL_FILE, acl_text(gateways), broker_owner)
    log.info("provisioned %d devices and %d users into %s", devices, len(users), broker_dir)
    return Provisioned(broker_dir, secrets_dir, devices, users)


def _with_added(device_ids: Iterable[str], broker_dir: Path) -> Iterator[str]:
    """``device_ids`` (streamed: a city may have millions), then the user's devices not among them."""
    remaining = dict.fromkeys(added_devices(broker_dir))
    for device_id in device_ids:
        remaining.pop(device_id, None)
        yield device_id
    yield from list(remaining)
