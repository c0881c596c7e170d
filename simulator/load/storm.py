"""The reconnect-storm shape: one district's devices lose their links at once and come back.

The load's devices of the storm district publish through their own MQTT connections
(``simulator.fleet.DeviceFleet``: own client id, own credentials, own last will); the others
keep going through the gateway connections. At the storm instant every one of those links is
cut without a DISCONNECT (the broker fires the wills) and each device reconnects after its
back-off. Messages due while a device is away are handed to its client anyway: at QoS 1 the
client keeps them and sends them after the reconnect (store-and-forward), so the run must
still reconcile to zero loss; at QoS 0 they are lost, and the reconciliation says so.

Reconnect times are observed by polling the connections from the publishing loop, so their
resolution is that loop's (a few milliseconds).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType, TracebackType
from typing import Any, Self

import numpy as np
import psycopg
from numpy.typing import NDArray
from psycopg import sql

from cityneuron.catalog import KIND_BY_NAME
from cityneuron.settings import MqttSettings
from simulator.city import City, DeviceTable
from simulator.errors import SimulatorError
from simulator.fleet import DeviceConnection, DeviceFleet
from simulator.load.latency import LatencyHistogram
from simulator.load.payloads import LoadDevices, LoadMessage

log = logging.getLogger("cityneuron.load")

# Poll the storm devices' connections at most this often while some are still away.
_POLL_EVERY_S = 0.005
# A dropped link is noticed by its client within milliseconds; allow for a busy machine.
_SEEN_AWAY_WITHIN_S = 5.0


class StormError(SimulatorError):
    """The reconnect storm cannot be set up as asked."""


@dataclass(frozen=True, slots=True)
class StormPlan:
    """Which district storms, when (seconds into the run), and how long its links stay down
    at least (each device then reconnects after its own back-off with jitter)."""

    district: str
    at_s: float
    offline_s: float = 0.0
    device_key: bytes | None = field(default=None, repr=False)


def busiest_district(devices: LoadDevices) -> str:
    """The district with the most load devices (alphabetical on a tie)."""
    counts = Counter(devices.district_of(d) for d in range(len(devices)))
    return min(counts, key=lambda slug: (-counts[slug], slug))


def district_devices(devices: LoadDevices, district: str) -> list[int]:
    """Load-device indices of one district."""
    return [d for d in range(len(devices)) if devices.district_of(d) == district]


def _district_city(city: City, devices: LoadDevices, indices: list[int]) -> tuple[City, dict[int, int]]:
    """A city holding only ``indices`` (for the fleet) and each index's number in that city."""
    tables: dict[str, DeviceTable] = {}
    numbers: dict[int, int] = {}
    for name, table in city.tables.items():
        mine = sorted((int(devices.row[d]), d) for d in indices if devices.kind[d] == name)
        rows = np.array([r for r, _ in mine], dtype=np.int64)
        tables[name] = dataclasses.replace(
            table,
            district=table.district[rows],
            number=table.number[rows],
            lat=table.lat[rows],
            lon=table.lon[rows],
            installed_day=table.installed_day[rows],
            serial=table.serial[rows],
            city_row=table.city_row[rows],
        )
        for _, d in mine:
            numbers[d] = len(numbers)
    return dataclasses.replace(city, tables=MappingProxyType(tables)), numbers


@dataclass
class StormResult:
    """What the storm did; ``merge`` adds up the shares of several publishing processes."""

    district: str
    at_s: float
    devices: int  # load devices of the district (each on its own connection)
    dropped: int = 0  # seen disconnected after the drop
    reconnected: int = 0  # seen connected again
    disconnects: int = 0  # lost links counted by the fleet
    reconnects: int = 0  # successful CONNECTs after the first, counted by the fleet
    reconnect_s: list[float] = field(default_factory=list)  # drop -> back, per device
    delayed_messages: int = 0  # due while their device was away, sent after it came back
    delayed_keys: NDArray[np.int64] = field(default_factory=lambda: np.empty((0, 2), dtype=np.int64))
    delayed_latency_ms: dict[str, float | None] | None = None  # from the database, after the run

    def merge(self, other: StormResult) -> None:
        self.devices += other.devices
        self.dropped += other.dropped
        self.reconnected += other.reconnected
        self.disconnects += other.disconnects
        self.reconnects += other.reconnects
        self.reconnect_s += other.reconnect_s
        self.delayed_messages += other.delayed_messages
        self.delayed_keys = np.concatenate([self.delayed_keys, other.delayed_keys])

    def as_dict(self) -> dict[str, Any]:
        back = np.array(self.reconnect_s)
        return {
            "district": self.district,
            "at_s": round(self.at_s, 3),
            "devices": self.devices,
            "dropped": self.dropped,
            "reconnected": self.reconnected,
            "not_back": self.dropped - self.reconnected,
            "disconnects_counted_by_fleet": self.disconnects,
            "reconnects_counted_by_fleet": self.reconnects,
            "reconnect_s": {
                "p50": round(float(np.percentile(back, 50)), 3) if len(back) else None,
                "max": round(float(back.max()), 3) if len(back) else None,
            },
            "delayed_messages": self.delayed_messages,
            "delayed_readings": len(self.delayed_keys),
            "delayed_latency_source": "reading device time (= intended send time) to the ingest's"
            " receive time (received_at), delayed readings only",
            "delayed_latency_ms": self.delayed_latency_ms,
        }


