"""Alert rules: read and checked from a TOML file (format in docs/alerts.md).

The defaults ship as ``ingest/rules.toml``; ``ingest.rules_file`` replaces them.
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

from cityneuron.catalog import KIND_BY_NAME, KINDS
from ingest.errors import IngestError

DEFAULT_RULES_FILE = Path(__file__).resolve().parent.parent / "rules.toml"
SEVERITIES = ("info", "warning", "critical")
AGGREGATES = ("last", "sum", "mean")
_RULE_NAME = re.compile(r"^[a-z0-9_]{1,64}$")
_THRESHOLD_KEYS = {
    "name",
    "kinds",
    "metric",
    "severity",
    "open_above",
    "close_below",
    "open_below",
    "close_above",
    "min_duration_s",
    "window_s",
    "aggregate",
    "description",
    "source",
}
_SILENT_KEYS = {"name", "severity", "enabled", "description", "source"}


class RulesError(IngestError):
    """The rules file cannot be read or breaks the format."""


@dataclass(frozen=True, slots=True)
class ThresholdRule:
    """Opens when the value passes ``open_at`` (above it, or below it when ``direction`` is
    "below") for ``min_duration_s``; closes when it passes back beyond ``close_at``."""

    name: str
    kinds: tuple[str, ...]
    metric: str
    severity: str
    direction: Literal["above", "below"]
    open_at: float
    close_at: float
    min_duration_s: float = 0.0
    window_s: float = 0.0
    aggregate: Literal["last", "sum", "mean"] = "last"
    description: str = ""
    source: str = ""

    def opens(self, value: float) -> bool:
        return value > self.open_at if self.direction == "above" else value < self.open_at

    def closes(self, value: float) -> bool:
        return value < self.close_at if self.direction == "above" else value > self.close_at

    def more_extreme(self, a: float, b: float) -> float:
        return max(a, b) if self.direction == "above" else min(a, b)


@dataclass(frozen=True, slots=True)
class SilentRule:
    """A device that sent nothing for ``ingest.silent_after_intervals`` x its kind's interval."""

    name: str = "device_silent"
    severity: str = "warning"
    description: str = ""
    source: str = ""


@dataclass(frozen=True, slots=True)
class RuleSet:
    thresholds: tuple[ThresholdRule, ...]
    silent: SilentRule | None
    by_kind: Mapping[str, tuple[ThresholdRule, ...]]

    @classmethod
    def of(cls, thresholds: tuple[ThresholdRule, ...], silent: SilentRule | None) -> RuleSet:
        by_kind = {k.name: tuple(r for r in thresholds if k.name in r.kinds) for k in KINDS}
        return cls(thresholds, silent, MappingProxyType(by_kind))

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(r.name for r in self.thresholds) + ((self.silent.name,) if self.silent else ())


def load_rules(path: Path | None = None) -> RuleSet:
    """Read and check a rules file (the shipped defaults when ``path`` is None)."""
    path = path or DEFAULT_RULES_FILE
    try:
        with path.open("rb") as handle:
            document = tomllib.load(handle)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise RulesError(f"cannot read alert rules {path}: {exc}") from exc
    return parse_rules(document, str(path))


def parse_rules(document: Mapping[str, Any], origin: str = "rules") -> RuleSet:
    """Check a parsed rules document; RulesError names the rule and the problem."""
    version = document.get("version", 1)
    if version != 1:
        raise RulesError(f"{origin}: unsupported rules version {version!r} (this ingest reads 1)")
    unknown = set(document) - {"version", "threshold", "silent"}
    if unknown:
        raise RulesError(f"{origin}: unknown top-level keys {sorted(unknown)}")
    raw_thresholds = document.get("threshold", [])
    if not isinstance(raw_thresholds, list):
        raise RulesError(f"{origin}: 'threshold' must be an array of tables ([[threshold]])")
    thresholds = tuple(_threshold(raw, f"{origin}: threshold {i}") for i, raw in enumerate(raw_thresholds))
    silent = _silent(document.get("silent"), f"{origin}: silent")
    names = [r.name for r in thresholds] + ([silent.name] if silent else [])
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise RulesError(f"{origin}: rule names must be unique, repeated: {repeated}")
    return RuleSet.of(thresholds, silent)


