"""Downlink commands: devices obey ``city/{district}/{kind}/{id}/cmd`` and ack on ``.../cmd/ack``.

A ``CommandBook`` turns each accepted command into an override on the device's own timeline,
effective from one millisecond after the simulated instant it arrived: every report sent
before the command is untouched, every report at or after the ack's ``ts`` reflects it.
``CommandedModel`` wraps a kind's value model and rewrites the values of overridden devices
only, so the values stay pure functions of (seed, device, time, commands applied and when).

- ``set_lamp_level`` (smart poles): the lamp holds the commanded level, day or night, until the
  next command; its power follows the level like the scheduled lamp does.
- ``set_valve`` (water and gas meters): ``valve_state`` 0 open / 1 closed (CJ/T 188-2004 status
  word, DOMAIN.md section 2); while closed the cumulative total stops growing, and after
  reopening it grows again from where it stopped (it never jumps).
"""

from __future__ import annotations

import bisect
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, cast

import numpy as np

from cityneuron.catalog import DISTRICTS
from cityneuron.contract import (
    CMD,
    CMD_ACK,
    TOPIC_ROOT,
    ContractError,
    check_command,
    decode_command,
    device_topic,
    encode_command_ack,
    loads,
    parse_topic,
)
from simulator.city import City, DeviceTable
from simulator.errors import SimulatorError
from simulator.kinds.base import IntArray, KindModel, Values
from simulator.kinds.pole import _LAMP_RATINGS_W

log = logging.getLogger("cityneuron.simulator")

SET_LAMP_LEVEL = "set_lamp_level"
SET_VALVE = "set_valve"
VALVE_OPEN, VALVE_CLOSED = 0.0, 1.0
# A re-delivered QoS 1 command (same id) is acknowledged again but applied only once.
_REMEMBERED_IDS = 10_000


class CommandError(SimulatorError):
    """A command cannot be applied to the named device."""


@dataclass(frozen=True, slots=True)
class Ack:
    """What a device answers: publish ``payload`` on ``topic``."""

    topic: str
    payload: bytes
    command_id: str
    ok: bool


def command_subscriptions(city: City) -> list[str]:
    """Wildcard command topics covering every device of ``city``: one per (district, kind)."""
    topics = []
    for name, table in city.tables.items():
        for d in sorted(set(table.district.tolist())):
            topics.append(f"{TOPIC_ROOT}/{DISTRICTS[d].slug}/{name}/+/{CMD}")
    return topics


class _Rows:
    """Finds a device's table row from its id (``{prefix}-{district}-{number}``) without a dict
    of millions of ids: by its random-stream key, which sorts like the table rows."""

    def __init__(self, table: DeviceTable) -> None:
        self.table = table
        keys = table.key
        # City and shard tables are already in key order; only sort (a copy) when not.
        self._order: np.ndarray | None = None
        if len(keys) > 1 and not bool(np.all(keys[1:] > keys[:-1])):
            self._order = np.argsort(keys, kind="stable")
            keys = keys[self._order]
        self._keys = keys
        self._district = {d.slug: i for i, d in enumerate(DISTRICTS)}

    def row(self, device_id: str) -> int | None:
        head, _, digits = device_id.rpartition("-")
        _, _, slug = head.rpartition("-")
        district = self._district.get(slug)
        if district is None or not digits.isdigit():
            return None
        key = district * (1 << 32) + int(digits)
        at = int(np.searchsorted(self._keys, key))
        if at >= len(self._keys) or int(self._keys[at]) != key:
            return None
        row = at if self._order is None else int(self._order[at])
        return row if self.table.device_id(row) == device_id else None


