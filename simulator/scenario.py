"""Scenario timelines (``--scenario FILE``): storms, outages, pollution, reconnects, firmware.

A scenario is a TOML file with ``[[event]]`` tables (format in docs/scenarios.md). Weather
events reach the devices through :class:`ScenarioWeather`, an overlay on the shared drivers,
so a rainstorm raises the rain gauges, then the rivers and the manholes, exactly where it
rains. Outages and reconnect storms are answered by :meth:`Scenario.offline`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from cityneuron.catalog import DISTRICT_BY_SLUG, DISTRICTS, KIND_BY_NAME, KINDS
from simulator import clock, rng
from simulator.errors import ScenarioError
from simulator.specfile import Fields, header_lines, load_toml

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]
BoolArray = NDArray[np.bool_]

RAINSTORM = "rainstorm"
TYPHOON = "typhoon"
POLLUTION = "pollution_episode"
RECONNECT_STORM = "reconnect_storm"
FIRMWARE = "firmware_rollout"
EVENT_TYPES = (RAINSTORM, TYPHOON, POLLUTION, RECONNECT_STORM, FIRMWARE)
# Devices on mains power go dark in a power cut: poles, electricity meters (they hang on the
# supply they measure) and the analyser stations. Battery and solar devices keep reporting.
MAINS_POWERED = ("smart_pole", "electricity_meter", "air_station", "water_quality_station")
_METRIC_NAME = re.compile(r"^[a-z][a-z0-9_]{0,47}$")
_ALL = "all"
_WEATHER_TYPES = (RAINSTORM, TYPHOON, POLLUTION)


@dataclass(frozen=True)
class Event:
    """One scenario event; fields a type does not use keep their defaults."""

    type: str
    start_ms: int
    end_ms: int
    districts: tuple[str, ...]
    line: int
    rain_peak_mmh: float = 0.0
    wind_peak_ms: float = 0.0
    pressure_drop_hpa: float = 0.0
    pm25_peak_ugm3: float = 0.0
    clear_ms: int = 0
    # Typhoon power cut (empty when off), reconnect storm kinds, firmware rollout kind.
    outage_ms: tuple[int, int] | None = None
    kinds: tuple[str, ...] = ()
    metric: str = ""
    value: tuple[float, float] = (0.0, 0.0)
    in_district: BoolArray = field(
        default_factory=lambda: np.zeros(len(DISTRICTS), dtype=np.bool_), compare=False
    )

    @property
    def offline_ms(self) -> tuple[int, int] | None:
        """When the event's devices are offline: the typhoon's power cut or the whole storm."""
        if self.type == RECONNECT_STORM:
            return self.start_ms, self.end_ms
        return self.outage_ms

    def describe(self) -> dict[str, object]:
        """Parameters for the fault log."""
        params: dict[str, object] = {"line": self.line}
        for name in ("rain_peak_mmh", "wind_peak_ms", "pressure_drop_hpa", "pm25_peak_ugm3"):
            if getattr(self, name):
                params[name] = getattr(self, name)
        if self.offline_ms is not None:
            params["offline_from_ms"], params["offline_until_ms"] = self.offline_ms
        if self.kinds:
            params["kinds"] = list(self.kinds)
        if self.metric:
            params["metric"] = self.metric
        return params


def _half_sine_share(s: FloatArray) -> FloatArray:
    """Share of a half-sine pulse over [0, 1] that has passed at ``s``."""
    return (1.0 - np.cos(np.pi * np.clip(s, 0.0, 1.0))) / 2.0


def _phase(event: Event, t_ms: IntArray | FloatArray) -> FloatArray:
    return (np.asarray(t_ms, dtype=np.float64) - event.start_ms) / max(1, event.end_ms - event.start_ms)


class ScenarioWeather:
    """Extra rain, wind, low pressure and particulates of the scenario's weather events."""

    def __init__(self, events: tuple[Event, ...]) -> None:
        self.events = tuple(e for e in events if e.type in _WEATHER_TYPES)

    def _rainy(self) -> list[Event]:
        return [e for e in self.events if e.rain_peak_mmh > 0]

    def rain_mm(
        self, district: IntArray, t0_ms: IntArray | FloatArray, t1_ms: IntArray | FloatArray
    ) -> FloatArray:
        """Rain in mm between ``t0_ms`` and ``t1_ms``: a half-sine burst peaking mid-event."""
        total = np.zeros(np.shape(district), dtype=np.float64)
        for e in self._rainy():
            depth = e.rain_peak_mmh * (e.end_ms - e.start_ms) / clock.MS_PER_H * 2.0 / np.pi
            share = _half_sine_share(_phase(e, t1_ms)) - _half_sine_share(_phase(e, t0_ms))
            total += np.where(e.in_district[district], depth * np.maximum(share, 0.0), 0.0)
        return total

    def rain_rate_mmh(self, district: IntArray, t_ms: IntArray | FloatArray) -> FloatArray:
        rate = np.zeros(np.shape(district), dtype=np.float64)
        for e in self._rainy():
            s = _phase(e, t_ms)
            pulse = np.where((s >= 0) & (s <= 1), np.sin(np.pi * np.clip(s, 0.0, 1.0)), 0.0)
            rate += np.where(e.in_district[district], e.rain_peak_mmh * pulse, 0.0)
        return rate

    def _pulse(self, name: str, district: IntArray, t_ms: IntArray | FloatArray) -> FloatArray:
        out = np.zeros(np.shape(district), dtype=np.float64)
        for e in self.events:
            peak = getattr(e, name)
            if peak:
                s = _phase(e, t_ms)
                pulse = np.where((s >= 0) & (s <= 1), np.sin(np.pi * np.clip(s, 0.0, 1.0)) ** 2, 0.0)
                out += np.where(e.in_district[district], peak * pulse, 0.0)
        return out

    def wind_ms(self, district: IntArray, t_ms: IntArray | FloatArray) -> FloatArray:
        """Extra wind speed, m/s: a typhoon's winds peak mid-event."""
        return self._pulse("wind_peak_ms", district, t_ms)

    def pressure_drop_hpa(self, district: IntArray, t_ms: IntArray | FloatArray) -> FloatArray:
        return self._pulse("pressure_drop_hpa", district, t_ms)

    def pm25_ugm3(
        self, district: IntArray, t_ms: IntArray | FloatArray, background: FloatArray
    ) -> FloatArray:
        """PM2.5 under a pollution episode: climbing to the peak over the event, then clearing."""
        pm = background
        for e in self.events:
            if e.pm25_peak_ugm3 <= 0:
                continue
            t = np.asarray(t_ms, dtype=np.float64)
            rising = np.clip(_phase(e, t), 0.0, 1.0)
            after = np.maximum(0.0, t - e.end_ms) / max(1, e.clear_ms)
            weight = np.where(t < e.end_ms, rising, np.exp(-3.0 * after))
            weight = np.where((t >= e.start_ms) & e.in_district[district], weight, 0.0)
            pm = pm + weight * np.maximum(0.0, e.pm25_peak_ugm3 - pm)
        return pm


