"""Request and response models of the operations endpoints: commands and alerts.

Times are aware datetimes in UTC and serialise as RFC 3339.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

CommandState = Literal["pending", "acked", "failed", "timed_out"]
AlertState = Literal["active", "closed", "all"]

_T0 = "2026-03-01T08:00:00Z"


class CommandRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"command": "set_lamp_level", "args": {"level": 40}},
                {"command": "set_valve", "args": {"state": "close"}},
            ]
        },
    )
    command: str = Field(
        min_length=1,
        max_length=64,
        description="set_lamp_level (smart_pole, args.level 0..100) or set_valve"
        " (water_meter/gas_meter, args.state open|close); see docs/contract.md",
    )
    args: dict[str, Any] = Field(default_factory=dict, description="arguments of the command")


class CommandOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "command_id": "c-3f6c2d0a9b8e4f1a",
                    "device_id": "pole-futian-00001",
                    "command": "set_lamp_level",
                    "args": {"level": 40.0},
                    "state": "acked",
                    "created_at": _T0,
                    "expires_at": "2026-03-01T08:00:30Z",
                    "acked_at": "2026-03-01T08:00:01Z",
                    "ok": True,
                    "detail": "",
                }
            ]
        }
    )
    command_id: str
    device_id: str
    command: str
    args: dict[str, Any]
    state: CommandState = Field(
        description="pending until the device acks; acked (ok) or failed (the device refused); timed_out"
        " when no ack came before expires_at (a late ack is recorded in acked_at/ok/detail)"
    )
    created_at: datetime
    expires_at: datetime = Field(description="created_at + api.command_timeout_s")
    acked_at: datetime | None = Field(description="when the platform received the device's ack")
    ok: bool | None = Field(description="the device's answer; null without an ack")
    detail: str = Field(description="the device's detail, or why publishing failed")


class CommandPage(BaseModel):
    items: list[CommandOut]
    next_cursor: str | None = Field(description="pass as cursor for the next page; null on the last page")


class AlertOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    # A real answer: rule pm25_iaqi_over_100 of ingest/rules.toml (open above
                    # 60 ug/m3 for an hour, docs/alerts.md) on a device of the default city.
                    "id": 17,
                    "device_id": "air-baoan-00001",
                    "kind": "air_station",
                    "district": "baoan",
                    "rule": "pm25_iaqi_over_100",
                    "severity": "warning",
                    "state": "active",
                    "opened_at": _T0,
                    "closed_at": None,
                    "value": 72.4,
                    "peak_value": 96.5,
                    "close_value": None,
                    "detail": "pm25 72.4 above 60",
                }
            ]
        }
    )
    id: int
    device_id: str
    kind: str
    district: str
    rule: str
    severity: str
    state: Literal["active", "closed"]
    opened_at: datetime
    closed_at: datetime | None
    value: float | None = Field(description="value that opened the alert")
    peak_value: float | None = Field(description="most extreme value while open")
    close_value: float | None = Field(description="value that closed it")
    detail: str


class AlertPage(BaseModel):
    items: list[AlertOut]
    next_cursor: str | None = Field(description="pass as cursor for the next page; null on the last page")
