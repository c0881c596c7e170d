"""The load's devices and messages: the simulator's city and values, stamped with per-device seq.

Every message carries the device time of its intended send (the newest reading of a
store-and-forward array is stamped exactly then, older ones 1 ms apart before it), so the
stored rows tell how late each reading arrived, and (device, time) identifies it exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import numpy as np
from numpy.typing import NDArray

from cityneuron.contract import encode_reading, encode_readings
from simulator.city import City
from simulator.drivers import Drivers
from simulator.kinds import KindModel, build_models


class Style(StrEnum):
    SINGLE = "single"  # one reading per message
    ARRAY = "array"  # store-and-forward: several readings of one device per message


@dataclass(frozen=True, slots=True)
class LoadMessage:
    device: int  # index into LoadDevices
    topic: str
    payload: bytes
    readings: tuple[tuple[int, int], ...]  # (ts_ms, seq) of each reading
    intended_s: float  # offset into the run


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
    """Builds the messages of a window of intended send offsets, round robin over the devices."""

    def __init__(self, devices: LoadDevices, style: Style, readings_per_message: int, t0_ms: int) -> None:
        if readings_per_message < 1 or (style is Style.SINGLE and readings_per_message != 1):
            raise ValueError("single style sends exactly one reading per message")
        self.devices = devices
        self.style = style
        self.width = readings_per_message
        self.t0_ms = t0_ms
        self.built = 0

    def build(self, offsets_s: NDArray[np.float64]) -> list[LoadMessage]:
        count = len(offsets_s)
        if not count:
            return []
        devices = self.devices
        device = (self.built + np.arange(count)) % len(devices)
        self.built += count
        intended_ms = self.t0_ms + np.round(offsets_s * 1000).astype(np.int64)
        width = self.width
        stamps: list[NDArray[np.int64]] = []
        seqs: list[NDArray[np.int64]] = []
        # Sequential per device (a device may appear twice in one window at high rates).
        for i in range(count):
            d = int(device[i])
            newest = max(int(intended_ms[i]), int(devices.last_ts_ms[d]) + width)
            devices.last_ts_ms[d] = newest
            stamps.append(np.arange(newest - width + 1, newest + 1, dtype=np.int64))
            seqs.append(np.arange(devices.next_seq[d], devices.next_seq[d] + width, dtype=np.int64))
            devices.next_seq[d] += width
        values = self._values(device, stamps)
        messages: list[LoadMessage] = []
        for i in range(count):
            d = int(device[i])
            metrics = values[i]
            readings = tuple(zip(stamps[i].tolist(), seqs[i].tolist(), strict=True))
            if self.style is Style.SINGLE:
                ts, seq = readings[0]
                payload = encode_reading(ts, metrics[0], seq)
            else:
                payload = encode_readings(
                    [(ts, m, seq) for (ts, seq), m in zip(readings, metrics, strict=True)]
                )
            messages.append(LoadMessage(d, devices.topics[d], payload, readings, float(offsets_s[i])))
        return messages

    def _values(
        self, device: NDArray[np.int64], stamps: list[NDArray[np.int64]]
    ) -> list[list[dict[str, float]]]:
        """Metric values for every reading, computed per kind in one vectorised step."""
        devices = self.devices
        out: list[list[dict[str, float]]] = [[] for _ in range(len(device))]
        by_kind: dict[str, list[int]] = {}
        for i, d in enumerate(device.tolist()):
            by_kind.setdefault(devices.kind[d], []).append(i)
        for kind, positions in by_kind.items():
            model = devices.models[kind]
            rows = np.repeat(devices.row[device[positions]], self.width)
            times = np.concatenate([stamps[i] for i in positions])
            values = model.step(rows, times)
            names = model.kind.metric_names
            columns = [np.round(values[n], 3).tolist() for n in names]
            flat = 0
            for i in positions:
                for _ in range(self.width):
                    out[i].append(
                        {n: c[flat] for n, c in zip(names, columns, strict=True) if c[flat] == c[flat]}
                    )
                    flat += 1
        return out