class CommandBook:
    """The commands every device of ``city`` has obeyed, as per-device override timelines.

    ``clock_ms`` gives the current simulated time; ``handle`` (any thread) decodes, applies and
    answers one command message; ``apply`` records an override at an explicit instant.
    """

    def __init__(self, city: City, clock_ms: Callable[[], int]) -> None:
        self.city = city
        self._clock_ms = clock_ms
        self._lock = threading.Lock()
        # Built on a kind's first command: a 1:1 city has millions of meters.
        self._rows: dict[str, _Rows] = {}
        # kind -> row -> [(effective_ms, value)] sorted by time; mask marks rows with any.
        self._timelines: dict[str, dict[int, list[tuple[int, float]]]] = {n: {} for n in city.tables}
        self._mask: dict[str, np.ndarray] = {}
        self._seen: OrderedDict[tuple[str, str], tuple[bool, str, int]] = OrderedDict()
        self.applied = 0
        self.rejected = 0

    # --- receiving ------------------------------------------------------------------------

    def handle(self, topic: str, payload: bytes) -> Ack | None:
        """Apply the command in one ``.../cmd`` message; the ack to publish, or None when the
        topic names no device of this city (another shard's, or none at all)."""
        try:
            target = parse_topic(topic)
        except ContractError:
            return None
        if target.channel != CMD:
            return None
        rows = self._rows_of(target.kind)
        row = rows.row(target.device_id) if rows is not None else None
        if rows is None or row is None or rows.table.district_slug(row) != target.district:
            log.debug("command for unknown device on %s ignored", topic)
            return None
        ack_topic = device_topic(target.district, target.kind, target.device_id, CMD_ACK)
        try:
            command = decode_command(payload)
        except ContractError as exc:
            command_id = _command_id(payload)
            if command_id is None:
                log.warning("unreadable command on %s: %s", topic, exc)
                return None
            return self._answer(ack_topic, command_id, False, str(exc), self._clock_ms())
        key = (target.device_id, command.command_id)
        with self._lock:
            seen = self._seen.get(key)
        if seen is not None:
            return self._answer(ack_topic, command.command_id, *seen)
        effective_ms = self._clock_ms() + 1
        try:
            args = check_command(target.kind, command.command, command.args)
            self._record(target.kind, row, command.command, args, effective_ms)
        except (ContractError, CommandError) as exc:
            result = (False, str(exc), effective_ms)
        else:
            result = (True, "", effective_ms)
            log.info("%s: %s %s from %d", target.device_id, command.command, args, effective_ms)
        with self._lock:
            if result[0]:
                self.applied += 1
            else:
                self.rejected += 1
            self._seen[key] = result
            while len(self._seen) > _REMEMBERED_IDS:
                self._seen.popitem(last=False)
        return self._answer(ack_topic, command.command_id, *result)

    def _rows_of(self, kind: str) -> _Rows | None:
        table = self.city.tables.get(kind)
        if table is None:
            return None
        with self._lock:
            if kind not in self._rows:
                self._rows[kind] = _Rows(table)
            return self._rows[kind]

    @staticmethod
    def _answer(topic: str, command_id: str, ok: bool, detail: str, ts_ms: int) -> Ack:
        return Ack(topic, encode_command_ack(command_id, ok, ts_ms, detail), command_id, ok)

    def apply(self, device_id: str, command: str, args: dict[str, Any], effective_ms: int) -> None:
        """Record ``command`` for ``device_id`` from ``effective_ms`` on (CommandError if refused)."""
        for name in self.city.tables:
            rows = self._rows_of(name)
            row = rows.row(device_id) if rows is not None else None
            if row is not None:
                try:
                    checked = check_command(name, command, args)
                except ContractError as exc:
                    raise CommandError(f"{device_id}: {exc}") from exc
                self._record(name, row, command, checked, effective_ms)
                return
        raise CommandError(f"no device {device_id!r} in this city")

    def _record(self, kind: str, row: int, command: str, args: dict[str, Any], effective_ms: int) -> None:
        if command == SET_LAMP_LEVEL:
            value = float(args["level"])
        elif command == SET_VALVE:
            value = VALVE_CLOSED if args["state"] == "close" else VALVE_OPEN
        else:  # check_command knows more commands than this simulator obeys
            raise CommandError(f"the simulator does not obey {command!r}")
        with self._lock:
            if kind not in self._mask:
                self._mask[kind] = np.zeros(len(self.city.tables[kind]), dtype=bool)
            timeline = self._timelines[kind].setdefault(row, [])
            # Same instant: the later command wins (insort_right keeps arrival order).
            bisect.insort_right(timeline, (effective_ms, value), key=lambda change: change[0])
            self._mask[kind][row] = True

    # --- reading --------------------------------------------------------------------------

    def overrides(self, kind: str, rows: IntArray) -> dict[int, list[tuple[int, float]]]:
        """Copies of the timelines of those ``rows`` that have any (index into ``rows`` -> timeline)."""
        with self._lock:
            mask = self._mask.get(kind)
            if mask is None:
                return {}
            hits = np.flatnonzero(mask[rows])
            timelines = self._timelines[kind]
            return {int(i): list(timelines[int(rows[i])]) for i in hits}

    def wrap(self, models: Mapping[str, KindModel]) -> dict[str, KindModel]:
        """The models of commandable kinds wrapped to obey this book; the others unchanged."""
        return {name: _wrap(model, self) if name in _OBEYED else model for name, model in models.items()}


