"""The fault configuration file (``--faults FILE``): rates per kind and parameters per fault type.

Format (documented in docs/faults.md, example in simulator/faults/default.toml)::

    [rates]                 # expected episodes per device per day, every kind
    dropout = 0.01
    [rates.water_meter]     # overrides for one kind
    dropout = 0.002
    [dropout]               # parameters of one fault type (all optional)
    duration = ["30m", "6h"]
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from cityneuron.catalog import KIND_BY_NAME, Kind
from simulator import clock
from simulator.errors import FaultConfigError
from simulator.specfile import Fields, load_toml, parse_duration_ms

DROPOUT = "dropout"
STUCK_AT = "stuck_at"
DRIFT = "drift"
BIAS = "bias"
SPIKES = "spikes"
BATTERY_DEATH = "battery_death"
CLOCK_SKEW = "clock_skew"
CLOCK_JUMP = "clock_jump"
DUPLICATE = "duplicate"
LATE = "late"
OUT_OF_ORDER = "out_of_order"
MALFORMED = "malformed"
VALUE_FAULTS = (STUCK_AT, DRIFT, BIAS, SPIKES)
CLOCK_FAULTS = (CLOCK_SKEW, CLOCK_JUMP)
BUFFER_FAULTS = (LATE, OUT_OF_ORDER)

# Per type: default duration range and the name, meaning and default of its magnitude.
# Drift draws U(0, 1e-4) x mean per sample in one public fault injector, and stuck values sit
# within 1-10 % of the mean (DOMAIN.md section 7); the defaults here are per day and per episode.
_DEFAULT_DURATION = {
    DROPOUT: ("30m", "6h"),
    STUCK_AT: ("6h", "3d"),
    DRIFT: ("1d", "7d"),
    BIAS: ("1d", "7d"),
    SPIKES: ("1h", "12h"),
    BATTERY_DEATH: ("2d", "7d"),
    CLOCK_SKEW: ("6h", "2d"),
    CLOCK_JUMP: ("1h", "1d"),
    DUPLICATE: ("1h", "6h"),
    LATE: ("30m", "6h"),
    OUT_OF_ORDER: ("30m", "6h"),
    MALFORMED: ("1h", "6h"),
}
FAULT_TYPES = tuple(_DEFAULT_DURATION)
_MAGNITUDE: Mapping[str, tuple[str, tuple[float, float], float]] = {
    DRIFT: ("drift_pct_per_day", (2.0, 10.0), 1000.0),
    BIAS: ("bias_pct", (5.0, 25.0), 1000.0),
    SPIKES: ("spike_factor", (3.0, 10.0), 1000.0),
}
_OFFSET = {CLOCK_SKEW: ("30s", "15m"), CLOCK_JUMP: ("2h", "2d")}
_PROBABILITY = {SPIKES: 0.2, DUPLICATE: 0.3, MALFORMED: 0.2}
_DEFAULT_BUFFER_MAX = 1440
_DEFAULT_FADE_SHARE = 0.6
_ENUM_UNITS = ("enum", "bool")


@dataclass(frozen=True)
class FaultType:
    """Parameters of one fault type.

    ``magnitude``: drift %/day, bias % or spike factor (value faults); clock offset in ms (clock
    faults). ``probability``: share of reports hit inside an episode (spikes, duplicate,
    malformed). ``fade_share``: battery death, share of the episode with lengthening intervals
    before silence. ``buffer_max``: late/out_of_order, readings a device keeps while offline.
    """

    name: str
    window_ms: int
    duration_ms: tuple[int, int]
    metrics: tuple[str, ...] | None = None
    magnitude: tuple[float, float] = (0.0, 0.0)
    probability: float = 1.0
    fade_share: float = _DEFAULT_FADE_SHARE
    buffer_max: int = _DEFAULT_BUFFER_MAX

    def candidates(self, kind: Kind) -> tuple[str, ...]:
        """Metrics of ``kind`` a value fault may hit: listed ones, else every measured quantity."""
        if self.metrics is not None:
            return tuple(m for m in self.metrics if m in kind.metric_by_name)
        return tuple(
            m.name
            for m in kind.metrics
            if m.unit not in _ENUM_UNITS and (self.name == STUCK_AT or not m.cumulative)
        )


@dataclass(frozen=True)
class FaultConfig:
    """Fault types with their parameters and the rates (episodes per device per day) per kind."""

    types: Mapping[str, FaultType]
    rates: Mapping[str, Mapping[str, float]]

    def rate(self, kind: str, fault: str) -> float:
        return self.rates.get(kind, {}).get(fault, 0.0)

    def active(self, kind: str) -> tuple[str, ...]:
        """Fault types with a positive rate for ``kind``, in the canonical order."""
        return tuple(f for f in FAULT_TYPES if self.rate(kind, f) > 0)


def _duration_pair(fields: Fields, name: str, default: tuple[str, str]) -> tuple[int, int]:
    value = fields.raw(name, list(default))
    try:
        if not isinstance(value, list) or len(value) != 2:
            raise ValueError(f"must be [shortest, longest] durations, got {value!r}")
        low, high = parse_duration_ms(value[0]), parse_duration_ms(value[1])
    except ValueError as exc:
        raise fields.fail(name, str(exc)) from None
    if not 0 < low <= high:
        raise fields.fail(name, f"needs 0 < shortest <= longest, got {value!r}")
    return low, high


def _fault_type(name: str, table: Mapping[str, Any], path: Path) -> FaultType:
    fields = Fields(table, f"{path}: [{name}]", FaultConfigError)
    duration = _duration_pair(fields, "duration", _DEFAULT_DURATION[name])
    # An episode lies inside one window: the window must hold the longest episode.
    window_ms = fields.duration_ms("window") if fields.has("window") else max(clock.MS_PER_DAY, duration[1])
    if window_ms < duration[1]:
        raise fields.fail("window", "must be at least as long as the longest 'duration'")
    extra: dict[str, Any] = {}
    if name in VALUE_FAULTS:
        metrics = fields.raw("metrics")
        known = {m for k in KIND_BY_NAME.values() for m in k.metric_names}
        if metrics is not None:
            if not isinstance(metrics, list) or not metrics or not all(isinstance(m, str) for m in metrics):
                raise fields.fail("metrics", f"must be a non-empty list of metric names, got {metrics!r}")
            unknown = [m for m in metrics if m not in known]
            if unknown:
                raise fields.fail("metrics", f"names no catalog metric: {', '.join(unknown)}")
            extra["metrics"] = tuple(metrics)
    if name in _MAGNITUDE:
        key, default, high = _MAGNITUDE[name]
        extra["magnitude"] = fields.number_range(key, default, high=high)
    if name in _OFFSET:
        extra["magnitude"] = tuple(float(v) for v in _duration_pair(fields, "offset", _OFFSET[name]))
    if name in _PROBABILITY:
        extra["probability"] = fields.number("probability", _PROBABILITY[name], high=1.0)
    if name == BATTERY_DEATH:
        extra["fade_share"] = fields.number("fade_share", _DEFAULT_FADE_SHARE, high=1.0)
    if name in BUFFER_FAULTS:
        extra["buffer_max"] = int(fields.number("buffer_max", _DEFAULT_BUFFER_MAX, low=1, high=1e6))
    fields.finish()
    return FaultType(name, window_ms, duration, **extra)


def _rates(table: Any, path: Path, types: Mapping[str, FaultType]) -> dict[str, dict[str, float]]:
    if not isinstance(table, Mapping):
        raise FaultConfigError(f"{path}: [rates] must be a table")
    default: dict[str, float] = {}
    per_kind: dict[str, dict[str, float]] = {}

    def rate(where: str, fault: str, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise FaultConfigError(f"{path}: {where}: field {fault!r} must be a rate >= 0, got {value!r}")
        window_days = types[fault].window_ms / clock.MS_PER_DAY
        if value * window_days > 1.0:
            raise FaultConfigError(
                f"{path}: {where}: field {fault!r} = {value}/day allows at most one episode per "
                f"{window_days:g}-day window (rate <= {1 / window_days:g})"
            )
        return float(value)

    for key, value in table.items():
        if key in FAULT_TYPES:
            default[key] = rate("[rates]", key, value)
        elif key in KIND_BY_NAME and isinstance(value, Mapping):
            where = f"[rates.{key}]"
            unknown = [f for f in value if f not in FAULT_TYPES]
            if unknown:
                raise FaultConfigError(
                    f"{path}: {where}: unknown fault type(s) {', '.join(map(repr, unknown))}; "
                    f"known: {', '.join(FAULT_TYPES)}"
                )
            per_kind[key] = {f: rate(where, f, v) for f, v in value.items()}
        else:
            raise FaultConfigError(
                f"{path}: [rates]: unknown field {key!r}: expected a fault type "
                f"({', '.join(FAULT_TYPES)}) or a [rates.<kind>] table"
            )
    rates: dict[str, dict[str, float]] = {}
    for kind_name, kind in KIND_BY_NAME.items():
        merged = {**default, **per_kind.get(kind_name, {})}
        for fault, value in merged.items():
            if value > 0 and fault in VALUE_FAULTS and not types[fault].candidates(kind):
                if fault in per_kind.get(kind_name, {}):
                    raise FaultConfigError(
                        f"{path}: [rates.{kind_name}]: {fault!r} has no metric of {kind_name} to act on"
                    )
                merged[fault] = 0.0
        rates[kind_name] = {f: v for f, v in merged.items() if v > 0}
    return rates


def load_fault_config(path: Path) -> FaultConfig:
    """Read and check a fault file; errors name the file, the table and the field."""
    document, _ = load_toml(path, FaultConfigError)
    unknown = [k for k in document if k not in (*FAULT_TYPES, "rates", "description")]
    if unknown:
        raise FaultConfigError(
            f"{path}: unknown top-level table(s) {', '.join(map(repr, unknown))}; "
            f"expected [rates], description or one of {', '.join(FAULT_TYPES)}"
        )
    types = {name: _fault_type(name, document.get(name, {}), path) for name in FAULT_TYPES}
    rates = _rates(document.get("rates", {}), path, types)
    return FaultConfig(
        MappingProxyType(types), MappingProxyType({k: MappingProxyType(v) for k, v in rates.items()})
    )
