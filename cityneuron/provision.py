"""Broker provisioning: per-device passwords, service users and the ACL Mosquitto enforces.

Every device has its own MQTT identity: username = device id, password derived from one device
key (cityneuron.credentials), so the simulator can play any device without a password list.
The broker holds only hashes, in Mosquitto's own password-file format, and an ACL in which a
device may publish only on its own topics. See docs/security.md.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import multiprocessing
import os
import secrets
import signal
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from itertools import islice
from pathlib import Path

from cityneuron.catalog import DISTRICT_BY_SLUG
from cityneuron.contract import ALERTS_TOPIC_ROOT, TOPIC_ROOT, is_device_id
from cityneuron.credentials import device_password, new_device_key, read_device_key
from cityneuron.errors import ConfigError

log = logging.getLogger("cityneuron.provision")

# Mosquitto 2.0 password hashes: "$7$<iterations>$<base64 salt>$<base64 PBKDF2-HMAC-SHA512>",
# with mosquitto_passwd's defaults (src/password_mosq.c: PW_DEFAULT_ITERATIONS 101, 12-byte salt).
HASH_ITERATIONS = 101
_SALT_BYTES = 12
_HASH_ID = "7"

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
_CHUNK_DEVICES = 2000

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


# --- Mosquitto password hashes ------------------------------------------------------------------


def mosquitto_hash(password: str, *, salt: bytes | None = None, iterations: int = HASH_ITERATIONS) -> str:
    """``password`` hashed as mosquitto_passwd does ($7$: PBKDF2-HMAC-SHA512)."""
    salt = salt if salt is not None else os.urandom(_SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    b64 = base64.b64encode
    return f"${_HASH_ID}${iterations}${b64(salt).decode()}${b64(digest).decode()}"


def check_mosquitto_hash(password: str, hashed: str) -> bool:
    """Whether ``password`` matches a $7$ hash from a Mosquitto password file."""
    try:
        _, hash_id, iterations, salt, digest = hashed.split("$")
        if hash_id != _HASH_ID:
            return False
        expected = base64.b64decode(digest)
        actual = hashlib.pbkdf2_hmac("sha512", password.encode(), base64.b64decode(salt), int(iterations))
    except ValueError:
        return False
    return hmac.compare_digest(expected, actual)


def _device_lines(device_key: bytes, device_ids: Sequence[str]) -> str:
    return "".join(f"{d}:{mosquitto_hash(device_password(device_key, d))}\n" for d in device_ids)


def _worker_signals() -> None:
    """Hashing workers ignore SIGINT (a terminal sends it to them too: the parent decides) and die
    on SIGTERM (the pool's terminate), whatever handlers they inherited from the parent."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _counted_lines(device_key: bytes, device_ids: Sequence[str]) -> tuple[int, str]:
    return len(device_ids), _device_lines(device_key, device_ids)


def _chunks(items: Iterable[str], size: int) -> Iterator[list[str]]:
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


def _checked_ids(device_ids: Iterable[str]) -> Iterator[str]:
    for device_id in device_ids:
        if not is_device_id(device_id):
            raise ConfigError(f"device id {device_id!r} does not match the contract's device id pattern")
        yield device_id


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


def _device_key(secrets_dir: Path, owner: tuple[int, int] | None) -> bytes:
    path = secrets_dir / DEVICE_KEY_FILE
    if path.exists():
        return read_device_key(path)
    key = new_device_key()
    _write_private(path, key.hex() + "\n", owner)
    return key


def write_password_file(
    path: Path,
    device_key: bytes,
    device_ids: Iterable[str],
    users: dict[str, str],
    *,
    owner: tuple[int, int] | None = None,
    workers: int = 1,
) -> int:
    """Write the Mosquitto password file: service/gateway ``users`` then every device.

    Hashing is the cost (one PBKDF2 per device); ``workers`` > 1 spreads it over processes.
    Returns the number of device lines.
    """
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    devices = 0
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        for user, password in users.items():
            handle.write(f"{user}:{mosquitto_hash(password)}\n")
        chunks = _chunks(_checked_ids(device_ids), _CHUNK_DEVICES)
        if workers > 1:
            # A multiprocessing pool, not concurrent.futures: leaving it on Ctrl-C (or any error)
            # terminates the workers at once, where an executor would first hash every queued chunk.
            with multiprocessing.Pool(workers, _worker_signals) as pool:
                for count, lines in pool.imap(partial(_counted_lines, device_key), chunks):
                    handle.write(lines)
                    devices += count
        else:
            for chunk in chunks:
                handle.write(_device_lines(device_key, chunk))
                devices += len(chunk)
    if owner is not None:
        os.chown(tmp, *owner)
    os.replace(tmp, path)
    return devices


def provision(
    broker_dir: Path,
    secrets_dir: Path,
    device_ids: Iterable[str],
    *,
    gateways: Sequence[GatewayScope] = (GatewayScope(CITY_GATEWAY),),
    broker_owner: tuple[int, int] | None = None,
    secrets_owner: tuple[int, int] | None = None,
    workers: int = 1,
) -> Provisioned:
    """Write the broker's password file and ACL, and the clients' secrets.

    ``broker_dir`` gets ``passwd``, ``acl`` and the health-check password, owned by
    ``broker_owner`` (the user Mosquitto runs as). ``secrets_dir`` gets the device key and one
    ``<user>.password`` per service and gateway user. Existing secrets are kept, so provisioning
    again (new devices) does not change anyone's password; the password file and ACL are rewritten.
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
    key = _device_key(secrets_dir, secrets_owner)
    devices = write_password_file(
        broker_dir / PASSWORD_FILE, key, device_ids, passwords, owner=broker_owner, workers=workers
    )
    _write_private(broker_dir / ACL_FILE, acl_text(gateways), broker_owner)
    log.info("provisioned %d devices and %d users into %s", devices, len(users), broker_dir)
    return Provisioned(broker_dir, secrets_dir, devices, users)
