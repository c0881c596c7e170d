"""Pins wire contract v1 (docs/contract.md)."""

from __future__ import annotations

import math

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cityneuron import contract
from cityneuron.catalog import DISTRICTS, KIND_BY_NAME, KINDS
from cityneuron.errors import ContractError, Reason

EXPECTED_KINDS = {
    "smart_pole",
    "manhole_cover",
    "water_meter",
    "electricity_meter",
    "gas_meter",
    "air_station",
    "water_quality_station",
    "hydrology_station",
}
EXPECTED_DISTRICTS = {
    "futian",
    "luohu",
    "yantian",
    "nanshan",
    "baoan",
    "longgang",
    "longhua",
    "pingshan",
    "guangming",
    "dapeng",
}


def test_catalog_names_are_the_contract_ones() -> None:
    assert {k.name for k in KINDS} == EXPECTED_KINDS
    assert {d.slug for d in DISTRICTS} == EXPECTED_DISTRICTS


def test_telemetry_topic_shape() -> None:
    topic = contract.device_topic("futian", "smart_pole", "pole-00001")
    assert topic == "city/futian/smart_pole/pole-00001/telemetry"
    assert contract.parse_topic(topic) == contract.DeviceTopic(
        "futian", "smart_pole", "pole-00001", "telemetry"
    )


def test_status_and_ack_topics_parse() -> None:
    assert contract.parse_topic("city/luohu/water_meter/wm-1/status").channel == "status"
    assert contract.parse_topic("city/luohu/water_meter/wm-1/cmd/ack").channel == "cmd/ack"


@pytest.mark.parametrize(
    ("topic", "reason"),
    [
        ("city/atlantis/smart_pole/p1/telemetry", Reason.UNKNOWN_DISTRICT),
        ("city/futian/toaster/p1/telemetry", Reason.UNKNOWN_KIND),
        ("city/futian/smart_pole/P1/telemetry", Reason.BAD_TOPIC),
        ("city/futian/smart_pole/-p1/telemetry", Reason.BAD_TOPIC),
        ("city/futian/smart_pole/" + "a" * 65 + "/telemetry", Reason.BAD_TOPIC),
        ("town/futian/smart_pole/p1/telemetry", Reason.BAD_TOPIC),
        ("city/futian/smart_pole/p1/other", Reason.BAD_TOPIC),
        ("city/futian/smart_pole/p1", Reason.BAD_TOPIC),
    ],
)
def test_bad_topics_are_refused_with_reason(topic: str, reason: Reason) -> None:
    with pytest.raises(ContractError) as err:
        contract.parse_topic(topic)
    assert err.value.reason is reason


def test_device_id_limit_is_64_chars() -> None:
    assert contract.is_device_id("a" * 64)
    assert not contract.is_device_id("a" * 65)


def test_payload_epoch_ms_and_rfc3339_agree() -> None:
    a = contract.decode_reading(orjson.loads(b'{"ts": 1700000000000, "seq": 7, "m": {"pm25": 12.5}}'))
    b = contract.decode_reading({"ts": "2023-11-14T22:13:20Z", "m": {"pm25": 12.5}})
    c = contract.decode_reading({"ts": "2023-11-15T06:13:20+08:00", "m": {"pm25": 12.5}})
    assert a.ts_ms == b.ts_ms == c.ts_ms == 1_700_000_000_000
    assert a.seq == 7 and b.seq is None


def test_array_payload_is_store_and_forward() -> None:
    body = contract.encode_readings(
        [(1_700_000_000_000 + h * 3_600_000, {"total_m3": 10.0 + h}, h) for h in range(24)]
    )
    items = contract.decode_telemetry(body)
    assert len(items) == 24
    assert [contract.decode_reading(i).seq for i in items] == list(range(24))


def test_encode_roundtrip() -> None:
    payload = contract.encode_reading(1_700_000_000_123, {"pm25": 3.5}, seq=1)
    assert orjson.loads(payload) == {"ts": 1_700_000_000_123, "m": {"pm25": 3.5}, "seq": 1}


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"{not json", Reason.MALFORMED_JSON),
        # Not JSON, but told apart: the sender has a sensor fault, not a broken encoder.
        (b"NaN", Reason.NON_FINITE),
        (b'{"ts": 1, "m": {"pm25": Infinity}}', Reason.NON_FINITE),
        (b'{"ts": 1, "m": {"pm25": 1e999}}', Reason.NON_FINITE),
        (b'{"ts": 1, "m": {"pm25": NaN', Reason.MALFORMED_JSON),
        (b'"text"', Reason.BAD_SHAPE),
        (b"[]", Reason.BAD_SHAPE),
    ],
)
def test_bad_payloads(payload: bytes, reason: Reason) -> None:
    with pytest.raises(ContractError) as err:
        contract.decode_telemetry(payload)
    assert err.value.reason is reason


@pytest.mark.parametrize(
    ("item", "reason"),
    [
        ({"m": {"pm25": 1}}, Reason.BAD_TIMESTAMP),
        ({"ts": 1_700_000_000, "m": {"pm25": 1}}, Reason.BAD_TIMESTAMP),  # seconds, not ms
        ({"ts": "yesterday", "m": {"pm25": 1}}, Reason.BAD_TIMESTAMP),
        ({"ts": "2023-11-14T22:13:20", "m": {"pm25": 1}}, Reason.BAD_TIMESTAMP),  # no zone
        ({"ts": True, "m": {"pm25": 1}}, Reason.BAD_TIMESTAMP),
        ({"ts": 1_700_000_000_000, "seq": -1, "m": {"pm25": 1}}, Reason.BAD_SEQ),
        ({"ts": 1_700_000_000_000, "seq": "3", "m": {"pm25": 1}}, Reason.BAD_SEQ),
        ({"ts": 1_700_000_000_000}, Reason.BAD_SHAPE),
        ({"ts": 1_700_000_000_000, "m": {}}, Reason.NO_METRICS),
        ([1, 2], Reason.BAD_SHAPE),
    ],
)
def test_bad_readings(item: object, reason: Reason) -> None:
    with pytest.raises(ContractError) as err:
        contract.decode_reading(item)
    assert err.value.reason is reason


def test_check_metrics_keeps_the_valid_ones() -> None:
    pole = KIND_BY_NAME["smart_pole"]
    good, problems = contract.check_metrics(
        pole,
        {
            "pm25": 12.0,
            "noise_dba": 999.0,
            "bogus": 1,
            "lamp_level": "high",
            "humidity_pct": math.inf,
            "wifi_clients": True,
        },
    )
    assert good == {"pm25": 12.0}
    assert {p.metric: p.reason for p in problems} == {
        "noise_dba": Reason.OUT_OF_RANGE,
        "bogus": Reason.UNKNOWN_METRIC,
        "lamp_level": Reason.WRONG_TYPE,
        "humidity_pct": Reason.NON_FINITE,
        "wifi_clients": Reason.WRONG_TYPE,
    }


@given(st.sampled_from(KINDS), st.data())
def test_in_range_values_always_pass(kind, data) -> None:  # type: ignore[no-untyped-def]
    metrics = {
        m.name: data.draw(st.floats(min_value=m.low, max_value=m.high, allow_nan=False)) for m in kind.metrics
    }
    good, problems = contract.check_metrics(kind, metrics)
    assert problems == []
    assert good == metrics


def test_status_payload() -> None:
    status = contract.decode_status(contract.encode_status(False, 1_700_000_000_000))
    assert status.online is False and status.ts_ms == 1_700_000_000_000
    with pytest.raises(ContractError):
        contract.decode_status(b'{"online": "yes"}')
