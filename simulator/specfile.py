"""Reading the simulator's TOML spec files (scenarios, faults) with errors that name the place.

``tomllib`` reports syntax errors with their line and column; semantic errors name the table
(and, for arrays of tables such as ``[[event]]``, the line of its header) and the field.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Mapping
from datetime import date, datetime, time, timedelta, timezone
from pathlib import Path
from typing import Any

from simulator import clock
from simulator.errors import SpecFileError

_DURATION = re.compile(
    r"^(?:(\d+(?:\.\d+)?)d)?(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?$"
)
_UNIT_MS = (clock.MS_PER_DAY, clock.MS_PER_H, clock.MS_PER_MIN, clock.MS_PER_S)
# China Standard Time: a start written without an offset is Shenzhen local time.
_CST = timezone(timedelta(milliseconds=clock.UTC_OFFSET_MS))


def load_toml(path: Path, error: type[SpecFileError]) -> tuple[dict[str, Any], str]:
    """The parsed document and its text; unreadable or invalid files raise ``error``."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"{path}: cannot read: {exc}") from exc
    try:
        return tomllib.loads(text), text
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{path}: not valid TOML: {exc}") from exc


def header_lines(text: str, header: str) -> list[int]:
    """1-based line numbers of every ``header`` line (e.g. ``[[event]]``), in file order."""
    pattern = re.compile(rf"^\s*{re.escape(header)}\s*(#.*)?$")
    return [n for n, line in enumerate(text.splitlines(), start=1) if pattern.match(line)]


def parse_duration_ms(value: Any) -> int:
    """Milliseconds from "90m", "3h", "1d12h", "45s" (units d, h, m, s, largest first)."""
    if isinstance(value, str) and value and (match := _DURATION.match(value.strip())):
        return round(sum(float(g) * unit for g, unit in zip(match.groups(), _UNIT_MS, strict=True) if g))
    raise ValueError(f"must be a duration such as '90m', '3h' or '1d12h', got {value!r}")


def parse_start_ms(value: Any, run_start_ms: int) -> int:
    """Epoch ms of a start: a TOML date-time or RFC 3339 string (no offset: Shenzhen time), or
    "+<duration>" after the run's start."""
    if isinstance(value, str) and value.startswith("+"):
        return run_start_ms + parse_duration_ms(value[1:])
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"must be RFC 3339 or '+<duration>', got {value!r}") from None
    if isinstance(value, datetime):
        stamped = value if value.tzinfo is not None else value.replace(tzinfo=_CST)
        return round(stamped.timestamp() * 1000)
    if isinstance(value, date | time):
        raise ValueError(f"needs a date and a time, got {value!r}")
    raise ValueError(f"must be a date-time or '+<duration>', got {value!r}")


class Fields:
    """Typed access to one TOML table; every error names ``where`` and the field."""

    def __init__(self, table: Mapping[str, Any], where: str, error: type[SpecFileError]) -> None:
        if not isinstance(table, Mapping):
            raise error(f"{where}: must be a table, got {type(table).__name__}")
        self.table = table
        self.where = where
        self.error = error
        self._used: set[str] = set()

    def fail(self, name: str, problem: str) -> SpecFileError:
        return self.error(f"{self.where}: field {name!r} {problem}")

    def has(self, name: str) -> bool:
        return name in self.table

    def raw(self, name: str, default: Any = None) -> Any:
        self._used.add(name)
        return self.table.get(name, default)

    def number(
        self, name: str, default: float | None = None, *, low: float = 0.0, high: float = 1e12
    ) -> float:
        value = self.raw(name, default)
        if value is None:
            raise self.fail(name, "is required")
        if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
            raise self.fail(name, f"must be a number in [{low}, {high}], got {value!r}")
        return float(value)

    def number_range(
        self, name: str, default: tuple[float, float], *, low: float = 0.0, high: float = 1e12
    ) -> tuple[float, float]:
        """A [low, high] pair (or a single number meaning exactly that)."""
        value = self.raw(name, list(default))
        if isinstance(value, int | float) and not isinstance(value, bool):
            value = [value, value]
        if (
            not isinstance(value, list)
            or len(value) != 2
            or any(isinstance(v, bool) or not isinstance(v, int | float) for v in value)
            or not low <= value[0] <= value[1] <= high
        ):
            raise self.fail(name, f"must be [low, high] with {low} <= low <= high <= {high}, got {value!r}")
        return float(value[0]), float(value[1])

    def string(self, name: str, default: str | None = None, *, choices: Iterable[str] | None = None) -> str:
        value = self.raw(name, default)
        if not isinstance(value, str):
            raise self.fail(name, "is required" if value is None else f"must be a string, got {value!r}")
        allowed = list(choices) if choices is not None else None
        if allowed is not None and value not in allowed:
            raise self.fail(name, f"must be one of {', '.join(allowed)}; got {value!r}")
        return value

    def strings(self, name: str, *, choices: Iterable[str]) -> tuple[str, ...] | None:
        """A list of names from ``choices`` (a single string is a list of one); None if absent."""
        value = self.raw(name)
        if value is None:
            return None
        if isinstance(value, str):
            value = [value]
        allowed = set(choices)
        if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
            raise self.fail(name, f"must be a non-empty list of names, got {value!r}")
        unknown = [v for v in value if v not in allowed]
        if unknown:
            raise self.fail(
                name, f"has unknown {', '.join(map(repr, unknown))}; known: {', '.join(sorted(allowed))}"
            )
        return tuple(dict.fromkeys(value))

    def duration_ms(self, name: str, default: str | None = None) -> int:
        value = self.raw(name, default)
        if value is None:
            raise self.fail(name, "is required")
        try:
            return parse_duration_ms(value)
        except ValueError as exc:
            raise self.fail(name, str(exc)) from None

    def start_ms(self, name: str, run_start_ms: int) -> int:
        value = self.raw(name)
        if value is None:
            raise self.fail(name, "is required")
        try:
            return parse_start_ms(value, run_start_ms)
        except ValueError as exc:
            raise self.fail(name, str(exc)) from None

    def finish(self) -> None:
        """Refuse fields nobody asked for: a typo must not be ignored silently."""
        unknown = sorted(set(self.table) - self._used)
        if unknown:
            raise self.error(f"{self.where}: unknown field(s) {', '.join(map(repr, unknown))}")
