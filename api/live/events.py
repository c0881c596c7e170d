"""Broker messages as live events: telemetry readings (with catalog units) and alert transitions.

Decoding runs on paho's network thread; an event is immutable once built, so the asyncio side
can hand the same object to every subscriber.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Literal

from cityneuron import contract
from cityneuron.catalog import KIND_BY_NAME
from cityneuron.errors import ContractError

log = logging.getLogger("cityneuron.api.live")

EventType = Literal["reading", "alert"]
EVENT_TYPES: tuple[EventType, ...] = ("reading", "alert")


@dataclass(frozen=True, slots=True)
class LiveEvent:
    """One event for the streams; ``body`` is the JSON object clients receive."""

    type: EventType
    district: str
    kind: str
    device_id: str
    body: dict[str, Any]
    # Metric names a reading carries (empty for alerts), for the metric filter.
    metrics: frozenset[str] = field(default_factory=frozenset)


def _iso(ts_ms: int) -> str:
    return contract.ms_to_datetime(ts_ms).isoformat().replace("+00:00", "Z")


def reading_events(topic: contract.DeviceTopic, payload: bytes) -> list[LiveEvent]:
    """The valid readings of one telemetry message (a device's own, or a gateway batch of several
    devices); what the ingest would reject is left out."""
    try:
        if topic.is_batch:
            pairs = [(_batch_device(item), item) for item in contract.decode_batch(payload)]
        else:
            pairs = [(topic.device_id, item) for item in contract.decode_telemetry(payload)]
    except ContractError as exc:
        log.debug("live: telemetry on %s skipped: %s", topic.device_id, exc)
        return []
    kind = KIND_BY_NAME[topic.kind]
    events: list[LiveEvent] = []
    for device_id, item in pairs:
        if device_id is None:
            continue
        try:
            reading = contract.decode_reading(item)
        except ContractError:
            continue
        good, _ = contract.check_metrics(kind, reading.metrics)
        if not good:
            continue
        metrics = {
            name: {"value": value, "unit": kind.metric_by_name[name].unit} for name, value in good.items()
        }
        body = {
            "type": "reading",
            "device_id": device_id,
            "kind": topic.kind,
            "district": topic.district,
            "time": _iso(reading.ts_ms),
            "seq": reading.seq,
            "metrics": metrics,
        }
        events.append(LiveEvent("reading", topic.district, topic.kind, device_id, body, frozenset(good)))
    return events


def _batch_device(item: Any) -> str | None:
    try:
        return contract.batch_item_device(item)
    except ContractError:
        return None


def alert_event(payload: bytes) -> LiveEvent | None:
    """An alert transition published by the ingest (``contract.encode_alert``); None when malformed."""
    try:
        body = contract.loads(payload)
    except ContractError:
        return None
    if not isinstance(body, dict):
        return None
    device_id, kind, district = body.get("device_id"), body.get("kind"), body.get("district")
    if not (isinstance(device_id, str) and isinstance(kind, str) and isinstance(district, str)):
        return None
    ts = body.get("ts")
    try:
        time = _iso(contract.parse_ts(ts)) if ts is not None else None
    except ContractError:
        time = None
    out = {
        "type": "alert",
        "state": body.get("state"),
        "rule": body.get("rule"),
        "severity": body.get("severity"),
        "device_id": device_id,
        "kind": kind,
        "district": district,
        "time": time,
        "value": body.get("value"),
        "detail": body.get("detail", ""),
    }
    return LiveEvent("alert", district, kind, device_id, out)
