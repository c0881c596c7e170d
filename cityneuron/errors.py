"""Exceptions shared by every CityNeuron package."""

from __future__ import annotations

from enum import StrEnum


class CityNeuronError(Exception):
    """Base of every error CityNeuron raises on purpose."""


class ConfigError(CityNeuronError):
    """The configuration or the machine cannot run what was asked (missing binary, busy port)."""


class Reason(StrEnum):
    """Why a message, or part of one, went to the dead letters. Stable: stored and counted."""

    BAD_TOPIC = "bad_topic"
    UNKNOWN_DISTRICT = "unknown_district"
    UNKNOWN_KIND = "unknown_kind"
    UNKNOWN_DEVICE = "unknown_device"
    KIND_MISMATCH = "kind_mismatch"
    DISTRICT_MISMATCH = "district_mismatch"
    TOO_LARGE = "too_large"
    MALFORMED_JSON = "malformed_json"
    BAD_SHAPE = "bad_shape"
    BAD_TIMESTAMP = "bad_timestamp"
    FUTURE_TIMESTAMP = "future_timestamp"
    TOO_OLD = "too_old"
    BAD_SEQ = "bad_seq"
    UNKNOWN_METRIC = "unknown_metric"
    WRONG_TYPE = "wrong_type"
    NON_FINITE = "non_finite"
    OUT_OF_RANGE = "out_of_range"
    NO_METRICS = "no_metrics"
    STORE_FAILED = "store_failed"


class ContractError(CityNeuronError):
    """A topic or payload breaks the wire contract; ``reason`` says how."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


class MqttError(CityNeuronError):
    """An MQTT connection failed, was refused, or carried bytes that are not MQTT."""