def _name_and_severity(raw: Mapping[str, Any], where: str) -> tuple[str, str]:
    name = raw.get("name")
    if not isinstance(name, str) or not _RULE_NAME.match(name):
        raise RulesError(f"{where}: name must match [a-z0-9_]{{1,64}} (it is an MQTT topic level)")
    severity = raw.get("severity", "warning")
    if severity not in SEVERITIES:
        raise RulesError(f"{where} ({name}): severity must be one of {SEVERITIES}")
    return name, severity


def _number(raw: Mapping[str, Any], key: str, where: str) -> float | None:
    value = raw.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise RulesError(f"{where}: {key} must be a finite number")
    return float(value)


def _threshold(raw: Any, where: str) -> ThresholdRule:
    if not isinstance(raw, dict):
        raise RulesError(f"{where}: must be a table")
    unknown = set(raw) - _THRESHOLD_KEYS
    if unknown:
        raise RulesError(f"{where}: unknown keys {sorted(unknown)}")
    name, severity = _name_and_severity(raw, where)
    where = f"{where} ({name})"
    metric = raw.get("metric")
    if not isinstance(metric, str):
        raise RulesError(f"{where}: metric is required")
    kinds = raw.get("kinds")
    if kinds is None:
        kinds = [k.name for k in KINDS if metric in k.metric_by_name]
    if not isinstance(kinds, list) or not kinds or not all(isinstance(k, str) for k in kinds):
        raise RulesError(f"{where}: kinds must be a non-empty list of kind names")
    for kind in kinds:
        if kind not in KIND_BY_NAME:
            raise RulesError(f"{where}: unknown kind {kind!r}")
        if metric not in KIND_BY_NAME[kind].metric_by_name:
            raise RulesError(f"{where}: kind {kind} has no metric {metric!r}")
    above = (_number(raw, "open_above", where), _number(raw, "close_below", where))
    below = (_number(raw, "open_below", where), _number(raw, "close_above", where))
    if above[0] is not None and below == (None, None):
        direction: Literal["above", "below"] = "above"
        open_at, close_at = above[0], above[1] if above[1] is not None else above[0]
        if close_at > open_at:
            raise RulesError(f"{where}: close_below must not exceed open_above (hysteresis)")
    elif below[0] is not None and above == (None, None):
        direction = "below"
        open_at, close_at = below[0], below[1] if below[1] is not None else below[0]
        if close_at < open_at:
            raise RulesError(f"{where}: close_above must not be under open_below (hysteresis)")
    else:
        raise RulesError(f"{where}: give open_above [+ close_below] or open_below [+ close_above]")
    min_duration_s = _number(raw, "min_duration_s", where) or 0.0
    window_s = _number(raw, "window_s", where) or 0.0
    aggregate = raw.get("aggregate", "last")
    if aggregate not in AGGREGATES:
        raise RulesError(f"{where}: aggregate must be one of {AGGREGATES}")
    if min_duration_s < 0 or window_s < 0:
        raise RulesError(f"{where}: min_duration_s and window_s must not be negative")
    if (aggregate == "last") != (window_s == 0):
        raise RulesError(f"{where}: aggregate 'sum' or 'mean' needs window_s > 0, and window_s needs one")
    return ThresholdRule(
        name=name,
        kinds=tuple(kinds),
        metric=metric,
        severity=severity,
        direction=direction,
        open_at=open_at,
        close_at=close_at,
        min_duration_s=min_duration_s,
        window_s=window_s,
        aggregate=aggregate,
        description=str(raw.get("description", "")),
        source=str(raw.get("source", "")),
    )


def _silent(raw: Any, where: str) -> SilentRule | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise RulesError(f"{where}: must be a table")
    unknown = set(raw) - _SILENT_KEYS
    if unknown:
        raise RulesError(f"{where}: unknown keys {sorted(unknown)}")
    if raw.get("enabled", True) is False:
        return None
    name, severity = _name_and_severity({"name": "device_silent", **raw}, where)
    return SilentRule(name, severity, str(raw.get("description", "")), str(raw.get("source", "")))
