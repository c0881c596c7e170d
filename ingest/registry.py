"""The device registry as ingest sees it: which devices exist, of which kind, and their status.

A cache of known devices saves a query per message; it only ever learns facts read from (or
committed to) the database, so a rolled-back batch cannot leave a wrong entry behind.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import psycopg
from psycopg.types.json import Jsonb

from cityneuron.contract import ms_to_datetime
from cityneuron.decode import DISTRICT_MISMATCH, Decoded
from cityneuron.errors import Reason

# About 100 bytes an entry: a million devices is ~100 MB. Beyond it the cache starts over and
# refills from the database, one query per batch for the devices it sees.
_CACHE_MAX_DEVICES = 1_000_000


class DeviceCache:
    """device_id -> registered (kind, district), for devices known to be in the registry."""

    def __init__(self, max_devices: int = _CACHE_MAX_DEVICES) -> None:
        self._kinds: dict[str, tuple[str, str]] = {}
        self._max_devices = max_devices

    def __len__(self) -> int:
        return len(self._kinds)

    def get(self, device_id: str) -> tuple[str, str] | None:
        return self._kinds.get(device_id)

    def learn(self, kinds: dict[str, tuple[str, str]]) -> None:
        if len(self._kinds) + len(kinds) > self._max_devices:
            self._kinds.clear()
        self._kinds.update(kinds)


@dataclass(slots=True)
class Resolution:
    """Registry facts learned inside the current transaction (to cache once it commits)."""

    learned: dict[str, tuple[str, str]]
    registered: int


def resolve_devices(
    conn: psycopg.Connection, batch: Iterable[Decoded], cache: DeviceCache, *, auto_register: bool
) -> Resolution:
    """Look up (and, when allowed, register) the devices of a batch, then dead-letter the messages
    of unknown devices and of devices whose registered kind or district differs from the topic's
    (a district-scoped gateway may only speak for the devices of its districts)."""
    batch = list(batch)
    missing: dict[str, tuple[str, str]] = {}
    for decoded in batch:
        topic = decoded.topic
        if topic is None or not (decoded.has_readings or decoded.status):
            continue
        if cache.get(topic.device_id) is None and topic.device_id not in missing:
            missing[topic.device_id] = (topic.kind, topic.district)
    learned: dict[str, tuple[str, str]] = {}
    registered = 0
    if missing:
        ids = list(missing)
        with conn.cursor() as cur:
            if auto_register:
                cur.execute(
                    "INSERT INTO devices (device_id, kind, district, auto_registered)"
                    " SELECT id, kind, district, true FROM unnest(%s::text[], %s::text[], %s::text[])"
                    " AS t(id, kind, district) ON CONFLICT (device_id) DO NOTHING",
                    (ids, [missing[i][0] for i in ids], [missing[i][1] for i in ids]),
                )
                registered = max(cur.rowcount, 0)
            cur.execute("SELECT device_id, kind, district FROM devices WHERE device_id = ANY(%s)", (ids,))
            learned = {device_id: (kind, district) for device_id, kind, district in cur.fetchall()}
    for decoded in batch:
        topic = decoded.topic
        if topic is None or not (decoded.has_readings or decoded.status):
            continue
        known = cache.get(topic.device_id) or learned.get(topic.device_id)
        if known is None:
            decoded.reject(Reason.UNKNOWN_DEVICE, f"device {topic.device_id!r} is not registered")
        elif known[0] != topic.kind:
            decoded.reject(
                Reason.KIND_MISMATCH,
                f"device {topic.device_id!r} is registered as {known[0]!r}, topic says {topic.kind!r}",
            )
        elif known[1] != topic.district:
            decoded.reject(
                DISTRICT_MISMATCH,
                f"device {topic.device_id!r} is registered in {known[1]!r}, topic says {topic.district!r}",
            )
    return Resolution(learned, registered)


def apply_statuses(conn: psycopg.Connection, batch: Iterable[Decoded]) -> tuple[int, int]:
    """Upsert the status updates of a batch in received order; return (applied, stale).

    An update older than the stored status is stale and changes nothing, so the retained status
    every ingest process receives (status is not a shared subscription) can be applied by all.
    """
    applied = stale = 0
    with conn.cursor() as cur:
        for decoded in batch:
            status = decoded.status
            if status is None or decoded.topic is None:
                continue
            changed_at = ms_to_datetime(status.ts_ms)
            cur.execute(
                "UPDATE devices SET online = %(online)s, status_changed_at = %(ts)s,"
                " lat = coalesce(%(lat)s, lat), lon = coalesce(%(lon)s, lon),"
                " installed = coalesce(%(installed)s, installed),"
                " meta = meta || coalesce(%(meta)s::jsonb, '{}'::jsonb)"
                " WHERE device_id = %(device_id)s"
                " AND (status_changed_at IS NULL OR status_changed_at <= %(ts)s)",
                {
                    "online": status.online,
                    "ts": changed_at,
                    "lat": status.lat,
                    "lon": status.lon,
                    "installed": status.installed,
                    "meta": Jsonb(status.meta) if status.meta is not None else None,
                    "device_id": decoded.topic.device_id,
                },
            )
            if cur.rowcount > 0:
                applied += 1
            else:
                stale += 1
    return applied, stale
