"""The load's devices and messages: the simulator's city and values, stamped with per-device seq.

Every message carries the device time of its intended send (the newest reading of a
store-and-forward array is stamped exactly then, older ones 1 ms apart before it), so the
stored rows tell how late each reading arrived, and (device, time) identifies it exactly.

A gateway batch carries one reading of each of up to ``readings_per_message`` devices of one
(district, kind): the devices of each (district, kind) are cut into fixed groups, one per
simulated gateway, and the messages go round robin over the groups (the last group of a
(district, kind) may be smaller).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import numpy as np
from numpy.typing import NDArray

from cityneuron.contract import (
    MAX_BATCH_READINGS,
    batch_topic,
    encode_batch,
    encode_reading,
    encode_readings,
)
from simulator.city import City
from simulator.drivers import Drivers
from simulator.kinds import KindModel, build_models


class Style(StrEnum):
    SINGLE = "single"  # one reading per message
    ARRAY = "array"  # store-and-forward: several readings of one device per message
    BATCH = "batch"  # gateway batch: one reading of each of several devices of one (district, kind)


@dataclass(frozen=True, slots=True)
class LoadMessage:
    device: int  # index into LoadDevices (a batch's first device: it picks the gateway)
    topic: str
    payload: bytes
    readings: tuple[tuple[int, int], ...]  # (ts_ms, seq) of each reading
    intended_s: float  # offset into the run
    # The device of each reading, when they are not all ``device`` (gateway batches).
    reading_devices: tuple[int, ...] | None = None

    def keys(self) -> NDArray[np.int64]:
        """(device, ts_ms) of each reading: what the database should hold once it is stored."""
        devices = self.reading_devices or (self.device,) * len(self.readings)
        return np.array(
            [(d, ts) for d, (ts, _) in zip(devices, self.readings, strict=True)], dtype=np.int64
        ).reshape(-1, 2)


class LoadDevices:
    """A flat, deterministic list of the city's devices with their models and seq counters."""

    def __init__(self, city: City, limit: int | None = None) -> None:
        models = build_models(city, Drivers(city.seed))
        kinds: list[str] = []
        rows: list[int] = []
        for name, table in city.tables.items():
            kinds += [name] * len(table)
            rows += list(range(len(table)))
        order = np.random.default_rng(city.seed).permutation(len(rows))
        if limit is not None:
            if limit < 1:
                raise ValueError("the load needs at least one device")
            order = order[:limit]
        self.models: dict[str, KindModel] = models
        self.kind: list[str] = [kinds[i] for i in order]
        self.row = np.array([rows[i] for i in order], dtype=np.int64)
        self.ids: list[str] = [
            models[k].table.device_id(int(r)) for k, r in zip(self.kind, self.row, strict=True)
        ]
        self.topics: list[str] = [
            f"city/{models[k].table.district_slug(int(r))}/{k}/{device_id}/telemetry"
            for k, r, device_id in zip(self.kind, self.row, self.ids, strict=True)
        ]
        self.next_seq = np.zeros(len(self.ids), dtype=np.int64)
        self.last_ts_ms = np.zeros(len(self.ids), dtype=np.int64)

    def __len__(self) -> int:
        return len(self.ids)

    def district_of(self, device: int) -> str:
        return self.topics[device].split("/")[1]


