"""How commands run next to a local stack find it: ``cityneuron up`` writes its connection facts
into its home folder, and ``cityneuron apikey``, ``cityneuron load`` (...) read them.

``<home>/stack.json`` names ports and where the secrets are, never a secret itself: the database
password stays in the PostgreSQL password file, the gateway's in its secrets file, so the file
can be read by anyone who may enter the home folder without handing out more than that.

A setting given on the command line or in the environment always wins; the stack's facts only
fill what was left unset (so ``--database-url`` still reaches any other database).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from cityneuron.provision import CITY_GATEWAY, Provisioned
from cityneuron.settings import Settings

log = logging.getLogger("cityneuron.localstack")

STACK_FILE = "stack.json"
_FORMAT_VERSION = 1


@dataclass(frozen=True)
class LocalStack:
    """The connection facts of one local stack (``cityneuron up --home HOME``)."""

    home: Path
    mqtt_host: str
    mqtt_port: int
    postgres_port: int
    database_role: str
    database_name: str
    database_password_file: Path
    api_url: str
    ingest_metrics_url: str
    # Gateway account the city's simulator publishes with, and the device key (None: anonymous broker).
    gateway_user: str | None = None
    gateway_password_file: Path | None = None
    device_key_file: Path | None = None

    @property
    def database_url(self) -> str:
        """The database URL with the password read from its file now (it never sits in stack.json)."""
        password = quote(self.database_password_file.read_text().strip(), safe="")
        return f"postgresql://{self.database_role}:{password}@127.0.0.1:{self.postgres_port}/{self.database_name}"

    def as_json(self) -> dict[str, Any]:
        return {
            "version": _FORMAT_VERSION,
            "pid": os.getpid(),
            "mqtt": {"host": self.mqtt_host, "port": self.mqtt_port},
            "database": {
                "url_without_password": f"postgresql://{self.database_role}@127.0.0.1:"
                f"{self.postgres_port}/{self.database_name}",
                "port": self.postgres_port,
                "role": self.database_role,
                "name": self.database_name,
                "password_file": self._relative(self.database_password_file),
            },
            "api": {"url": self.api_url},
            "ingest": {"metrics_url": self.ingest_metrics_url},
            "gateway": None
            if self.gateway_user is None
            else {"user": self.gateway_user, "password_file": self._relative(self.gateway_password_file)},
            "device_key_file": None if self.device_key_file is None else self._relative(self.device_key_file),
        }

    def _relative(self, path: Path | None) -> str:
        """A path inside the home relative to it, so the folder can move (with its checkout)."""
        assert path is not None
        try:
            return str(path.relative_to(self.home))
        except ValueError:
            return str(path)


def describe(settings: Settings, database_password_file: Path, provisioned: Provisioned | None) -> LocalStack:
    """The facts of the stack ``cityneuron up`` runs with ``settings`` (its database already up)."""
    from cityneuron.servers import PostgresServer

    return LocalStack(
        home=settings.stack.home.resolve(),
        mqtt_host="127.0.0.1",
        mqtt_port=settings.mqtt.port,
        postgres_port=settings.stack.postgres_port,
        database_role=PostgresServer.ROLE,
        database_name=PostgresServer.DATABASE,
        database_password_file=database_password_file.resolve(),
        api_url=f"http://{settings.api.host}:{settings.api.port}",
        ingest_metrics_url=f"http://{settings.ingest.http_host}:{settings.ingest.http_port}/metrics",
        gateway_user=None if provisioned is None else CITY_GATEWAY,
        gateway_password_file=None
        if provisioned is None
        else provisioned.secret_file(CITY_GATEWAY).resolve(),
        device_key_file=None if provisioned is None else provisioned.device_key_file.resolve(),
    )


def write(stack: LocalStack) -> Path:
    """Write ``<home>/stack.json`` (kept after the stack stops: it describes the stack, not whether
    it runs, so a command run while it is down says "unreachable" about the right ports)."""
    path = stack.home / STACK_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(stack.as_json(), indent=2) + "\n")
    tmp.chmod(0o644)
    tmp.replace(path)
    return path


def read(home: Path) -> LocalStack | None:
    """The stack whose home is ``home``, or None when no stack was ever started there."""
    path = home / STACK_FILE
    try:
        facts = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("ignoring %s: %s", path, exc)
        return None
    database, gateway, key = facts["database"], facts.get("gateway"), facts.get("device_key_file")
    return LocalStack(
        home=home,
        mqtt_host=facts["mqtt"]["host"],
        mqtt_port=int(facts["mqtt"]["port"]),
        postgres_port=int(database["port"]),
        database_role=database["role"],
        database_name=database["name"],
        database_password_file=home / database["password_file"],
        api_url=facts["api"]["url"],
        ingest_metrics_url=facts["ingest"]["metrics_url"],
        gateway_user=None if gateway is None else gateway["user"],
        gateway_password_file=None if gateway is None else home / gateway["password_file"],
        device_key_file=None if key is None else home / key,
    )


def _explicit(settings_from_env: Settings, cli_overrides: dict[str, Any]) -> set[str]:
    """``section.field`` names set on the command line or in the environment."""
    explicit = {f"{section}.{name}" for section, values in cli_overrides.items() for name in values}
    for section in ("mqtt", "database", "simulator"):
        model = getattr(settings_from_env, section)
        explicit |= {f"{section}.{name}" for name in model.model_fields_set}
    return explicit


def fill_from_stack(settings: Settings, cli_overrides: dict[str, Any]) -> Settings:
    """``settings`` with the unset connection settings taken from the local stack, if there is one.

    ``cli_overrides``: ``{section: {field: value}}`` given on the command line. The broker's
    host, port and credentials are taken together or not at all, so a broker given in the
    environment never receives the local gateway's password.
    """
    stack = read(settings.stack.home.resolve())
    if stack is None:
        return settings
    explicit = _explicit(Settings(), cli_overrides)
    update: dict[str, Any] = {}
    if "database.url" not in explicit:
        try:
            update["database"] = settings.database.model_copy(update={"url": stack.database_url})
        except OSError as exc:
            log.warning("local stack in %s: cannot read the database password: %s", stack.home, exc)
    # mqtt.url: a whole broker URL (``cityneuron load --mqtt-url``).
    mqtt_fields = {"mqtt.host", "mqtt.port", "mqtt.username", "mqtt.password", "mqtt.url"}
    if not explicit & mqtt_fields:
        mqtt: dict[str, Any] = {"host": stack.mqtt_host, "port": stack.mqtt_port}
        if stack.gateway_user is not None and stack.gateway_password_file is not None:
            try:
                password = stack.gateway_password_file.read_text().strip()
                mqtt |= {"username": stack.gateway_user, "password": password}
            except OSError as exc:
                log.warning("local stack in %s: cannot read the gateway password: %s", stack.home, exc)
        update["mqtt"] = settings.mqtt.model_copy(update=mqtt)
    if "simulator.device_key_file" not in explicit and stack.device_key_file is not None:
        update["simulator"] = settings.simulator.model_copy(update={"device_key_file": stack.device_key_file})
    log.debug("using the local stack in %s for %s", stack.home, ", ".join(sorted(update)) or "nothing")
    return settings.model_copy(update=update)
