"""Fault injection: every fault type is produced, is what it claims to be, and is logged;
decisions are deterministic and independent of sharding. No broker needed: the messages are
taken from the simulator's effects pipeline, exactly as the runner publishes them."""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cityneuron.catalog import KIND_BY_NAME
from cityneuron.contract import ContractError, check_metrics, decode_reading, decode_telemetry, parse_topic
from simulator import build_city, clock
from simulator.city import City
from simulator.drivers import Drivers
from simulator.effects import Batch, Effects, EffectsSpec
from simulator.errors import FaultConfigError, SimulatorError
from simulator.faultconfig import FAULT_TYPES, FaultConfig, load_fault_config
from simulator.faultlog import FaultRecord, read_fault_log
from simulator.kinds import MODELS, build_models
from simulator.schedule import build_schedules

# Tuesday 2025-03-11 12:00 Shenzhen time.
T0 = 1_741_665_600_000
POLE = "smart_pole"
MANHOLE = "manhole_cover"
DEFAULT_FAULTS = Path(__file__).resolve().parents[1] / "simulator" / "faults" / "default.toml"


@pytest.fixture(scope="module")
def city() -> City:
    return build_city("small", 0.02, seed=7)


Reading = tuple[str, int, int, dict[str, Any]]  # device, ts, seq, metrics


def _drive(
    city: City, spec: EffectsSpec, kinds: tuple[str, ...], hours: float, step_min: int = 15
) -> tuple[list[Batch], Effects]:
    """Run the effects pipeline over ``hours`` from T0 for ``kinds``, one pass per step."""
    models = build_models(city, Drivers(city.seed, spec.weather))
    schedules = {k: s for k, s in build_schedules(city.tables).items() if k in kinds}
    effects = Effects(city, models, schedules, spec)
    batches = []
    after, end = T0, T0 + int(hours * clock.MS_PER_H)
    while after < end:
        until = min(end, after + step_min * clock.MS_PER_MIN)
        batches += effects.window(after, until)
        after = until
    return batches, effects


def _telemetry(batches: list[Batch]) -> list[tuple[str, bytes]]:
    return [(m.topic, m.payload) for b in batches if not b.status for m in b.messages]


def _decode(topic: str, payload: bytes) -> list[Reading]:
    """Readings of one message; ContractError when the message breaks the contract."""
    parsed = parse_topic(topic)
    kind = KIND_BY_NAME[parsed.kind]
    out = []
    for item in decode_telemetry(payload):
        reading = decode_reading(item)
        _, problems = check_metrics(kind, reading.metrics)
        if any(p.reason != "out_of_range" for p in problems):
            raise ContractError(problems[0].reason, problems[0].detail)
        assert reading.seq is not None
        out.append((parsed.device_id, reading.ts_ms, reading.seq, reading.metrics))
    return out


def _readings(batches: list[Batch]) -> list[Reading]:
    return [r for topic, payload in _telemetry(batches) for r in _decode(topic, payload)]


def _by_slot(readings: list[Reading]) -> dict[tuple[str, int], Reading]:
    return {(r[0], r[2]): r for r in readings}


def _config(tmp_path: Path, fault: str, kind: str = POLE, params: str = "") -> FaultConfig:
    """Only ``fault``, for ``kind``: an episode of 20-50 min in every device's every 2 h window."""
    path = tmp_path / f"{fault}.toml"
    text = (
        f'[rates.{kind}]\n{fault} = 12.0\n\n[{fault}]\nwindow = "2h"\nduration = ["20m", "50m"]\n{params}\n'
    )
    path.write_text(text)
    return load_fault_config(path)


def _records(effects: Effects, fault: str) -> list[FaultRecord]:
    records = [r for r in effects.log.records if r.type == fault]
    assert records, f"no {fault} fault was logged"
    return records


def _covering(records: list[FaultRecord], device: str, t_ms: int) -> FaultRecord | None:
    for r in records:
        if r.device_id == device and r.start_ms <= t_ms < r.end_ms:
            return r
    return None


@pytest.fixture(scope="module")
def pole_baseline(city: City) -> dict[tuple[str, int], Reading]:
    batches, _ = _drive(city, EffectsSpec(), (POLE,), hours=3)
    return _by_slot(_readings(batches))


def _run_pole_fault(
    city: City, tmp_path: Path, fault: str, params: str = ""
) -> tuple[list[Batch], Effects, list[FaultRecord]]:
    batches, effects = _drive(
        city, EffectsSpec(faults=_config(tmp_path, fault, POLE, params)), (POLE,), hours=3
    )
    return batches, effects, _records(effects, fault)