@dataclass(frozen=True)
class Scenario:
    """The events of one scenario file, with the questions the simulation asks of them."""

    path: Path
    events: tuple[Event, ...]
    description: str = ""

    @property
    def weather(self) -> ScenarioWeather | None:
        weather = ScenarioWeather(self.events)
        return weather if weather.events else None

    def offline(self, kind: str, district: IntArray, t_ms: IntArray, *, resent: bool = True) -> BoolArray:
        """Devices of ``kind`` in ``district`` that are offline at ``t_ms`` (outage, storm).

        ``resent=False``: only where the readings of the time are lost for good (a power cut);
        a reconnect storm's devices send theirs when they come back.
        """
        out = np.zeros(len(district), dtype=np.bool_)
        for e in self.events:
            window = e.offline_ms
            if not resent and e.type == RECONNECT_STORM:
                continue
            if window is not None and kind in e.kinds:
                out |= e.in_district[district] & (t_ms >= window[0]) & (t_ms < window[1])
        return out

    def firmware(
        self, kind: str, keys: IntArray, district: IntArray, t_ms: IntArray, seed: int
    ) -> list[tuple[str, FloatArray]]:
        """Extra metrics of rolled-out firmware: (name, values with NaN where not yet updated)."""
        extra: list[tuple[str, FloatArray]] = []
        for n, e in enumerate(self.events):
            if e.type != FIRMWARE or e.kinds != (kind,):
                continue
            stream = rng.stream_id(f"scenario.firmware.{n}.{e.metric}")
            updated_at = e.start_ms + rng.uniform(seed, stream, keys) * (e.end_ms - e.start_ms)
            low, high = e.value
            values = low + (high - low) * rng.uniform(seed, stream, keys, t_ms)
            extra.append((e.metric, np.where(e.in_district[district] & (t_ms >= updated_at), values, np.nan)))
        return extra


