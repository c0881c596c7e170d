"""Response models: the shapes published in the OpenAPI document at /docs.

Times are aware datetimes in UTC and serialise as RFC 3339 (``2026-01-01T08:00:00Z``).
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Agg = Literal["avg", "min", "max", "count", "sum", "p50", "p90", "p95", "p99"]
GroupBy = Literal["district", "device"]
Fill = Literal["none", "null", "previous", "zero"]
Status = Literal["online", "offline", "silent", "unknown"]

_T0 = "2026-03-01T08:00:00Z"


class ErrorDetail(BaseModel):
    code: str = Field(description="stable machine-readable code, e.g. unknown_kind, too_many_buckets")
    message: str = Field(description="what was wrong, for a person")


class ErrorBody(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"error": {"code": "unknown_kind", "message": "unknown kind 'x'"}}]}
    )
    error: ErrorDetail


_DEVICE_EXAMPLE: dict[str, Any] = {
    "device_id": "air-futian-00001",
    "kind": "air_station",
    "district": "futian",
    "lat": 22.541,
    "lon": 114.055,
    "installed": "2024-05-01",
    "online": True,
    "status_changed_at": _T0,
    "last_seen": _T0,
    "status": "online",
}


class Device(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [_DEVICE_EXAMPLE]})

    device_id: str
    kind: str
    district: str
    lat: float | None
    lon: float | None
    installed: date | None
    online: bool | None = Field(description="last status reported by the device; null if never reported")
    status_changed_at: datetime | None
    last_seen: datetime | None = Field(description="when the ingest last received a message from it")
    status: Status = Field(
        description="offline: the device said so; unknown: never heard from; silent: nothing for"
        " ingest.silent_after_intervals times its kind's reporting interval; online otherwise"
    )


class DataQuality(BaseModel):
    messages: int = Field(description="readings received from the device")
    seq_max: int | None = Field(description="highest sequence number seen")
    seq_gaps: int = Field(description="sequence numbers skipped (lost messages)")
    seq_duplicates: int = Field(description="sequence numbers received more than once")
    seq_reordered: int = Field(description="readings that arrived after a later one")


class DeviceDetail(Device):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    **_DEVICE_EXAMPLE,
                    "silent_after_s": 180.0,
                    "registered_at": _T0,
                    "auto_registered": False,
                    "meta": {},
                    "quality": {
                        "messages": 1440,
                        "seq_max": 1441,
                        "seq_gaps": 2,
                        "seq_duplicates": 1,
                        "seq_reordered": 0,
                    },
                }
            ]
        }
    )
    silent_after_s: float | None = Field(description="quiet time after which the device counts as silent")
    registered_at: datetime
    auto_registered: bool = Field(description="registered by ingest on its first reading")
    meta: dict[str, Any]
    quality: DataQuality


class DevicePage(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"items": [_DEVICE_EXAMPLE], "next_cursor": "ZDphcS1mdXRpYW4tMDAx"}]}
    )
    items: list[Device]
    next_cursor: str | None = Field(description="pass as cursor for the next page; null on the last page")


class MetricValue(BaseModel):
    value: float | None
    unit: str | None = Field(description="catalog unit; null for a metric the catalog no longer has")
    time: datetime | None = Field(
        description="device timestamp of the reading that carried this value: a reading may carry only"
        " some metrics, so a value can be older than the reading's `time`; null when that reading is no"
        " longer stored (retention) or the catalog no longer has the metric"
    )


class LatestReading(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "device_id": "air-futian-00001",
                    "kind": "air_station",
                    "time": _T0,
                    "received_at": "2026-03-01T08:00:01.250000Z",
                    "seq": 42,
                    "metrics": {
                        "pm25": {"value": 18.5, "unit": "ug/m3", "time": _T0},
                        "o3": {"value": 61.0, "unit": "ug/m3", "time": "2026-03-01T07:00:00Z"},
                    },
                }
            ]
        }
    )
    device_id: str
    kind: str
    time: datetime = Field(description="device timestamp of the newest reading")
    received_at: datetime = Field(description="when the ingest received the newest reading")
    seq: int | None = Field(description="sequence number of the newest reading")
    metrics: dict[str, MetricValue] = Field(
        description="newest value of each metric the device has reported, each with its own time"
    )


class LatestPage(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "kind": "smart_pole",
                    "district": "futian",
                    "since": None,
                    "next_since": "2026-03-01T07:59:55Z",
                    "devices": 120,
                    "items": [
                        {
                            "device_id": "pole-futian-00001",
                            "kind": "smart_pole",
                            "time": _T0,
                            "received_at": "2026-03-01T08:00:00.400000Z",
                            "seq": 7,
                            "metrics": {"lamp_level": {"value": 80.0, "unit": "%", "time": _T0}},
                        }
                    ],
                }
            ]
        }
    )
    kind: str
    district: str | None
    since: datetime | None = Field(description="the since asked for; null for a full snapshot")
    next_since: datetime = Field(
        description="pass as since on the next poll; it trails the server clock by a safety margin, so"
        " a poll may repeat a device already seen (treat items as upserts), never miss one"
    )
    devices: int = Field(description="devices of the filter that have a latest reading (changed or not)")
    items: list[LatestReading] = Field(description="latest reading of each device changed since `since`")


class Reading(BaseModel):
    time: datetime
    received_at: datetime
    seq: int | None
    values: dict[str, float] = Field(
        description="metric values; metrics the reading did not carry are absent"
    )


class ReadingPage(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "device_id": "air-futian-00001",
                    "kind": "air_station",
                    "from": "2026-03-01T00:00:00Z",
                    "to": "2026-03-02T00:00:00Z",
                    "units": {"pm25": "ug/m3"},
                    "items": [
                        {"time": _T0, "received_at": _T0, "seq": 42, "values": {"pm25": 18.5}},
                    ],
                    "next_cursor": "dDoxNzcyMzUyMDAwMDAwMDAw",
                }
            ]
        }
    )
    device_id: str
    kind: str
    start: datetime = Field(serialization_alias="from")
    end: datetime = Field(serialization_alias="to")
    units: dict[str, str] = Field(description="unit of every metric the page may carry")
    items: list[Reading]
    next_cursor: str | None


class AggregatePoint(BaseModel):
    time: datetime = Field(description="start of the bucket")
    value: int | float | None
    count: int = Field(description="number of readings with a value in the bucket")


class AggregateSeries(BaseModel):
    group: str | None = Field(description="district or device id with group_by; null otherwise")
    points: list[AggregatePoint]


class AggregateResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "kind": "air_station",
                    "metric": "pm25",
                    "unit": "ug/m3",
                    "agg": "avg",
                    "bucket": "1h",
                    "bucket_seconds": 3600,
                    "from": "2026-03-01T00:00:00Z",
                    "to": "2026-03-02T00:00:00Z",
                    "district": None,
                    "device_id": None,
                    "group_by": "district",
                    "fill": "none",
                    "source": "reading_air_station_1h",
                    "series": [
                        {"group": "futian", "points": [{"time": _T0, "value": 18.2, "count": 12}]},
                    ],
                }
            ]
        }
    )
    kind: str
    metric: str
    unit: str
    agg: Agg
    bucket: str
    bucket_seconds: int
    start: datetime = Field(serialization_alias="from")
    end: datetime = Field(serialization_alias="to")
    district: str | None
    device_id: str | None
    group_by: GroupBy | None
    fill: Fill = Field(description="how empty buckets are given: none leaves them out")
    source: str = Field(description="table read: the raw readings table or a continuous aggregate")
    series: list[AggregateSeries] = Field(
        description="one series per group that has data; without fill, empty buckets are left out"
    )


class BrokerHealth(BaseModel):
    reachable: bool
    host: str
    port: int
    detail: str | None = Field(description="why the broker is not reachable")


class DatabaseHealth(BaseModel):
    reachable: bool
    detail: str | None
    postgresql: str | None = Field(description="server version")
    timescaledb: str | None = Field(description="TimescaleDB extension version; null when absent")
    timescaledb_present: bool | None = Field(description="null when the database is not reachable")
    schema_version: int | None = Field(description="schema version recorded in the database")
    devices: int | None = Field(
        description="devices in the registry, counted up to the readiness threshold (min_devices of"
        " /health/ready, 1 for /health); null when the database or the schema is not there",
    )


class Versions(BaseModel):
    cityneuron: str
    contract: int = Field(description="wire contract version")
    schema_: int = Field(serialization_alias="schema", description="schema version this code expects")


class HealthResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "status": "ok",
                    "broker": {"reachable": True, "host": "127.0.0.1", "port": 1883, "detail": None},
                    "database": {
                        "reachable": True,
                        "detail": None,
                        "postgresql": "16.4",
                        "timescaledb": "2.17.2",
                        "timescaledb_present": True,
                        "schema_version": 1,
                        "devices": 1,
                    },
                    "versions": {"cityneuron": "0.1.0", "contract": 1, "schema": 1},
                    "ready": True,
                    "ready_detail": None,
                }
            ]
        }
    )
    status: Literal["ok", "unavailable"] = Field(description="ok: broker and database reachable")
    broker: BrokerHealth
    database: DatabaseHealth
    versions: Versions
    ready: bool = Field(
        description="status ok, schema initialised and the registry holds at least min_devices devices"
        " (1 for /health): what /devices lists is there. /health/ready answers 503 until then"
    )
    ready_detail: str | None = Field(description="why not ready")
