"""Decoding and validation of inbound messages into reading rows, status updates and dead letters.

The one validation of the wire contract: the ingest decodes every message with it, and the
simulator's ``--direct`` path checks what it writes with it, so both refuse the same readings.
Pure functions: no database, no network. The checks that need the device registry (unknown
device, kind or district mismatch) happen in :mod:`ingest.registry`, inside the batch transaction.

A gateway batch (``city/{district}/{kind}/_batch/telemetry``) decodes into one :class:`Decoded`
for the message (acked once, after its commit) holding one part per device it names; the store
writes the parts (:func:`expand`) exactly as it writes single-device messages.
"""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import numpy as np
import orjson

from cityneuron import contract
from cityneuron.catalog import KIND_BY_NAME, Kind
from cityneuron.errors import ContractError, Reason
from cityneuron.settings import IngestSettings

# The database refused a message that passed validation (see the poison-message fallback).
STORE_FAILED = Reason.STORE_FAILED
# A device registered in another district than its topic (or batch topic) says.
DISTRICT_MISMATCH = Reason.DISTRICT_MISMATCH

_MS_PER_DAY = 86_400_000
_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_DETAIL_MAX_CHARS = 500


@dataclass(frozen=True, slots=True)
class Message:
    """One MQTT message as the network thread received it."""

    topic: str
    payload: bytes
    mid: int
    qos: int
    received_at: float  # epoch seconds
    # The MQTT connection it arrived on: a packet id is only meaningful on that connection.
    generation: int


@dataclass(frozen=True, slots=True)
class DeadLetter:
    topic: str
    device_id: str | None
    reason: str
    detail: str
    payload: bytes
    received_at: float


@dataclass(frozen=True, slots=True)
class Row:
    """One reading's valid metrics."""

    ts_ms: int
    seq: int | None
    values: dict[str, float]


# seq is never negative on the wire, so -1 stands for "absent" in an int64 seq column.
NO_SEQ = -1


@dataclass(slots=True)
class Block:
    """A message's valid readings as columns (the fast path, :mod:`ingest.fastdecode`).
    ``values`` is NaN where a reading lacks a metric: a NaN never arrives (JSON has none and
    non-finite numbers are refused), so NaN is unambiguous and becomes NULL in the table."""

    ts_ms: np.ndarray  # int64, epoch ms
    seq: np.ndarray  # int64, NO_SEQ when absent
    values: np.ndarray  # float64, (readings, len(kind.metrics)) in catalog order

    def __len__(self) -> int:
        return len(self.ts_ms)

    @classmethod
    def from_rows(cls, rows: list[Row], metric_names: tuple[str, ...]) -> Block:
        """The exact path's rows (dicts of the valid metrics) as columns."""
        values = np.full((len(rows), len(metric_names)), np.nan)
        column = {name: index for index, name in enumerate(metric_names)}
        for i, row in enumerate(rows):
            for name, value in row.values.items():
                values[i, column[name]] = value
        return cls(
            np.array([row.ts_ms for row in rows], dtype=np.int64),
            np.array([NO_SEQ if row.seq is None else row.seq for row in rows], dtype=np.int64),
            values,
        )


@dataclass(frozen=True, slots=True)
class StatusUpdate:
    online: bool
    ts_ms: int
    lat: float | None = None
    lon: float | None = None
    installed: date | None = None
    meta: dict[str, Any] | None = None


@dataclass(slots=True)
class Decoded:
    """What one message turned into: rows to store, a status update, and dead letters."""

    message: Message
    topic: contract.DeviceTopic | None
    rows: list[Row] = field(default_factory=list)
    # The readings as columns when the fast path decoded the message (then ``rows`` is empty).
    block: Block | None = None
    status: StatusUpdate | None = None
    dead_letters: list[DeadLetter] = field(default_factory=list)
    # A gateway batch message: one part per device it names (each part's topic names the device).
    parts: list[Decoded] = field(default_factory=list)
    # A part of a gateway batch: its raw items, which its own dead letters hold by default.
    items: list[Any] | None = None

    @property
    def has_readings(self) -> bool:
        return bool(self.rows) or self.block is not None

    def readings_block(self, metric_names: tuple[str, ...]) -> Block | None:
        """The readings as columns, whichever path decoded them."""
        if self.block is not None:
            return self.block
        return Block.from_rows(self.rows, metric_names) if self.rows else None

    @property
    def device_id(self) -> str | None:
        return self.topic.device_id if self.topic and not self.topic.is_batch else None

    def dead_letter(self, reason: str, detail: str, payload: bytes | None = None) -> DeadLetter:
        msg = self.message
        if payload is None:
            # A part keeps its own device's items (as a batch, so it can be sent again), never
            # the other devices' readings.
            payload = msg.payload if self.items is None else orjson.dumps({"readings": self.items})
        return DeadLetter(
            topic=_text(msg.topic),
            device_id=self.device_id,
            reason=str(reason),
            detail=_text(detail)[:_DETAIL_MAX_CHARS],
            payload=payload,
            received_at=msg.received_at,
        )

    def reject(self, reason: str, detail: str, payload: bytes | None = None) -> None:
        """Dead-letter the whole message (or batch part) instead of storing any part of it."""
        self.rows = []
        self.block = None
        self.status = None
        self.parts = []
        self.dead_letters = [self.dead_letter(reason, detail, payload)]


