"""The device registry as ingest sees it: which devices exist, of which kind, and their status.

Each batch reads its devices' registry rows in the statement that locks them for the quality
counters (:func:`ingest.quality.lock_devices`), so a known device costs no query of its own. A
cache of known devices did that before; at 17 M devices it could not hold the city and every
batch queried (and tried to register) its devices again.
"""

from __future__ import annotations

from collections.abc import Iterable

import psycopg
from psycopg.types.json import Jsonb

from cityneuron.contract import ms_to_datetime
from cityneuron.decode import DISTRICT_MISMATCH, Decoded
from cityneuron.errors import Reason
from ingest.quality import Device, lock_devices


class Unregistered(Exception):
    """The batch names devices that are not registered (device id -> kind, district from its
    topic): register them (:func:`register_devices`), then write the batch again."""

    def __init__(self, devices: dict[str, tuple[str, str]]) -> None:
        super().__init__(f"{len(devices)} devices are not registered")
        self.devices = devices


def resolve_devices(
    conn: psycopg.Connection, batch: list[Decoded], *, register_first: bool
) -> dict[str, Device]:
    """Lock and read the devices of a batch, then dead-letter the messages of unknown devices and
    of devices whose registered kind or district differs from the topic's (a district-scoped
    gateway may only speak for the devices of its districts).

    Every device the batch names is locked (its message counter moves even when its readings were
    all refused). ``register_first``: raise :class:`Unregistered` (before changing anything) when a
    device with readings or a status is not registered.
    """
    named: dict[str, tuple[str, str] | None] = {}
    for decoded in batch:
        topic = decoded.topic
        if topic is None:
            continue
        if decoded.has_readings or decoded.status:
            named[topic.device_id] = (topic.kind, topic.district)
        else:
            named.setdefault(topic.device_id, None)
    devices = lock_devices(conn, sorted(named))
    unknown = {i: where for i, where in named.items() if where is not None and i not in devices}
    if unknown and register_first:
        raise Unregistered(unknown)
    for decoded in batch:
        topic = decoded.topic
        if topic is None or not (decoded.has_readings or decoded.status):
            continue
        device = devices.get(topic.device_id)
        if device is None:
            decoded.reject(Reason.UNKNOWN_DEVICE, f"device {topic.device_id!r} is not registered")
        elif device.kind != topic.kind:
            decoded.reject(
                Reason.KIND_MISMATCH,
                f"device {topic.device_id!r} is registered as {device.kind!r}, topic says {topic.kind!r}",
            )
        elif device.district != topic.district:
            decoded.reject(
                DISTRICT_MISMATCH,
                f"device {topic.device_id!r} is registered in {device.district!r},"
                f" topic says {topic.district!r}",
            )
    return devices


def register_devices(conn: psycopg.Connection, devices: dict[str, tuple[str, str]]) -> int:
    """Register devices from their topics (device id -> kind, district) outside any batch
    transaction; return how many were new.

    Committed at once: another ingest process (or lane) registering the same new device waits for
    this statement, not for a whole batch. In id order, like the locks of :func:`resolve_devices`,
    so two of them registering overlapping devices wait in one order and cannot deadlock.
    """
    ids = sorted(devices)
    with conn.cursor() as cur:
        cur.execute(
            "INSERT INTO devices (device_id, kind, district, auto_registered)"
            " SELECT id, kind, district, true FROM unnest(%s::text[], %s::text[], %s::text[])"
            " WITH ORDINALITY AS t(id, kind, district, n) ORDER BY n"
            " ON CONFLICT (device_id) DO NOTHING",
            (ids, [devices[i][0] for i in ids], [devices[i][1] for i in ids]),
        )
        return max(cur.rowcount, 0)


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