class StormRun:
    """The storm district's per-device connections during one run (a context manager)."""

    def __init__(
        self,
        mqtt: MqttSettings,
        city: City,
        devices: LoadDevices,
        plan: StormPlan,
        *,
        stop: threading.Event,
        drain_timeout_s: float = 30.0,
    ) -> None:
        indices = district_devices(devices, plan.district)
        if not indices:
            raise StormError(f"the load has no device in district {plan.district!r}")
        self.plan = plan
        self._devices = devices
        sub_city, numbers = _district_city(city, devices, indices)
        self.fleet = DeviceFleet(
            mqtt, sub_city, device_key=plan.device_key, stop=stop, drain_timeout_s=drain_timeout_s
        )
        self._links: dict[int, DeviceConnection] = {d: self.fleet.devices[n] for d, n in numbers.items()}
        self._numbers = numbers
        self._dropped_at: float | None = None  # monotonic time of the drop
        self._away: dict[int, bool] = {}  # storm device -> seen disconnected yet
        self._back_s: dict[int, float] = {}
        self._next_poll = 0.0
        self._delayed: list[NDArray[np.int64]] = []
        self.delayed_messages = 0
        self._initial_connects = 0
        self._disconnects_before = 0

    def __enter__(self) -> Self:
        self.fleet.__enter__()
        self._initial_connects = self.fleet.connects
        self._disconnects_before = self.fleet.disconnects
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self._await_back(self.fleet.drain_timeout_s)
        self.fleet.__exit__(exc_type, exc, tb)

    def _await_back(self, timeout_s: float) -> None:
        """A storm late in the run: wait for its devices (and their queued messages) to return."""
        if self._dropped_at is None:
            return
        deadline = time.monotonic() + timeout_s
        while self._pending() and time.monotonic() < deadline:
            self.tick(0.0)
            time.sleep(_POLL_EVERY_S)

    def _pending(self) -> bool:
        """Devices still away; one never seen away counts only shortly after the drop."""
        assert self._dropped_at is not None
        recent = time.monotonic() - self._dropped_at < _SEEN_AWAY_WITHIN_S
        return any(d not in self._back_s and (away or recent) for d, away in self._away.items())

    def link_for(self, device: int) -> DeviceConnection | None:
        """The device's own connection, or None for a device that goes through a gateway."""
        return self._links.get(device)

    def tick(self, elapsed_s: float) -> None:
        """Drop the district when its time comes; afterwards watch the devices come back."""
        if self._dropped_at is None:
            if elapsed_s >= self.plan.at_s:
                log.info(
                    "reconnect storm: dropping %d device link(s) in %s", len(self._links), self.plan.district
                )
                self._dropped_at = time.monotonic()
                self._away = dict.fromkeys(self._links, False)
                self.fleet.drop(self._numbers.values(), self.plan.offline_s)
            return
        now = time.monotonic()
        if len(self._back_s) == len(self._away) or now < self._next_poll:
            return
        self._next_poll = now + _POLL_EVERY_S
        for device, seen_away in self._away.items():
            if device in self._back_s:
                continue
            connected = _is_connected(self._links[device])
            if not seen_away:
                self._away[device] = not connected
            elif connected:
                self._back_s[device] = now - self._dropped_at

    def note(self, message: LoadMessage) -> None:
        """Count a message of a storm device that is due while the device is away."""
        device = message.device
        if self._dropped_at is None or device not in self._away or device in self._back_s:
            return
        self.delayed_messages += 1
        self._delayed.append(message.keys())

    @property
    def outstanding(self) -> int:
        return self.fleet.outstanding

    def result(self) -> StormResult:
        keys = np.concatenate(self._delayed) if self._delayed else np.empty((0, 2), dtype=np.int64)
        return StormResult(
            district=self.plan.district,
            at_s=self.plan.at_s,
            devices=len(self._links),
            dropped=sum(self._away.values()),
            reconnected=len(self._back_s),
            disconnects=self.fleet.disconnects - self._disconnects_before,
            reconnects=self.fleet.connects - self._initial_connects,
            reconnect_s=sorted(self._back_s.values()),
            delayed_messages=self.delayed_messages,
            delayed_keys=keys,
        )


def _is_connected(link: DeviceConnection) -> bool:
    # The fleet has no public "connected" flag per device; its state enum's value says it.
    return str(link.state.value) == "connected"


def delayed_latency(url: str, devices: LoadDevices, keys: NDArray[np.int64]) -> dict[str, float | None]:
    """Device time to the ingest's receive time of the delayed readings that were stored, ms."""
    histogram = LatencyHistogram()
    try:
        with psycopg.connect(url) as conn:
            for kind in sorted({devices.kind[d] for d in keys[:, 0].tolist()}):
                mine = keys[[devices.kind[d] == kind for d in keys[:, 0].tolist()]]
                ids = [devices.ids[d] for d in mine[:, 0].tolist()]
                times = [datetime.fromtimestamp(ts / 1000, tz=UTC) for ts in mine[:, 1].tolist()]
                rows = conn.execute(
                    sql.SQL(
                        "SELECT extract(epoch FROM r.received_at - r.time) FROM {table} r"
                        " JOIN unnest(%s::text[], %s::timestamptz[]) AS k(device_id, time)"
                        " USING (device_id, time)"
                    ).format(table=sql.Identifier(KIND_BY_NAME[kind].table)),
                    (ids, times),
                ).fetchall()
                histogram.record([float(r[0]) for r in rows])
    except psycopg.Error as exc:
        raise StormError(f"cannot read the delayed readings: {exc}") from exc
    return histogram.summary_ms()