def _event(fields: Fields, line: int, run_start_ms: int) -> Event:
    kind_names = [k.name for k in KINDS]
    type_ = fields.string("type", choices=EVENT_TYPES)
    start = fields.start_ms("start", run_start_ms)
    duration = fields.duration_ms("duration", "0s" if type_ == FIRMWARE else None)
    if duration <= 0 and type_ != FIRMWARE:
        raise fields.fail("duration", "must be longer than zero")
    districts = fields.strings("districts", choices=[*DISTRICT_BY_SLUG, _ALL]) or (_ALL,)
    if _ALL in districts:
        districts = tuple(d.slug for d in DISTRICTS)
    mask = np.array([d.slug in districts for d in DISTRICTS], dtype=np.bool_)
    base = Event(type_, start, start + duration, districts, line, in_district=mask)
    if type_ == RAINSTORM:
        event = replace(base, rain_peak_mmh=fields.number("rain_peak_mmh", 60.0, low=0.1, high=300.0))
    elif type_ == TYPHOON:
        outage = None
        enabled = fields.raw("outage", True)
        if not isinstance(enabled, bool):
            raise fields.fail("outage", f"must be true or false, got {enabled!r}")
        after = fields.duration_ms("outage_start") if fields.has("outage_start") else duration // 3
        length = fields.duration_ms("outage_duration") if fields.has("outage_duration") else duration // 3
        if enabled:
            outage = (start + after, start + after + length)
        kinds = fields.strings("outage_kinds", choices=kind_names) or MAINS_POWERED
        event = replace(
            base,
            rain_peak_mmh=fields.number("rain_peak_mmh", 50.0, low=0.0, high=300.0),
            wind_peak_ms=fields.number("wind_peak_ms", 35.0, low=0.0, high=70.0),
            pressure_drop_hpa=fields.number("pressure_drop_hpa", 30.0, low=0.0, high=100.0),
            outage_ms=outage,
            kinds=kinds,
        )
    elif type_ == POLLUTION:
        event = replace(
            base,
            pm25_peak_ugm3=fields.number("pm25_peak_ugm3", 150.0, low=1.0, high=1000.0),
            clear_ms=fields.duration_ms("clear", "12h"),
        )
    elif type_ == RECONNECT_STORM:
        event = replace(base, kinds=fields.strings("kinds", choices=kind_names) or tuple(kind_names))
    else:
        kind = fields.string("kind", choices=kind_names)
        metric = fields.string("metric")
        if not _METRIC_NAME.match(metric):
            raise fields.fail("metric", f"must match {_METRIC_NAME.pattern}, got {metric!r}")
        if metric in KIND_BY_NAME[kind].metric_by_name:
            raise fields.fail(
                "metric", f"{metric!r} is already a catalog metric of {kind}; a rollout adds a new one"
            )
        value = fields.number_range("value", (0.0, 1.0), low=-1e12)
        event = replace(base, kinds=(kind,), metric=metric, value=value)
    fields.finish()
    return event


def load_scenario(path: Path, run_start_ms: int) -> Scenario:
    """Read and check a scenario file; starts like "+2h" count from ``run_start_ms``."""
    document, text = load_toml(path, ScenarioError)
    unknown = [k for k in document if k not in ("event", "description")]
    if unknown:
        raise ScenarioError(
            f"{path}: unknown top-level field(s) {', '.join(map(repr, unknown))}; expected description and [[event]] tables"
        )
    raw_events = document.get("event", [])
    if not isinstance(raw_events, list) or not raw_events:
        raise ScenarioError(f"{path}: no events: add at least one [[event]] table")
    lines = header_lines(text, "[[event]]")
    events = []
    for n, table in enumerate(raw_events):
        line = lines[n] if n < len(lines) else 0
        where = f"{path}: line {line}: event {n + 1}" if line else f"{path}: event {n + 1}"
        events.append(_event(Fields(table, where, ScenarioError), line, run_start_ms))
    description = document.get("description", "")
    if not isinstance(description, str):
        raise ScenarioError(f"{path}: field 'description' must be a string")
    return Scenario(Path(path), tuple(events), description)