# --- each fault type ----------------------------------------------------------------------


def test_dropout_removes_reports_inside_logged_episodes(
    city: City, tmp_path: Path, pole_baseline: dict[tuple[str, int], Reading]
) -> None:
    batches, _, records = _run_pole_fault(city, tmp_path, "dropout")
    got = _by_slot(_readings(batches))
    assert set(got) < set(pole_baseline)
    missing = set(pole_baseline) - set(got)
    for device, seq in missing:
        assert _covering(records, device, pole_baseline[device, seq][1]), (device, seq)
    for key, reading in got.items():
        assert _covering(records, key[0], reading[1]) is None
        assert reading == pole_baseline[key]


def test_stuck_at_repeats_the_value_from_the_episode_start(
    city: City, tmp_path: Path, pole_baseline: dict[tuple[str, int], Reading]
) -> None:
    batches, _, records = _run_pole_fault(city, tmp_path, "stuck_at")
    got = _by_slot(_readings(batches))
    assert set(got) == set(pole_baseline)
    changed = 0
    for record in records:
        metric = record.params["metric"]
        inside = [
            r for r in got.values() if r[0] == record.device_id and record.start_ms <= r[1] < record.end_ms
        ]
        assert inside
        values = {r[3][metric] for r in inside}
        assert len(values) == 1, (record, values)
        assert values.pop() == pytest.approx(record.params["value"], abs=0.051)
        changed += sum(r[3][metric] != pole_baseline[r[0], r[2]][3][metric] for r in inside)
    assert changed > 0


@pytest.mark.parametrize(("fault", "param"), [("drift", "drift_per_day"), ("bias", "offset")])
def test_drift_and_bias_shift_values_as_logged(
    city: City, tmp_path: Path, pole_baseline: dict[tuple[str, int], Reading], fault: str, param: str
) -> None:
    batches, _, records = _run_pole_fault(city, tmp_path, fault)
    got = _by_slot(_readings(batches))
    checked = 0
    for (device, seq), reading in got.items():
        base = pole_baseline[device, seq]
        record = _covering(records, device, reading[1])
        for metric, value in reading[3].items():
            if record is None or record.params["metric"] != metric:
                assert value == base[3][metric], (device, metric)
                continue
            days = (reading[1] - record.start_ms) / clock.MS_PER_DAY
            expected = record.params[param] * (days if fault == "drift" else 1.0)
            # Both values are rounded on the wire: the difference is good to one last digit.
            last_digit = 10.0 ** -MODELS[POLE].decimals.get(metric, 2)
            assert value - base[3][metric] == pytest.approx(expected, abs=1.01 * last_digit)
            checked += 1
    assert checked > 0


def test_spikes_jump_far_from_the_true_value(
    city: City, tmp_path: Path, pole_baseline: dict[tuple[str, int], Reading]
) -> None:
    batches, _, records = _run_pole_fault(city, tmp_path, "spikes", "probability = 0.5")
    spikes = 0
    for device, _, seq, metrics in _readings(batches):
        base = pole_baseline[device, seq][3]
        for metric, value in metrics.items():
            if value != base[metric]:
                span = (
                    KIND_BY_NAME[POLE].metric_by_name[metric].high
                    - KIND_BY_NAME[POLE].metric_by_name[metric].low
                )
                assert abs(value - base[metric]) >= 3 * 0.01 * span * 0.99
                assert any(r.device_id == device and r.params["metric"] == metric for r in records)
                spikes += 1
    assert spikes > 0


def test_battery_death_lengthens_intervals_then_falls_silent(city: City, tmp_path: Path) -> None:
    path = tmp_path / "battery.toml"
    path.write_text(
        '[rates.manhole_cover]\nbattery_death = 1.0\n[battery_death]\nwindow = "1d"\nduration = ["12h", "20h"]\n'
    )
    spec = EffectsSpec(faults=load_fault_config(path))
    base_batches, _ = _drive(city, EffectsSpec(), (MANHOLE,), hours=48, step_min=60)
    batches, effects = _drive(city, spec, (MANHOLE,), hours=48, step_min=60)
    records = _records(effects, "battery_death")
    baseline = _readings(base_batches)
    got = _readings(batches)
    assert len(got) < len(baseline)
    for record in records:
        silent_from = record.params["silent_from_ms"]
        assert record.start_ms < silent_from < record.end_ms
        expected = [r for r in baseline if r[0] == record.device_id and record.start_ms <= r[1] < silent_from]
        fading = [r for r in got if r[0] == record.device_id and record.start_ms <= r[1] < silent_from]
        silent = [r for r in got if r[0] == record.device_id and silent_from <= r[1] < record.end_ms]
        assert silent == []
        assert len(fading) <= len(expected) // 2 + 1
        assert all(r[3]["battery_v"] <= 3.45 for r in fading)


