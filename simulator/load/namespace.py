"""The load test's own devices: the city's devices under another name (``load-pole-futian-00001``).

A load run against the live testbed must not write into the simulated city's devices: their
``seq`` counters, latest values, AQI and water-quality views would be computed from load values.
So the load publishes for devices of its own, named ``<prefix><city id>``: the contract's id
pattern accepts them, the city gateway's ACL lets it publish for any device of its districts,
and the ingest registers them like any new device. Their values are the simulator's values of
the device they shadow, so the payloads are as realistic as the city's.

With a database to reconcile against, the load registers its devices itself before it starts
(``meta.load_test``; the ingest's own registration would do, but after a clean-up a
long-running ingest still believes them registered and would skip their quality counters), and
removes them with every row they left (readings, latest, alerts, dead letters) once the report
is made, so the city's views are as before (``--keep-devices`` keeps them for a look).
"""

from __future__ import annotations

import dataclasses
import logging
import re
from types import MappingProxyType

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from cityneuron.catalog import KIND_BY_NAME
from cityneuron.errors import ConfigError
from simulator.city import City, build_city
from simulator.errors import SimulatorError
from simulator.load.payloads import LoadDevices

log = logging.getLogger("cityneuron.load")

LOAD_ID_PREFIX = "load-"
# A prefix keeps every id within the contract's pattern ([a-z0-9][a-z0-9-]{0,63}).
_PREFIX = re.compile(r"^([a-z0-9][a-z0-9-]{0,15})?$")


class NamespaceError(SimulatorError):
    """The load's own devices could not be registered or removed."""


def load_city(preset: str, scale: float, seed: int, id_prefix: str) -> City:
    """The city's devices, each id preceded by ``id_prefix`` ("" keeps the city's own ids)."""
    if not _PREFIX.match(id_prefix):
        raise ConfigError(f"--id-prefix {id_prefix!r}: up to 16 of a-z, 0-9 and '-', not starting with '-'")
    city = build_city(preset, scale, seed)
    if not id_prefix:
        return city
    tables = {name: dataclasses.replace(t, id_namespace=id_prefix) for name, t in city.tables.items()}
    return dataclasses.replace(city, tables=MappingProxyType(tables))


def register(url: str, devices: LoadDevices) -> int:
    """Register the load's devices (idempotent); returns how many were new."""
    districts = [devices.district_of(d) for d in range(len(devices))]
    try:
        with psycopg.connect(url) as conn:
            cur = conn.execute(
                "INSERT INTO devices (device_id, kind, district, meta)"
                " SELECT id, kind, district, %s FROM unnest(%s::text[], %s::text[], %s::text[])"
                " AS t(id, kind, district) ON CONFLICT (device_id) DO NOTHING",
                (Jsonb({"load_test": True}), devices.ids, devices.kind, districts),
            )
            return max(cur.rowcount, 0)
    except psycopg.Error as exc:
        raise NamespaceError(f"cannot register the load's devices: {exc}") from exc


def remove(url: str, devices: LoadDevices) -> dict[str, int]:
    """Delete the load's devices and every row they left, in one transaction; rows per table."""
    ids = devices.ids
    tables = [KIND_BY_NAME[k].table for k in sorted(set(devices.kind))]
    tables += ["latest_reading", "alerts", "dead_letter", "devices"]
    removed: dict[str, int] = {}
    try:
        with psycopg.connect(url) as conn:
            for table in tables:
                cur = conn.execute(
                    sql.SQL("DELETE FROM {} WHERE device_id = ANY(%s)").format(sql.Identifier(table)), (ids,)
                )
                removed[table] = max(cur.rowcount, 0)
    except psycopg.Error as exc:
        raise NamespaceError(f"cannot remove the load's devices: {exc}") from exc
    log.info("removed the load's %d devices: %s", len(ids), removed)
    return removed
