"""Contract v1 messages of simulated devices: retained status with registry facts, and telemetry."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from cityneuron.catalog import DISTRICTS
from cityneuron.contract import STATUS, TELEMETRY, TOPIC_ROOT, encode_reading, encode_readings, encode_status
from simulator.city import DeviceTable
from simulator.kinds import KindModel
from simulator.schedule import Due, KindSchedule

_DEFAULT_DECIMALS = 2


@dataclass(frozen=True, slots=True)
class Message:
    """One MQTT message of a device: ``row`` is its table row (it picks the gateway)."""

    row: int
    topic: str
    payload: bytes
    readings: int


def _topic(table: DeviceTable, row: int, channel: str) -> str:
    slug = DISTRICTS[int(table.district[row])].slug
    return f"{TOPIC_ROOT}/{slug}/{table.kind.name}/{table.device_id(row)}/{channel}"


def status_messages(table: DeviceTable, ts_ms: int) -> Iterator[Message]:
    """Retained "online" status of every device, carrying its registry facts."""
    for row in range(len(table)):
        yield Message(row, _topic(table, row, STATUS), encode_status(True, ts_ms, device=table.facts(row)), 0)


def _columns(model: KindModel, values: dict[str, np.ndarray]) -> list[tuple[str, list[float | int | None]]]:
    """Metric columns rounded for the wire; integers where the metric is a count or an enum."""
    columns: list[tuple[str, list[float | int | None]]] = []
    for metric in model.kind.metrics:
        decimals = model.decimals.get(metric.name, _DEFAULT_DECIMALS)
        array = np.round(values[metric.name], decimals)
        if decimals == 0:
            present = ~np.isnan(array)
            ints = np.where(present, array, 0).astype(np.int64).tolist()
            column: list[float | int | None] = [
                v if p else None for v, p in zip(ints, present.tolist(), strict=True)
            ]
        else:
            column = [None if v != v else v for v in array.tolist()]  # v != v: NaN, no such sensor
        columns.append((metric.name, column))
    return columns


def _metrics(columns: list[tuple[str, list[float | int | None]]], i: int) -> dict[str, float]:
    return {name: value for name, column in columns if (value := column[i]) is not None}


def telemetry_messages(model: KindModel, schedule: KindSchedule, due: Due) -> Iterator[Message]:
    """Telemetry for the reports in ``due``: one reading each, or a block of frozen readings."""
    if not len(due):
        return
    table = model.table
    if schedule.frozen_readings:
        frozen = schedule.frozen_times(due.slot_ms)
        width = frozen.shape[1]
        flat_rows = np.repeat(due.rows, width)
        columns = _columns(model, model.step(flat_rows, frozen.ravel()))
        seqs = schedule.frozen_seq(due.rows, frozen).ravel().tolist()
        times = frozen.ravel().tolist()
        for n, row in enumerate(due.rows.tolist()):
            items: list[tuple[int, dict[str, float], int | None]] = [
                (times[i], _metrics(columns, i), seqs[i]) for i in range(n * width, (n + 1) * width)
            ]
            yield Message(row, _topic(table, row, TELEMETRY), encode_readings(items), width)
        return
    columns = _columns(model, model.step(due.rows, due.slot_ms))
    seqs = schedule.seq(due.rows, due.slot_ms).tolist()
    times = due.slot_ms.tolist()
    for i, row in enumerate(due.rows.tolist()):
        payload = encode_reading(times[i], _metrics(columns, i), seqs[i])
        yield Message(row, _topic(table, row, TELEMETRY), payload, 1)