def _command_id(payload: bytes) -> str | None:
    try:
        body = loads(payload)
    except ContractError:
        return None
    command_id = body.get("id") if isinstance(body, dict) else None
    return command_id if isinstance(command_id, str) else None


def _value_at(timeline: list[tuple[int, float]], t_ms: int) -> float | None:
    at = bisect.bisect_right(timeline, t_ms, key=lambda change: change[0])
    return timeline[at - 1][1] if at else None


class CommandedModel(KindModel):
    """``inner``'s values with the book's overrides applied to the devices that have any."""

    def __init__(self, inner: KindModel, book: CommandBook) -> None:
        super().__init__(inner.table, inner.drivers, inner.seed)
        self.inner = inner
        self.book = book
        # Cumulative totals of the underlying model at valve switching instants: (row, ms) -> total.
        self._totals: dict[tuple[int, int], float] = {}

    def step(self, rows: IntArray, t_ms: IntArray) -> Values:
        values = self.inner.step(rows, t_ms)
        overrides = self.book.overrides(self.kind_name, rows)
        if not overrides:
            return values
        if self.kind_name == "smart_pole":
            self._lamp(values, rows, t_ms, overrides)
        else:
            self._valve(values, rows, t_ms, overrides)
        return values

    def _lamp(
        self, values: Values, rows: IntArray, t_ms: IntArray, overrides: dict[int, list[tuple[int, float]]]
    ) -> None:
        index = np.array(list(overrides), dtype=np.int64)
        levels = np.array([_value_at(overrides[int(i)], int(t_ms[i])) for i in index], dtype=np.float64)
        commanded = ~np.isnan(levels)
        hit, levels = index[commanded], levels[commanded]
        if not hit.size:
            return
        r, t = rows[hit], t_ms[hit]
        # Same rating and driver curve as SmartPoleModel: a commanded level equal to the scheduled
        # one reports the same power.
        rated = _LAMP_RATINGS_W[
            (self.inner._uniform("lamp.rated", r) * len(_LAMP_RATINGS_W)).astype(np.int64)
        ]
        power = np.where(
            levels > 0,
            rated * (0.08 + 0.92 * levels / 100.0) * (1.0 + 0.01 * self.inner._normal("lamp.p", r, t)),
            0.0,
        )
        for name, column in (("lamp_level", np.round(levels)), ("lamp_power_w", np.clip(power, 0.0, 400.0))):
            values[name] = values[name].copy()
            values[name][hit] = column

    def _valve(
        self, values: Values, rows: IntArray, t_ms: IntArray, overrides: dict[int, list[tuple[int, float]]]
    ) -> None:
        total = values["total_m3"] = values["total_m3"].copy()
        valve = values["valve_state"] = values["valve_state"].copy()
        for i, timeline in overrides.items():
            row, t = int(rows[i]), int(t_ms[i])
            missed = 0.0  # consumption that did not happen while the valve was closed
            closed_at: int | None = None
            for effective_ms, state in timeline:
                if effective_ms > t:
                    break
                if state == VALVE_CLOSED and closed_at is None:
                    closed_at = effective_ms
                elif state == VALVE_OPEN and closed_at is not None:
                    missed += self._total(row, effective_ms) - self._total(row, closed_at)
                    closed_at = None
            if closed_at is not None:
                total[i] = self._total(row, closed_at) - missed
                valve[i] = VALVE_CLOSED
            else:
                total[i] = total[i] - missed
                valve[i] = VALVE_OPEN

    def _total(self, row: int, t_ms: int) -> float:
        key = (row, t_ms)
        if key not in self._totals:
            step = self.inner.step(np.array([row], dtype=np.int64), np.array([t_ms], dtype=np.int64))
            self._totals[key] = float(step["total_m3"][0])
        return self._totals[key]


_OBEYED = {"smart_pole", "water_meter", "gas_meter"}


def _wrap(model: KindModel, book: CommandBook) -> KindModel:
    # The model's class variables (kind_name, decimals) belong to the wrapper's class.
    cls = type(
        f"Commanded{type(model).__name__}",
        (CommandedModel,),
        {"kind_name": model.kind_name, "decimals": model.decimals},
    )
    return cast(KindModel, cls(model, book))