@pytest.mark.parametrize("fault", ["clock_skew", "clock_jump"])
def test_clock_faults_shift_timestamps_by_the_logged_offset(
    city: City, tmp_path: Path, pole_baseline: dict[tuple[str, int], Reading], fault: str
) -> None:
    batches, _, records = _run_pole_fault(city, tmp_path, fault)
    got = _by_slot(_readings(batches))
    assert set(got) == set(pole_baseline)
    shifted = 0
    for key, reading in got.items():
        slot_ms = pole_baseline[key][1]
        record = _covering(records, key[0], slot_ms)
        offset = record.params["offset_ms"] if record else 0
        assert reading[1] - slot_ms == offset
        assert reading[3] == pole_baseline[key][3]
        shifted += bool(offset)
    assert shifted > 0
    low, high = (30_000, 900_000) if fault == "clock_skew" else (2 * clock.MS_PER_H, 2 * clock.MS_PER_DAY)
    assert all(low <= abs(r.params["offset_ms"]) <= high for r in records)


def test_duplicates_repeat_a_message_right_away(
    city: City, tmp_path: Path, pole_baseline: dict[tuple[str, int], Reading]
) -> None:
    batches, _, records = _run_pole_fault(city, tmp_path, "duplicate")
    messages = _telemetry(batches)
    repeats = [a for a, b in itertools.pairwise(messages) if a == b]
    assert repeats
    assert len(messages) == len(pole_baseline) + len(repeats)
    assert set(_by_slot(_readings(batches))) == set(pole_baseline)
    for topic, payload in repeats:
        device, ts, _, _ = _decode(topic, payload)[0]
        assert _covering(records, device, ts)


@pytest.mark.parametrize("fault", ["late", "out_of_order"])
def test_store_and_forward_delivers_buffered_readings_on_reconnect(
    city: City, tmp_path: Path, pole_baseline: dict[tuple[str, int], Reading], fault: str
) -> None:
    batches, _, records = _run_pole_fault(city, tmp_path, fault)
    stream = _readings(batches)
    got = _by_slot(stream)
    assert set(got) <= set(pole_baseline)
    assert all(got[k] == pole_baseline[k] for k in got)
    run_end = T0 + 3 * clock.MS_PER_H
    held = 0
    for record in records:
        if record.end_ms + 60_000 >= run_end:
            continue  # still offline when the run ended
        inside = [
            k
            for k, r in pole_baseline.items()
            if k[0] == record.device_id and record.start_ms <= r[1] < record.end_ms
        ]
        assert inside and all(k in got for k in inside)
        # Delivered on reconnect: one block right before the device's first report after the
        # episode, so after readings of other devices stamped later than them.
        positions = sorted(i for i, r in enumerate(stream) if (r[0], r[2]) in set(inside))
        assert positions == list(range(positions[0], positions[-1] + 1))
        reconnect = stream[positions[-1] + 1]
        assert reconnect[0] == record.device_id and reconnect[1] >= record.end_ms
        oldest = min(stream[i][1] for i in positions)
        assert any(r[1] > oldest + 60_000 for r in stream[: positions[0]])
        held += len(inside)
    assert held > 0
    per_device: dict[str, list[int]] = defaultdict(list)
    for device, ts, _, _ in stream:
        per_device[device].append(ts)
    disordered = sum(any(b < a for a, b in itertools.pairwise(ts)) for ts in per_device.values())
    if fault == "late":
        assert disordered == 0
    else:
        assert disordered > 0


def test_malformed_payloads_break_the_contract(
    city: City, tmp_path: Path, pole_baseline: dict[tuple[str, int], Reading]
) -> None:
    batches, _, records = _run_pole_fault(city, tmp_path, "malformed", "probability = 0.5")
    messages = _telemetry(batches)
    assert len(messages) == len(pole_baseline)
    bad_devices = Counter()
    for topic, payload in messages:
        try:
            _decode(topic, payload)
        except (ContractError, ValueError):
            bad_devices[parse_topic(topic).device_id] += 1
    assert sum(bad_devices.values()) > 0
    assert set(bad_devices) <= {r.device_id for r in records}


# --- the log, determinism, sharding -------------------------------------------------------


