"""Wire contract v1: topic names and payload encoding (see docs/contract.md).

Telemetry: ``city/{district}/{kind}/{device_id}/telemetry`` carrying
``{"ts": <epoch ms | RFC 3339>, "seq": <int, optional>, "m": {<metric>: <number>}}``
or a JSON array of such objects (store-and-forward uploads). Gateway batches:
``city/{district}/{kind}/_batch/telemetry`` carrying ``{"readings": [{"id": <device id>, ...}, ...]}``.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from cityneuron.catalog import DISTRICT_BY_SLUG, KIND_BY_NAME, KINDS, Kind
from cityneuron.errors import ContractError, Reason

CONTRACT_VERSION = 1
TOPIC_ROOT = "city"
DEVICE_ID_PATTERN = r"[a-z0-9][a-z0-9-]{0,63}"
_DEVICE_ID = re.compile(rf"^{DEVICE_ID_PATTERN}$")

TELEMETRY = "telemetry"
STATUS = "status"
EVENT = "event"
CMD = "cmd"
CMD_ACK = "cmd/ack"
CHANNELS = (TELEMETRY, STATUS, EVENT, CMD, CMD_ACK)
ALERTS_TOPIC_ROOT = f"{TOPIC_ROOT}/alerts"

# Gateway batches (readings of several devices in one message) go to
# ``city/{district}/{kind}/_batch/telemetry``: the underscore is outside DEVICE_ID_PATTERN, so no
# device (and no device ACL pattern, which substitutes the device id) can ever name that level.
BATCH_DEVICE = "_batch"
MAX_BATCH_READINGS = 1000


@dataclass(frozen=True, slots=True)
class DeviceTopic:
    """The parts of a device topic."""

    district: str
    kind: str
    device_id: str
    channel: str

    @property
    def is_batch(self) -> bool:
        """A gateway batch topic: the devices are named in the payload, not here."""
        return self.device_id == BATCH_DEVICE


@dataclass(frozen=True, slots=True)
class Reading:
    """One decoded reading: device timestamp in epoch ms, optional sequence and raw metric values."""

    ts_ms: int
    seq: int | None
    metrics: dict[str, Any]


def is_device_id(device_id: str) -> bool:
    return bool(_DEVICE_ID.match(device_id))


def _check_topic_parts(district: str, kind: str, device_id: str, channel: str) -> DeviceTopic:
    if district not in DISTRICT_BY_SLUG:
        raise ContractError(Reason.UNKNOWN_DISTRICT, f"unknown district {district!r}")
    if kind not in KIND_BY_NAME:
        raise ContractError(Reason.UNKNOWN_KIND, f"unknown kind {kind!r}")
    if not is_device_id(device_id):
        raise ContractError(Reason.BAD_TOPIC, f"device id {device_id!r} does not match {DEVICE_ID_PATTERN}")
    if channel not in CHANNELS:
        raise ContractError(Reason.BAD_TOPIC, f"unknown channel {channel!r}")
    return DeviceTopic(district, kind, device_id, channel)


def device_topic(district: str, kind: str, device_id: str, channel: str = TELEMETRY) -> str:
    """Build a device topic, checking every part against the catalog and the contract."""
    _check_topic_parts(district, kind, device_id, channel)
    return f"{TOPIC_ROOT}/{district}/{kind}/{device_id}/{channel}"


def subscription(channel: str = TELEMETRY, district: str = "+", kind: str = "+") -> str:
    """Topic filter matching ``channel`` of every device (optionally of one district or kind)."""
    return f"{TOPIC_ROOT}/{district}/{kind}/+/{channel}"


def parse_topic(topic: str) -> DeviceTopic:
    """Split a device topic; raise ContractError with the reason when it breaks the contract."""
    parts = topic.split("/")
    if len(parts) == 6 and parts[4] == "cmd" and parts[5] == "ack":
        parts = [*parts[:4], CMD_ACK]
    if len(parts) != 5 or parts[0] != TOPIC_ROOT:
        raise ContractError(Reason.BAD_TOPIC, f"topic {topic!r} is not city/<district>/<kind>/<id>/<channel>")
    if parts[3] == BATCH_DEVICE:
        return _check_batch_parts(parts[1], parts[2], parts[4])
    return _check_topic_parts(*parts[1:])


def _check_batch_parts(district: str, kind: str, channel: str) -> DeviceTopic:
    if district not in DISTRICT_BY_SLUG:
        raise ContractError(Reason.UNKNOWN_DISTRICT, f"unknown district {district!r}")
    if kind not in KIND_BY_NAME:
        raise ContractError(Reason.UNKNOWN_KIND, f"unknown kind {kind!r}")
    if channel != TELEMETRY:
        raise ContractError(Reason.BAD_TOPIC, f"gateway batches carry telemetry only, not {channel!r}")
    return DeviceTopic(district, kind, BATCH_DEVICE, TELEMETRY)


def batch_topic(district: str, kind: str) -> str:
    """``city/{district}/{kind}/_batch/telemetry``: readings of several devices of one district and kind."""
    _check_batch_parts(district, kind, TELEMETRY)
    return f"{TOPIC_ROOT}/{district}/{kind}/{BATCH_DEVICE}/{TELEMETRY}"


# --- timestamps -------------------------------------------------------------------------------

# Epoch ms between 2000-01-01 and 2100-01-01: anything else is a unit mistake (seconds, micros).
_MIN_TS_MS = 946_684_800_000
_MAX_TS_MS = 4_102_444_800_000


def parse_ts(value: Any) -> int:
    """Epoch milliseconds from an int (epoch ms) or an RFC 3339 string with a time zone."""
    if isinstance(value, bool):
        raise ContractError(Reason.BAD_TIMESTAMP, "ts is a boolean")
    if isinstance(value, int):
        ts_ms = value
    elif isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            raise ContractError(Reason.BAD_TIMESTAMP, f"ts {value[:40]!r} is not RFC 3339") from None
        if parsed.tzinfo is None:
            raise ContractError(Reason.BAD_TIMESTAMP, f"ts {value[:40]!r} has no time zone")
        ts_ms = round(parsed.timestamp() * 1000)
    else:
        raise ContractError(
            Reason.BAD_TIMESTAMP, f"ts must be epoch ms or RFC 3339, not {type(value).__name__}"
        )
    if not _MIN_TS_MS <= ts_ms < _MAX_TS_MS:
        raise ContractError(Reason.BAD_TIMESTAMP, f"ts {ts_ms} is outside 2000..2100 (epoch ms expected)")
    return ts_ms


def ms_to_datetime(ts_ms: int) -> datetime:
    return datetime.fromtimestamp(ts_ms / 1000, tz=UTC)


def now_ms() -> int:
    return int(datetime.now(tz=UTC).timestamp() * 1000)


# --- telemetry payloads -----------------------------------------------------------------------


def encode_reading(ts_ms: int, metrics: dict[str, float], seq: int | None = None) -> bytes:
    """Encode one reading as a contract v1 payload."""
    body: dict[str, Any] = {"ts": ts_ms, "m": metrics}
    if seq is not None:
        body["seq"] = seq
    return orjson.dumps(body)


def encode_readings(readings: list[tuple[int, dict[str, float], int | None]]) -> bytes:
    """Encode several readings as one array payload (store-and-forward)."""
    items: list[dict[str, Any]] = []
    for ts_ms, metrics, seq in readings:
        item: dict[str, Any] = {"ts": ts_ms, "m": metrics}
        if seq is not None:
            item["seq"] = seq
        items.append(item)
    return orjson.dumps(items)


def encode_batch(items: list[tuple[str, int, dict[str, float], int | None]]) -> bytes:
    """Encode (device_id, ts_ms, metrics, seq) readings of several devices as a gateway batch."""
    readings: list[dict[str, Any]] = []
    for device_id, ts_ms, metrics, seq in items:
        item: dict[str, Any] = {"id": device_id, "ts": ts_ms, "m": metrics}
        if seq is not None:
            item["seq"] = seq
        readings.append(item)
    return orjson.dumps({"readings": readings})


def _non_finite_numbers(payload: bytes) -> list[str]:
    """The non-finite numbers of a payload that is valid JSON apart from them; [] when it is not."""
    found: list[str] = []

    def number(text: str) -> float:
        value = float(text)
        if not math.isfinite(value):
            found.append(text[:40])
        return value

    def constant(text: str) -> float:
        found.append(text)
        return float(text)

    try:
        json.loads(
            payload,
            parse_constant=constant,
            parse_float=number,
            parse_int=lambda text: int(text) if len(text) < 300 else number(text),
        )
    except (ValueError, RecursionError):
        return []
    return found


def loads(payload: bytes) -> Any:
    """Parse JSON; ContractError(non_finite) for NaN/Infinity/overflowing numbers, else
    ContractError(malformed_json) when the codec refuses it.

    orjson refuses non-finite numbers like any other syntax error; the standard library parser,
    whose hooks see every number, tells them apart (a slow path run for refused payloads only).
    """
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        non_finite = _non_finite_numbers(payload)
        if non_finite:
            raise ContractError(
                Reason.NON_FINITE, f"non-finite numbers: {', '.join(non_finite[:5])}"
            ) from None
        raise ContractError(Reason.MALFORMED_JSON, str(exc)[:200]) from exc


def decode_reading(item: Any) -> Reading:
    """Check the shape of one reading object; metric values are checked by :func:`check_metrics`."""
    if not isinstance(item, dict):
        raise ContractError(Reason.BAD_SHAPE, f"a reading must be an object, not {type(item).__name__}")
    if "ts" not in item:
        raise ContractError(Reason.BAD_TIMESTAMP, "reading has no ts")
    ts_ms = parse_ts(item["ts"])
    seq = item.get("seq")
    if seq is not None and (isinstance(seq, bool) or not isinstance(seq, int) or not 0 <= seq < 2**63):
        raise ContractError(Reason.BAD_SEQ, f"seq must be a non-negative integer, got {seq!r}"[:200])
    metrics = item.get("m")
    if not isinstance(metrics, dict):
        raise ContractError(Reason.BAD_SHAPE, "reading has no 'm' object of metrics")
    if not metrics:
        raise ContractError(Reason.NO_METRICS, "reading has an empty 'm' object")
    return Reading(ts_ms, seq, metrics)


def decode_telemetry(payload: bytes) -> list[Any]:
    """Parse a telemetry payload into its list of raw reading objects (one or an array)."""
    body = loads(payload)
    if isinstance(body, dict):
        return [body]
    if isinstance(body, list):
        if not body:
            raise ContractError(Reason.BAD_SHAPE, "empty reading array")
        return body
    raise ContractError(Reason.BAD_SHAPE, f"payload must be an object or an array, not {type(body).__name__}")


def decode_batch(payload: bytes) -> list[Any]:
    """Parse a gateway batch into its raw items; ContractError when the message as a whole is
    refused. Each item is checked on its own (:func:`batch_item_device`, :func:`decode_reading`)."""
    body = loads(payload)
    if not isinstance(body, dict) or not isinstance(body.get("readings"), list):
        raise ContractError(Reason.BAD_SHAPE, 'a gateway batch must be an object with a "readings" array')
    items: list[Any] = body["readings"]
    if not items:
        raise ContractError(Reason.BAD_SHAPE, "empty gateway batch")
    if len(items) > MAX_BATCH_READINGS:
        raise ContractError(
            Reason.TOO_LARGE, f"gateway batch of {len(items)} readings exceeds {MAX_BATCH_READINGS}"
        )
    return items


def batch_item_device(item: Any) -> str:
    """The device id a batch item names; ContractError(bad_shape) when it names none."""
    if not isinstance(item, dict):
        raise ContractError(Reason.BAD_SHAPE, f"a reading must be an object, not {type(item).__name__}")
    device_id = item.get("id")
    if not isinstance(device_id, str) or not is_device_id(device_id):
        raise ContractError(
            Reason.BAD_SHAPE, f"batch reading id {device_id!r} is not a device id ({DEVICE_ID_PATTERN})"[:200]
        )
    return device_id


@dataclass(frozen=True, slots=True)
class MetricProblem:
    metric: str
    reason: Reason
    detail: str


# Per kind: metric name -> (low, high), for the fast path of check_metrics (ingest's hottest loop).
_BOUNDS: dict[str, dict[str, tuple[float, float]]] = {
    kind.name: {m.name: (m.low, m.high) for m in kind.metrics} for kind in KINDS
}
_PLAIN_NUMBERS = (int, float)  # exact types: bool is a subclass of int and must be refused


def check_metrics(kind: Kind, metrics: dict[str, Any]) -> tuple[dict[str, float], list[MetricProblem]]:
    """Split raw metric values into the valid ones and the problems, by the catalog."""
    good: dict[str, float] = {}
    bounds = _BOUNDS[kind.name]
    for name, value in metrics.items():
        limits = bounds.get(name)
        # NaN fails the comparison and infinities are out of range, so both take the slow path.
        if limits is None or type(value) not in _PLAIN_NUMBERS or not limits[0] <= value <= limits[1]:
            return _check_metrics_slowly(kind, metrics)
        good[name] = float(value)
    return good, []


def _check_metrics_slowly(
    kind: Kind, metrics: dict[str, Any]
) -> tuple[dict[str, float], list[MetricProblem]]:
    good: dict[str, float] = {}
    problems: list[MetricProblem] = []
    for name, value in metrics.items():
        metric = kind.metric_by_name.get(name)
        if metric is None:
            problems.append(
                MetricProblem(
                    str(name)[:64],
                    Reason.UNKNOWN_METRIC,
                    f"{kind.name} has no metric {name!r}"[:200],
                )
            )
        elif isinstance(value, bool) or not isinstance(value, int | float):
            problems.append(
                MetricProblem(name, Reason.WRONG_TYPE, f"{name} must be a number, got {type(value).__name__}")
            )
        elif not math.isfinite(value):
            problems.append(MetricProblem(name, Reason.NON_FINITE, f"{name} is {value}"))
        elif not metric.contains(value):
            problems.append(
                MetricProblem(
                    name,
                    Reason.OUT_OF_RANGE,
                    f"{name}={value} outside [{metric.low}, {metric.high}] {metric.unit}",
                )
            )
        else:
            good[name] = float(value)
    return good, problems


# --- status and commands ----------------------------------------------------------------------


def encode_status(online: bool, ts_ms: int, device: dict[str, Any] | None = None) -> bytes:
    """Status payload; ``device`` optionally carries registry facts (lat, lon, installed, meta)."""
    body: dict[str, Any] = {"online": online, "ts": ts_ms}
    if device:
        body["device"] = device
    return orjson.dumps(body)


@dataclass(frozen=True, slots=True)
class Status:
    online: bool
    ts_ms: int
    device: dict[str, Any] | None


def decode_status(payload: bytes) -> Status:
    body = loads(payload)
    if not isinstance(body, dict) or not isinstance(body.get("online"), bool):
        raise ContractError(Reason.BAD_SHAPE, "status must be an object with a boolean 'online'")
    device = body.get("device")
    if device is not None and not isinstance(device, dict):
        raise ContractError(Reason.BAD_SHAPE, "status 'device' must be an object")
    return Status(body["online"], parse_ts(body["ts"]) if "ts" in body else now_ms(), device)


def encode_command(command_id: str, command: str, args: dict[str, Any], ts_ms: int) -> bytes:
    return orjson.dumps({"id": command_id, "command": command, "args": args, "ts": ts_ms})


def encode_command_ack(command_id: str, ok: bool, ts_ms: int, detail: str = "") -> bytes:
    return orjson.dumps({"id": command_id, "ok": ok, "ts": ts_ms, "detail": detail})


@dataclass(frozen=True, slots=True)
class Command:
    command_id: str
    command: str
    args: dict[str, Any]
    ts_ms: int


# Downlink commands each kind accepts (docs/contract.md): command -> (kinds, checker of args).
_VALVE_STATES = ("open", "close")
COMMAND_KINDS: dict[str, tuple[str, ...]] = {
    "set_lamp_level": ("smart_pole",),
    "set_valve": ("water_meter", "gas_meter"),
}


def check_command(kind: str, command: str, args: Any) -> dict[str, Any]:
    """Validated ``args`` of ``command`` for a device of ``kind``; ContractError when not accepted."""
    kinds = COMMAND_KINDS.get(command)
    if kinds is None:
        raise ContractError(Reason.BAD_SHAPE, f"unknown command {command!r}; known: {sorted(COMMAND_KINDS)}")
    if kind not in kinds:
        raise ContractError(Reason.BAD_SHAPE, f"{kind} devices do not accept {command!r}")
    if not isinstance(args, dict):
        raise ContractError(Reason.BAD_SHAPE, "command args must be an object")
    if command == "set_lamp_level":
        level = args.get("level")
        if isinstance(level, bool) or not isinstance(level, int | float) or not 0 <= level <= 100:
            raise ContractError(Reason.BAD_SHAPE, "set_lamp_level needs args.level, a number 0..100")
        return {"level": float(level)}
    state = args.get("state")
    if state not in _VALVE_STATES:
        raise ContractError(Reason.BAD_SHAPE, "set_valve needs args.state, 'open' or 'close'")
    return {"state": state}


def decode_command(payload: bytes) -> Command:
    """A command as a device receives it (its kind's args are checked with ``check_command``)."""
    body = loads(payload)
    if (
        not isinstance(body, dict)
        or not isinstance(body.get("id"), str)
        or not isinstance(body.get("command"), str)
    ):
        raise ContractError(Reason.BAD_SHAPE, "command must be an object with string 'id' and 'command'")
    args = body.get("args", {})
    if not isinstance(args, dict):
        raise ContractError(Reason.BAD_SHAPE, "command args must be an object")
    return Command(body["id"], body["command"], args, parse_ts(body["ts"]) if "ts" in body else now_ms())


@dataclass(frozen=True, slots=True)
class CommandAck:
    command_id: str
    ok: bool
    ts_ms: int
    detail: str


def decode_command_ack(payload: bytes) -> CommandAck:
    body = loads(payload)
    if (
        not isinstance(body, dict)
        or not isinstance(body.get("id"), str)
        or not isinstance(body.get("ok"), bool)
    ):
        raise ContractError(
            Reason.BAD_SHAPE, "command ack must be an object with string 'id' and boolean 'ok'"
        )
    detail = body.get("detail", "")
    return CommandAck(
        body["id"], body["ok"], parse_ts(body["ts"]) if "ts" in body else now_ms(), str(detail)[:500]
    )


# --- alerts -----------------------------------------------------------------------------------


def alert_topic(district: str, kind: str, device_id: str, rule: str) -> str:
    """``city/alerts/{district}/{kind}/{device_id}/{rule}`` (published by the ingest, QoS 1)."""
    _check_topic_parts(district, kind, device_id, TELEMETRY)
    if not re.fullmatch(r"[a-z0-9_]{1,64}", rule):
        raise ContractError(Reason.BAD_TOPIC, f"bad rule name {rule!r}")
    return f"{ALERTS_TOPIC_ROOT}/{district}/{kind}/{device_id}/{rule}"


def encode_alert(
    *,
    state: str,
    rule: str,
    severity: str,
    device_id: str,
    kind: str,
    district: str,
    ts_ms: int,
    value: float | None,
    detail: str = "",
) -> bytes:
    """Alert transition payload: ``state`` is "open" or "closed"."""
    if state not in ("open", "closed"):
        raise ValueError(f"alert state must be 'open' or 'closed', not {state!r}")
    return orjson.dumps(
        {
            "state": state,
            "rule": rule,
            "severity": severity,
            "device_id": device_id,
            "kind": kind,
            "district": district,
            "ts": ts_ms,
            "value": value,
            "detail": detail,
        }
    )
