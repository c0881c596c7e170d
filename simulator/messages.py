"""Contract v1 messages of simulated devices: retained status with registry facts, and telemetry."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from cityneuron.catalog import DISTRICTS
from cityneuron.contract import STATUS, TELEMETRY, TOPIC_ROOT, encode_reading, encode_readings, encode_status
from simulator.city import DeviceTable
from simulator.kinds import KindModel, Values
from simulator.kinds.base import IntArray
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


def device_statuses(table: DeviceTable, rows: IntArray, online: bool, ts_ms: int) -> list[Message]:
    """Retained status of devices ``rows`` (online or offline), carrying their registry facts."""
    return [
        Message(row, _topic(table, row, STATUS), encode_status(online, ts_ms, device=table.facts(row)), 0)
        for row in rows.tolist()
    ]


def _columns(model: KindModel, values: dict[str, np.ndarray]) -> list[tuple[str, list[float | int | None]]]:
    """Metric columns rounded for the wire; integers where the metric is a count or an enum.

    Values under names outside the catalog (a scenario's firmware rollout) follow the catalog's.
    """
    columns: list[tuple[str, list[float | int | None]]] = []
    extra = [name for name in values if name not in model.kind.metric_by_name]
    for name in [*model.kind.metric_names, *extra]:
        decimals = model.decimals.get(name, _DEFAULT_DECIMALS)
        array = np.round(values[name], decimals)
        if decimals == 0:
            present = ~np.isnan(array)
            ints = np.where(present, array, 0).astype(np.int64).tolist()
            column: list[float | int | None] = [
                v if p else None for v, p in zip(ints, present.tolist(), strict=True)
            ]
        else:
            column = [None if v != v else v for v in array.tolist()]  # v != v: NaN, no such sensor
        columns.append((name, column))
    return columns


def _metrics(columns: list[tuple[str, list[float | int | None]]], i: int) -> dict[str, float]:
    return {name: value for name, column in columns if (value := column[i]) is not None}


# Called with (flat rows, flat reading times, values) before the values are encoded: faults and
# scenarios change values in place or add metrics.
ValueHook = Callable[[IntArray, IntArray, Values], None]


def render_telemetry(
    model: KindModel,
    schedule: KindSchedule,
    rows: IntArray,
    slot_ms: IntArray,
    *,
    adjust: ValueHook | None = None,
    ts_shift_ms: IntArray | None = None,
) -> list[Message]:
    """Telemetry of reports (``rows`` at ``slot_ms``): one reading each, or a block of frozen
    readings. ``ts_shift_ms`` moves each report's stamps (a device clock that is off)."""
    if not len(rows):
        return []
    table = model.table
    if schedule.frozen_readings:
        frozen = schedule.frozen_times(slot_ms)
        width = frozen.shape[1]
        flat_rows = np.repeat(rows, width)
        values = model.step(flat_rows, frozen.ravel())
        if adjust is not None:
            adjust(flat_rows, frozen.ravel(), values)
        columns = _columns(model, values)
        seqs = schedule.frozen_seq(rows, frozen).ravel().tolist()
        stamped = frozen if ts_shift_ms is None else frozen + ts_shift_ms[:, None]
        times = stamped.ravel().tolist()
        out = []
        for n, row in enumerate(rows.tolist()):
            items: list[tuple[int, dict[str, float], int | None]] = [
                (times[i], _metrics(columns, i), seqs[i]) for i in range(n * width, (n + 1) * width)
            ]
            out.append(Message(row, _topic(table, row, TELEMETRY), encode_readings(items), width))
        return out
    values = model.step(rows, slot_ms)
    if adjust is not None:
        adjust(rows, slot_ms, values)
    columns = _columns(model, values)
    seqs = schedule.seq(rows, slot_ms).tolist()
    times = (slot_ms if ts_shift_ms is None else slot_ms + ts_shift_ms).tolist()
    return [
        Message(
            row, _topic(table, row, TELEMETRY), encode_reading(times[i], _metrics(columns, i), seqs[i]), 1
        )
        for i, row in enumerate(rows.tolist())
    ]


def telemetry_messages(model: KindModel, schedule: KindSchedule, due: Due) -> Iterator[Message]:
    """Telemetry for the reports in ``due``: one reading each, or a block of frozen readings."""
    yield from render_telemetry(model, schedule, due.rows, due.slot_ms)


def telemetry_topic(table: DeviceTable, row: int) -> str:
    """The telemetry topic of device ``row``."""
    return _topic(table, row, TELEMETRY)


def wire_columns(
    model: KindModel, values: dict[str, np.ndarray]
) -> list[tuple[str, list[float | int | None]]]:
    """Metric columns exactly as they go on the wire (see ``_columns``)."""
    return _columns(model, values)


def wire_metrics(columns: list[tuple[str, list[float | int | None]]], count: int) -> list[dict[str, float]]:
    """The ``m`` object of each of ``count`` readings, as on the wire."""
    return [_metrics(columns, i) for i in range(count)]