def expand(batch: Iterable[Decoded]) -> list[Decoded]:
    """The messages of a write batch with each gateway batch replaced by its per-device parts (and
    by itself when it holds dead letters of its own: the whole message's, or items naming no device)."""
    expanded: list[Decoded] = []
    for decoded in batch:
        if decoded.topic is None or not decoded.topic.is_batch:
            expanded.append(decoded)
            continue
        expanded += decoded.parts
        if decoded.dead_letters:
            expanded.append(decoded)
    return expanded


@dataclass(frozen=True, slots=True)
class Limits:
    max_payload_bytes: int
    future_tolerance_ms: int
    max_age_ms: int

    @classmethod
    def from_settings(cls, ingest: IngestSettings, retention_s: float | None = None) -> Limits:
        """Limits from the settings; ``retention_s`` (the database's retention window, when one is
        set) replaces ``max_age_days``: a reading the retention policy would drop is refused."""
        max_age_ms = ingest.max_age_days * _MS_PER_DAY if retention_s is None else round(retention_s * 1000)
        return cls(
            max_payload_bytes=ingest.max_payload_bytes,
            future_tolerance_ms=ingest.future_tolerance_s * 1000,
            max_age_ms=max_age_ms,
        )


def _text(value: str) -> str:
    # PostgreSQL text cannot hold NUL.
    return value.replace("\x00", "\\x00")


def decode_message(message: Message, limits: Limits, now_ms: int) -> Decoded:
    """Validate one message against the contract; never raises for bad input."""
    # Dead letters keep at most max_payload_bytes: they must not become a way to store huge payloads.
    head = message.payload[: limits.max_payload_bytes]
    try:
        topic = contract.parse_topic(message.topic)
    except ContractError as exc:
        decoded = Decoded(message, None)
        decoded.reject(exc.reason, exc.detail, head)
        return decoded
    decoded = Decoded(message, topic)
    if len(message.payload) > limits.max_payload_bytes:
        decoded.reject(
            Reason.TOO_LARGE,
            f"payload of {len(message.payload)} bytes exceeds max_payload_bytes={limits.max_payload_bytes}"
            " (the dead letter keeps the first max_payload_bytes)",
            head,
        )
        return decoded
    try:
        if topic.is_batch:
            _decode_batch(decoded, limits, now_ms)
        elif topic.channel == contract.TELEMETRY:
            _decode_telemetry(decoded, limits, now_ms)
        elif topic.channel == contract.STATUS:
            decoded.status = _decode_status(message.payload, limits, now_ms)
        else:
            decoded.reject(Reason.BAD_TOPIC, f"ingest does not consume the {topic.channel!r} channel")
    except ContractError as exc:
        decoded.reject(exc.reason, exc.detail)
    return decoded


def _check_age(ts_ms: int, limits: Limits, now_ms: int) -> None:
    if ts_ms > now_ms + limits.future_tolerance_ms:
        raise ContractError(
            Reason.FUTURE_TIMESTAMP,
            f"ts {ts_ms} is {(ts_ms - now_ms) / 1000:.0f} s in the future"
            f" (tolerance {limits.future_tolerance_ms // 1000} s)",
        )
    if ts_ms < now_ms - limits.max_age_ms:
        raise ContractError(
            Reason.TOO_OLD,
            f"ts {ts_ms} is {(now_ms - ts_ms) / _MS_PER_DAY:.1f} days old"
            f" (retention window {limits.max_age_ms / _MS_PER_DAY:g} days)",
        )


def _decode_telemetry(decoded: Decoded, limits: Limits, now_ms: int) -> None:
    assert decoded.topic is not None
    kind = KIND_BY_NAME[decoded.topic.kind]
    items = contract.decode_telemetry(decoded.message.payload)
    single = len(items) == 1
    for index, item in enumerate(items):
        # A bad item of an array is kept alone; a single reading keeps the original bytes.
        _decode_item(decoded, kind, item, "" if single else f"reading {index}: ", not single, limits, now_ms)