def _all_faults(tmp_path: Path, name: str) -> FaultConfig:
    path = tmp_path / name
    rates = "".join(f"{f} = 1.0\n" for f in FAULT_TYPES if f != "battery_death")
    types = "".join(f'[{f}]\nwindow = "6h"\nduration = ["20m", "2h"]\n' for f in FAULT_TYPES)
    path.write_text(f"[rates]\n{rates}\n{types}")
    return load_fault_config(path)


def test_fault_log_lines_carry_device_type_and_interval(city: City, tmp_path: Path) -> None:
    log_path = tmp_path / "faults.jsonl"
    _, effects = _drive(
        city,
        EffectsSpec(faults=_all_faults(tmp_path, "all.toml"), fault_log=log_path),
        (POLE, MANHOLE),
        hours=3,
    )
    lines = read_fault_log(log_path)
    assert lines == [r.as_dict() for r in effects.log.records]
    assert len({line["type"] for line in lines}) >= 8
    for line in lines:
        assert set(line) == {
            "device_id",
            "kind",
            "district",
            "type",
            "start",
            "end",
            "start_ms",
            "end_ms",
            "params",
        }
        assert line["device_id"].split("-")[1] == line["district"]
        assert datetime.fromisoformat(line["start"]).timestamp() * 1000 == line["start_ms"]
        assert datetime.fromisoformat(line["end"]).timestamp() * 1000 == line["end_ms"]
        assert line["start_ms"] < line["end_ms"]
    identities = [(line["device_id"], line["type"], line["start_ms"]) for line in lines]
    assert len(identities) == len(set(identities))


def test_faults_are_deterministic_and_independent_of_sharding(tmp_path: Path) -> None:
    config = _all_faults(tmp_path, "all.toml")
    kinds = (POLE, MANHOLE, "electricity_meter", "water_meter")

    def run(shard: tuple[int, int], log_name: str) -> tuple[list[tuple[str, bytes]], bytes]:
        city = build_city("small", 0.02, seed=11, shard=shard)
        batches, _ = _drive(city, EffectsSpec(faults=config, fault_log=tmp_path / log_name), kinds, hours=3)
        return _telemetry(batches), (tmp_path / log_name).read_bytes()

    first, log_first = run((0, 1), "a.jsonl")
    second, log_second = run((0, 1), "b.jsonl")
    assert first == second and log_first == log_second and log_first
    parts = [run((i, 2), f"shard{i}.jsonl") for i in range(2)]
    assert Counter(first) == Counter(parts[0][0]) + Counter(parts[1][0])
    assert sorted(log_first.splitlines()) == sorted(parts[0][1].splitlines() + parts[1][1].splitlines())
    other_city = build_city("small", 0.02, seed=12)
    other, _ = _drive(other_city, EffectsSpec(faults=config), kinds, hours=3)
    assert other != first


# --- the file -----------------------------------------------------------------------------


def test_shipped_default_faults_load() -> None:
    config = load_fault_config(DEFAULT_FAULTS)
    for kind in KIND_BY_NAME:
        assert config.rate(kind, "dropout") > 0
    assert config.rate(MANHOLE, "battery_death") > 0
    assert config.rate(POLE, "battery_death") == 0
    assert np.isclose(config.types["battery_death"].window_ms, 7 * clock.MS_PER_DAY)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[rates\ndropout = 1", "line 1"),
        ("[rates]\ndropout = -1", "'dropout' must be a rate"),
        ("[rates]\ndropout = 2.0", "at most one episode"),
        ("[rates.smart_pole]\nmeltdown = 0.1", "unknown fault type(s) 'meltdown'"),
        ("[rates]\natlantis = 0.1", "unknown field 'atlantis'"),
        ("[dropout]\nduration = ['1h', '10 minutes']", "[dropout]: field 'duration'"),
        ("[drift]\ndrift_pct_per_day = [5, 1]", "[drift]: field 'drift_pct_per_day'"),
        ("[stuck_at]\nmetrics = ['pm2.5']", "names no catalog metric"),
        ("[spikes]\nprobabilty = 0.3", "unknown field(s) 'probabilty'"),
        ("[weather]\nx = 1", "unknown top-level"),
    ],
)
def test_bad_fault_files_name_the_place(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(FaultConfigError) as caught:
        load_fault_config(path)
    assert expected in str(caught.value)
    assert str(path) in str(caught.value)
    assert isinstance(caught.value, SimulatorError)


def test_missing_fault_file_is_a_simulator_error(tmp_path: Path) -> None:
    with pytest.raises(FaultConfigError, match="cannot read"):
        load_fault_config(tmp_path / "nope.toml")
