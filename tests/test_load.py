"""`cityneuron load`: open-loop schedule, latency accounting, and reconciliation against a real
broker, a real ingest and a real PostgreSQL (with deliberately injected loss)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import numpy as np
import pytest

from cityneuron.cli import main
from cityneuron.errors import ConfigError
from cityneuron.settings import MqttSettings, Settings
from ingest.service import IngestService
from simulator.city import build_city
from simulator.load.cli import EXIT_FAILED, mqtt_from_url
from simulator.load.latency import LatencyHistogram
from simulator.load.payloads import LoadDevices, MessageFactory, Style
from simulator.load.shapes import LoadProfile, OpenLoopSchedule, Shape, intended_offsets

# --- schedule and latency accounting (no servers) ---------------------------------------------


def test_steady_schedule_is_evenly_spaced_and_complete() -> None:
    offsets = intended_offsets(LoadProfile(Shape.STEADY, rate_per_s=200, duration_s=3))
    assert len(offsets) == 600
    assert np.allclose(np.diff(offsets), 1 / 200, atol=1e-3)
    assert offsets[0] >= 0 and offsets[-1] < 3


def test_windows_partition_the_schedule_exactly() -> None:
    profile = LoadProfile(Shape.SPIKE, rate_per_s=100, duration_s=20, spike_factor=10, spike_s=4)
    whole = intended_offsets(profile)
    schedule = OpenLoopSchedule(profile)
    pieces = [schedule.due_until(t) for t in np.arange(0.037, 21, 0.037)]
    assert np.array_equal(np.concatenate(pieces), whole)
    # 16 s at 100/s plus 4 s at 1000/s.
    assert abs(len(whole) - (16 * 100 + 4 * 1000)) <= 2
    start, end = profile.spike_window_s
    assert (start, end) == (8.0, 12.0)
    in_spike = np.count_nonzero((whole >= start) & (whole < end))
    assert abs(in_spike - 4000) <= 2


def test_ramp_grows_linearly() -> None:
    offsets = intended_offsets(LoadProfile(Shape.RAMP, rate_per_s=100, duration_s=10))
    first_half = np.count_nonzero(offsets < 5)
    # The integral of a linear ramp: a quarter of the messages in the first half.
    assert abs(first_half - len(offsets) / 4) <= 2
    assert abs(len(offsets) - 500) <= 2


def test_latency_is_counted_from_the_intended_time_not_the_send_time() -> None:
    # A generator that stalls for 2 s at t=1 s still sends every message, but late: the
    # latency from the intended time exposes it (a closed-loop tool would report ~0).
    offsets = intended_offsets(LoadProfile(Shape.STEADY, rate_per_s=100, duration_s=4))
    actual = np.where(offsets < 1.0, offsets, np.maximum(offsets, 3.0))
    histogram = LatencyHistogram()
    histogram.record(actual - offsets)
    assert histogram.count == len(offsets)
    assert histogram.percentile(50) is not None
    assert 1.9 <= histogram.max_s <= 2.0
    p90 = histogram.percentile(90)
    assert p90 is not None and p90 > 0.5
    assert histogram.percentile(10) == pytest.approx(1e-5, rel=0.02)  # on time: below the first bucket


def test_histogram_percentiles_are_within_one_percent() -> None:
    values = np.random.default_rng(1).lognormal(-4, 1, 100_000)
    histogram = LatencyHistogram()
    histogram.record(values)
    for q in (50, 90, 99):
        assert histogram.percentile(q) == pytest.approx(np.percentile(values, q), rel=0.02)
    with pytest.raises(ValueError):
        histogram.percentile(0)


def test_messages_carry_increasing_seq_and_unique_device_times() -> None:
    devices = LoadDevices(build_city("small", seed=7), limit=5)
    factory = MessageFactory(devices, Style.ARRAY, 3, t0_ms=1_760_000_000_000)
    # 40 messages in 10 ms: each device appears 8 times within a few ms.
    messages = factory.build(np.linspace(0, 0.01, 40))
    seen: dict[int, list[tuple[int, int]]] = {}
    for message in messages:
        assert len(message.readings) == 3
        seen.setdefault(message.device, []).extend(message.readings)
        body = json.loads(message.payload)
        assert [r["seq"] for r in body] == [seq for _, seq in message.readings]
    for readings in seen.values():
        times = [ts for ts, _ in readings]
        seqs = [seq for _, seq in readings]
        assert times == sorted(set(times))
        assert seqs == list(range(len(seqs)))


def test_mqtt_url_parsing() -> None:
    base = MqttSettings()
    parsed = mqtt_from_url("mqtt://dev%40x:s3cr%2Ft@broker.example:1884", base, None)
    assert (parsed.host, parsed.port, parsed.username, parsed.password) == (
        "broker.example",
        1884,
        "dev@x",
        "s3cr/t",
    )
    with pytest.raises(ConfigError, match="--tls-ca"):
        mqtt_from_url("mqtts://broker.example", base, None)
    with pytest.raises(ConfigError, match="mqtt://"):
        mqtt_from_url("http://broker.example", base, None)


# --- real runs ------------------------------------------------------------------------------


def _args(settings: Settings, *extra: str) -> list[str]:
    return [
        "load",
        "--mqtt-url",
        f"mqtt://127.0.0.1:{settings.mqtt.port}",
        "--database-url",
        settings.database.url,
        "--devices",
        "50",
        "--settle-timeout",
        "30",
        "--json",
        *extra,
    ]


@pytest.fixture
def ingest(settings: Settings) -> Iterator[IngestService]:
    with IngestService(settings) as service:
        assert service.wait_ready(30)
        yield service


def _report(capsys: pytest.CaptureFixture[str]) -> dict:  # type: ignore[type-arg]
    return json.loads(capsys.readouterr().out)


def test_clean_run_reconciles_to_zero_loss(
    settings: Settings, ingest: IngestService, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(
        _args(settings, "--rate", "300", "--duration", "3", "--style", "array", "--readings-per-message", "4")
    )
    report = _report(capsys)
    assert status == 0, report
    rec = report["reconciliation"]
    assert report["passed"] is True
    assert rec["expected"] == report["publish"]["readings_expected"] > 3000
    assert rec["stored"] == rec["expected"] and rec["missing"] == 0 and rec["dead_lettered"] == 0
    assert rec["latency_ms"]["p50"] is not None and rec["latency_ms"]["p50"] >= 0


def test_reconciliation_detects_dropped_duplicated_and_dead_lettered_messages(
    settings: Settings, ingest: IngestService, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(
        _args(
            settings,
            "--rate",
            "200",
            "--duration",
            "2",
            "--inject-drop-every",
            "100",
            "--inject-duplicate-every",
            "70",
            "--inject-malformed-every",
            "130",
        )
    )
    report = _report(capsys)
    assert status == EXIT_FAILED
    injected = report["publish"]["injected"]
    assert injected["dropped"] == 4 and injected["duplicated"] == 5 and injected["malformed"] == 3
    rec = report["reconciliation"]
    # Dropped messages are missing (and named per device); broken ones are dead-lettered.
    assert rec["missing"] == injected["dropped"]
    assert sum(rec["missing_by_device"].values()) == injected["dropped"]
    assert rec["dead_lettered"] == injected["malformed"]
    assert rec["dead_letters_by_reason"] == {"malformed_json": injected["malformed"]}
    # Resent messages are stored once; the ingest counts them as duplicates.
    assert rec["stored"] == rec["expected"] - injected["dropped"]
    assert rec["duplicates_counted_by_ingest"] == injected["duplicated"]
    assert report["passed"] is False


def test_unreachable_rate_fails_the_run(
    settings: Settings, ingest: IngestService, capsys: pytest.CaptureFixture[str]
) -> None:
    # The gate: nothing lost, but asking for more than the generator achieves must fail.
    status = main(_args(settings, "--rate", "200", "--duration", "1", "--min-rate-fraction", "5"))
    report = _report(capsys)
    assert report["reconciliation"]["missing"] == 0
    assert status == EXIT_FAILED and report["passed"] is False