def _decode_batch(decoded: Decoded, limits: Limits, now_ms: int) -> None:
    """Split a gateway batch into one part per device; a bad item is dead-lettered alone."""
    topic = decoded.topic
    assert topic is not None
    kind = KIND_BY_NAME[topic.kind]
    parts: dict[str, Decoded] = {}
    for index, item in enumerate(contract.decode_batch(decoded.message.payload)):
        prefix = f"reading {index}: "
        try:
            device_id = contract.batch_item_device(item)
        except ContractError as exc:
            decoded.dead_letters.append(
                decoded.dead_letter(exc.reason, prefix + exc.detail, orjson.dumps(item))
            )
            continue
        part = parts.get(device_id)
        if part is None:
            part_topic = contract.DeviceTopic(topic.district, topic.kind, device_id, contract.TELEMETRY)
            part = parts[device_id] = Decoded(decoded.message, part_topic, items=[])
        assert part.items is not None
        part.items.append(item)
        _decode_item(part, kind, item, prefix, True, limits, now_ms)
    decoded.parts = list(parts.values())


def _decode_item(
    decoded: Decoded, kind: Kind, item: Any, prefix: str, alone: bool, limits: Limits, now_ms: int
) -> None:
    """Add one reading object's valid metrics as a row and its problems as dead letters; with
    ``alone``, a dead letter of the whole reading holds just this item."""
    try:
        reading = contract.decode_reading(item)
        _check_age(reading.ts_ms, limits, now_ms)
    except ContractError as exc:
        payload = orjson.dumps(item) if alone else None
        decoded.dead_letters.append(decoded.dead_letter(exc.reason, prefix + exc.detail, payload))
        return
    good, problems = contract.check_metrics(kind, reading.metrics)
    if good:
        decoded.rows.append(Row(reading.ts_ms, reading.seq, good))
    if not problems:
        return
    # One dead letter per reason. When part of the reading is stored, the dead letter holds
    # exactly the refused part (ts, seq and those metrics), so the row and the dead letter
    # together are the message: nothing is dropped and nothing is kept twice.
    by_reason: dict[Reason, list[contract.MetricProblem]] = defaultdict(list)
    for problem in problems:
        by_reason[problem.reason].append(problem)
    whole = orjson.dumps(item) if alone and not good else None
    for reason, group in by_reason.items():
        payload = _refused_part(reading, group) if good else whole
        details = "; ".join(problem.detail for problem in group)
        decoded.dead_letters.append(
            decoded.dead_letter(reason, f"{prefix}ts {reading.ts_ms}: {details}", payload)
        )


def _refused_part(reading: contract.Reading, problems: list[contract.MetricProblem]) -> bytes:
    names = {problem.metric for problem in problems}
    part: dict[str, Any] = {"ts": reading.ts_ms}
    if reading.seq is not None:
        part["seq"] = reading.seq
    part["m"] = {name: value for name, value in reading.metrics.items() if str(name)[:64] in names}
    # The standard library writes NaN and Infinity as they came; orjson would write null.
    return json.dumps(part, separators=(",", ":"), default=str).encode()


def _decode_status(payload: bytes, limits: Limits, now_ms: int) -> StatusUpdate:
    status = contract.decode_status(payload)
    _check_age(status.ts_ms, limits, now_ms)
    facts = status.device or {}
    return StatusUpdate(
        online=status.online,
        ts_ms=status.ts_ms,
        lat=_coordinate(facts, "lat", 90.0),
        lon=_coordinate(facts, "lon", 180.0),
        installed=_installed(facts),
        meta=_meta(facts),
    )


def _coordinate(facts: dict[str, Any], name: str, limit: float) -> float | None:
    value = facts.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ContractError(Reason.WRONG_TYPE, f"device.{name} must be a number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ContractError(Reason.NON_FINITE, f"device.{name} is {value}")
    # WGS 84 degrees.
    if not -limit <= value <= limit:
        raise ContractError(Reason.OUT_OF_RANGE, f"device.{name}={value} outside [-{limit}, {limit}]")
    return float(value)


def _installed(facts: dict[str, Any]) -> date | None:
    value = facts.get("installed")
    if value is None:
        return None
    if not isinstance(value, str) or not _ISO_DATE.match(value):
        raise ContractError(Reason.BAD_SHAPE, f"device.installed must be YYYY-MM-DD, got {value!r}"[:200])
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise ContractError(Reason.BAD_SHAPE, f"device.installed {value!r} is not a date") from None


def _meta(facts: dict[str, Any]) -> dict[str, Any] | None:
    value = facts.get("meta")
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ContractError(Reason.BAD_SHAPE, f"device.meta must be an object, not {type(value).__name__}")
    return value
