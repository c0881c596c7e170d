"""Shards of a city: together exactly the unsharded city, devices and messages alike."""

from __future__ import annotations

import numpy as np
import pytest

from simulator import SimulatorError, build_city
from simulator.city import City
from simulator.drivers import Drivers
from simulator.kinds import build_models
from simulator.messages import status_messages, telemetry_messages
from simulator.schedule import build_schedules

_START_MS = 1_750_000_000_000  # 2025-06-15, a fixed instant: the test does not depend on today
_WINDOW_MS = 2 * 3_600_000


def _messages(city: City) -> dict[str, set[tuple[str, bytes]]]:
    """Every telemetry message of two hours and every status, by kind."""
    models = build_models(city, Drivers(city.seed))
    schedules = build_schedules(city.tables)
    out: dict[str, set[tuple[str, bytes]]] = {}
    for name, table in city.tables.items():
        due = schedules[name].due(_START_MS, _START_MS + _WINDOW_MS)
        telemetry = telemetry_messages(models[name], schedules[name], due)
        statuses = status_messages(table, _START_MS)
        out[name] = {(m.topic, m.payload) for m in (*telemetry, *statuses)}
    return out


@pytest.mark.parametrize("shards", [2, 3])
def test_shards_together_are_the_whole_city(shards: int) -> None:
    whole = build_city("small", seed=7)
    parts = [build_city("small", seed=7, shard=(i, shards)) for i in range(shards)]
    assert sum(p.devices for p in parts) == whole.devices
    for name, table in whole.tables.items():
        ids = [set(p.tables[name].device_ids()) for p in parts]
        assert set().union(*ids) == set(table.device_ids())
        assert sum(len(s) for s in ids) == len(table)  # no device in two shards
        # Every kept row carries exactly the whole city's facts for that row.
        for part in parts:
            kept = part.tables[name]
            for column in ("district", "number", "lat", "lon", "installed_day", "serial"):
                assert np.array_equal(getattr(kept, column), getattr(table, column)[kept.city_row])
            assert kept.id_width == table.id_width
    whole_messages = _messages(whole)
    part_messages = [_messages(p) for p in parts]
    for name, expected in whole_messages.items():
        assert expected, name
        got = [m[name] for m in part_messages]
        assert set().union(*got) == expected
        assert sum(len(g) for g in got) == len(expected)


def test_a_device_is_the_same_in_every_split() -> None:
    # The same device in a 2-way and a 5-way split reports byte-identical telemetry.
    two = build_city("small", shard=(1, 2))
    five = build_city("small", shard=(3, 5))
    poles2, poles5 = two.tables["smart_pole"], five.tables["smart_pole"]
    common = sorted(set(poles2.city_row.tolist()) & set(poles5.city_row.tolist()))
    assert common
    row2 = int(np.searchsorted(poles2.city_row, common[0]))
    row5 = int(np.searchsorted(poles5.city_row, common[0]))
    assert poles2.device_id(row2) == poles5.device_id(row5)
    assert poles2.facts(row2) == poles5.facts(row5)
    m2 = build_models(two, Drivers(two.seed))["smart_pole"]
    m5 = build_models(five, Drivers(five.seed))["smart_pole"]
    t = np.array([_START_MS, _START_MS + 60_000], dtype=np.int64)
    v2 = m2.step(np.array([row2, row2]), t)
    v5 = m5.step(np.array([row5, row5]), t)
    for metric, values in v2.items():
        np.testing.assert_array_equal(values, v5[metric])


@pytest.mark.parametrize("shard", [(2, 2), (-1, 3), (0, 0)])
def test_bad_shards_are_refused(shard: tuple[int, int]) -> None:
    with pytest.raises(SimulatorError):
        build_city("small", shard=shard)
