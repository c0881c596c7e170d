"""Progress of a simulator run: a live line on a terminal, a log line (or JSON line) otherwise.

On a terminal the line is redrawn in place a few times a second; when stderr is a file or a
pipe a line is written every ``log_interval_s`` instead, so logs stay readable. With
``json_lines`` each report is one JSON object (:meth:`ProgressReporter.snapshot`) per line.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, TextIO

import orjson

log = logging.getLogger("cityneuron.simulator")

LOG_INTERVAL_S = 30.0
REDRAW_INTERVAL_S = 0.5
# Clears from the cursor to the end of the line (ECMA-48 "Erase in Line", CSI K).
_ERASE_LINE = "\x1b[K"


@dataclass(frozen=True, slots=True)
class ProgressSnapshot:
    """Counters so far and rates over the last reporting interval.

    ``lag_s``: how far the published simulated time is behind where the clock wants it (a
    growing lag means the broker or the generation cannot keep up); ``simulated_time`` is the
    simulated instant published up to, RFC 3339 UTC.
    """

    devices: int
    messages: int
    readings: int
    errors: int
    msgs_per_s: float
    readings_per_s: float
    lag_s: float
    simulated_time: str
    elapsed_s: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def line(self) -> str:
        return (
            f"{self.devices:,} devices | {self.messages:,} msgs ({self.msgs_per_s:,.0f}/s)"
            f" | {self.readings:,} readings ({self.readings_per_s:,.0f}/s) | {self.errors:,} errors"
            f" | sim {self.simulated_time} lag {self.lag_s:,.1f} s"
        )


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000.0, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class ProgressReporter:
    """Turns the counters of a run into progress reports on ``stream`` (default stderr)."""

    def __init__(
        self,
        devices: int,
        *,
        stream: TextIO | None = None,
        json_lines: bool = False,
        log_interval_s: float = LOG_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.devices = devices
        self._stream = stream if stream is not None else sys.stderr
        self._json = json_lines
        self._live = not json_lines and _is_terminal(self._stream)
        self._interval_s = REDRAW_INTERVAL_S if self._live else log_interval_s
        self._clock = clock
        self._started = clock()
        self._last_at = self._started
        self._last_counts = (0, 0)
        self._next_at = self._started + self._interval_s
        self._drawn = False
        self.last: ProgressSnapshot | None = None

    def snapshot(
        self, messages: int, readings: int, errors: int, simulated_ms: int, lag_s: float
    ) -> ProgressSnapshot:
        """Counters now, with rates since the previous snapshot."""
        now = self._clock()
        span = max(now - self._last_at, 1e-9)
        snap = ProgressSnapshot(
            devices=self.devices,
            messages=messages,
            readings=readings,
            errors=errors,
            msgs_per_s=round((messages - self._last_counts[0]) / span, 1),
            readings_per_s=round((readings - self._last_counts[1]) / span, 1),
            lag_s=round(max(0.0, lag_s), 1),
            simulated_time=_iso(simulated_ms),
            elapsed_s=round(now - self._started, 1),
        )
        self._last_at = now
        self._last_counts = (messages, readings)
        self.last = snap
        return snap

    def update(self, messages: int, readings: int, errors: int, simulated_ms: int, lag_s: float) -> None:
        """Report if a report is due; cheap to call on every pass of the loop."""
        if self._clock() < self._next_at:
            return
        self._next_at = self._clock() + self._interval_s
        self._emit(self.snapshot(messages, readings, errors, simulated_ms, lag_s))

    def _emit(self, snap: ProgressSnapshot) -> None:
        if self._json:
            self._stream.write(orjson.dumps({"progress": snap.as_dict()}).decode() + "\n")
            self._stream.flush()
        elif self._live:
            self._stream.write("\r" + snap.line() + _ERASE_LINE)
            self._stream.flush()
            self._drawn = True
        else:
            log.info("progress: %s", snap.line())

    def close(self) -> None:
        """End the redrawn line so that what follows starts on a line of its own."""
        if self._drawn:
            self._stream.write("\n")
            self._stream.flush()
            self._drawn = False


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def format_summary(summary: dict[str, Any]) -> str:
    """The final summary of a run for people, one line."""
    elapsed = float(summary.get("elapsed_s") or 0.0)
    rate = summary.get("messages", 0) / elapsed if elapsed > 0 else 0.0
    parts = [
        f"{key}={value:,}" if isinstance(value, int) else f"{key}={value}"
        for key, value in summary.items()
        if not isinstance(value, dict)
    ]
    # Per-kind counts as one JSON object, so a script can read them back from the line.
    parts += [
        f"{key}={json.dumps(value, separators=(',', ':'))}"
        for key, value in summary.items()
        if isinstance(value, dict)
    ]
    return "simulator summary: " + " ".join(parts) + f" ({rate:,.0f} msgs/s)"