class MessageFactory:
    """Builds the messages of a window of intended send offsets, round robin over the devices
    (over groups of devices for gateway batches)."""

    def __init__(self, devices: LoadDevices, style: Style, readings_per_message: int, t0_ms: int) -> None:
        if readings_per_message < 1 or (style is Style.SINGLE and readings_per_message != 1):
            raise ValueError("single style sends exactly one reading per message")
        if style is Style.BATCH and readings_per_message > MAX_BATCH_READINGS:
            raise ValueError(f"a gateway batch holds at most {MAX_BATCH_READINGS} readings")
        self.devices = devices
        self.style = style
        self.width = readings_per_message
        self.t0_ms = t0_ms
        self.built = 0
        # What one message carries: the devices, and how many readings of each.
        if style is Style.BATCH:
            self.groups = _batch_groups(devices, readings_per_message)
            self.per_device = 1
            self.group_topics = [
                batch_topic(devices.district_of(g[0]), devices.kind[g[0]]) for g in self.groups
            ]
        else:
            self.groups = [(d,) for d in range(len(devices))]
            self.per_device = readings_per_message
            self.group_topics = devices.topics

    def build(self, offsets_s: NDArray[np.float64]) -> list[LoadMessage]:
        count = len(offsets_s)
        if not count:
            return []
        devices = self.devices
        slot = ((self.built + np.arange(count)) % len(self.groups)).tolist()
        self.built += count
        intended_ms = (self.t0_ms + np.round(offsets_s * 1000).astype(np.int64)).tolist()
        width = self.per_device
        # Per message: (device, ts_ms, seq) of each reading, sequential per device (a device may
        # appear twice in one window at high rates).
        plans: list[list[tuple[int, int, int]]] = []
        for i in range(count):
            plan: list[tuple[int, int, int]] = []
            for d in self.groups[slot[i]]:
                newest = max(intended_ms[i], int(devices.last_ts_ms[d]) + width)
                devices.last_ts_ms[d] = newest
                first_seq = int(devices.next_seq[d])
                devices.next_seq[d] += width
                plan += [(d, newest - width + 1 + k, first_seq + k) for k in range(width)]
            plans.append(plan)
        flat = [entry for plan in plans for entry in plan]
        values = self._values(
            np.fromiter((d for d, _, _ in flat), dtype=np.int64, count=len(flat)),
            np.fromiter((ts for _, ts, _ in flat), dtype=np.int64, count=len(flat)),
        )
        messages: list[LoadMessage] = []
        at = 0
        for i, plan in enumerate(plans):
            metrics = values[at : at + len(plan)]
            at += len(plan)
            readings = tuple((ts, seq) for _, ts, seq in plan)
            first = plan[0][0]
            reading_devices = None
            if self.style is Style.SINGLE:
                ts, seq = readings[0]
                payload = encode_reading(ts, metrics[0], seq)
            elif self.style is Style.ARRAY:
                payload = encode_readings(
                    [(ts, m, seq) for (ts, seq), m in zip(readings, metrics, strict=True)]
                )
            else:
                payload = encode_batch(
                    [(devices.ids[d], ts, m, seq) for (d, ts, seq), m in zip(plan, metrics, strict=True)]
                )
                reading_devices = tuple(d for d, _, _ in plan)
            messages.append(
                LoadMessage(
                    first, self.group_topics[slot[i]], payload, readings, float(offsets_s[i]), reading_devices
                )
            )
        return messages

    def _values(self, device: NDArray[np.int64], times: NDArray[np.int64]) -> list[dict[str, float]]:
        """Metric values of every reading (device and time per reading), one vectorised step per kind."""
        devices = self.devices
        out: list[dict[str, float]] = [{} for _ in range(len(device))]
        by_kind: dict[str, list[int]] = {}
        for i, d in enumerate(device.tolist()):
            by_kind.setdefault(devices.kind[d], []).append(i)
        for kind, positions in by_kind.items():
            model = devices.models[kind]
            values = model.step(devices.row[device[positions]], times[positions])
            names = model.kind.metric_names
            columns = [np.round(values[n], 3).tolist() for n in names]
            for flat, i in enumerate(positions):
                out[i] = {n: c[flat] for n, c in zip(names, columns, strict=True) if c[flat] == c[flat]}
        return out


def _batch_groups(devices: LoadDevices, size: int) -> list[tuple[int, ...]]:
    """The devices cut into groups of at most ``size`` of one (district, kind) each, in device order."""
    by_place: dict[tuple[str, str], list[int]] = {}
    for d in range(len(devices)):
        by_place.setdefault((devices.district_of(d), devices.kind[d]), []).append(d)
    return [
        tuple(members[i : i + size]) for members in by_place.values() for i in range(0, len(members), size)
    ]
