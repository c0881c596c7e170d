"""The registry COPY (sim --registry direct): the big kinds split evenly over the connections."""

from __future__ import annotations

import itertools

import psycopg
import pytest

from cityneuron.contract import now_ms
from cityneuron.settings import DatabaseSettings
from simulator import direct
from simulator.city import build_city

CITY = build_city("shenzhen", 0.002, 42)
SLOW = [t for t in CITY if t.kind.interval_s >= 3600]


def test_big_kinds_are_split_evenly_at_chunk_boundaries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(direct, "REGISTRY_CHUNK_ROWS", 1000)
    groups = direct._balanced(SLOW, 2)
    sizes = [sum(p.rows.stop - p.rows.start for p in g) for g in groups]
    total = sum(len(t) for t in SLOW)
    assert sum(sizes) == total and len(groups) == 2
    # By whole kinds the groups would be 10:7 (water + gas against electricity); here within a chunk.
    assert abs(sizes[0] - sizes[1]) <= 2 * 1000
    # Every row of every table exactly once, in parts that start on chunk boundaries.
    for table in SLOW:
        covered = sorted(
            (p.rows.start, p.rows.stop) for g in groups for p in g if p.table.kind.name == table.kind.name
        )
        assert covered[0][0] == 0 and covered[-1][1] == len(table)
        assert all(a[1] == b[0] and b[0] % 1000 == 0 for a, b in itertools.pairwise(covered))


def test_split_registry_loads_every_device_once(
    database: DatabaseSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(direct, "REGISTRY_CHUNK_ROWS", 2000)
    assert any(len(g) > 1 for g in direct._balanced(SLOW, 2))  # a kind really is split
    assert direct.load_registry(database, CITY, now_ms(), running=True) == CITY.devices
    with psycopg.connect(database.url) as conn:
        rows = conn.execute(
            "SELECT kind, count(*), count(DISTINCT device_id) FROM devices GROUP BY kind"
        ).fetchall()
        counted = conn.execute("SELECT sum(n) FROM device_state_counts").fetchone()
    assert {k: (n, distinct) for k, n, distinct in rows} == {t.kind.name: (len(t), len(t)) for t in CITY}
    assert counted is not None and counted[0] == CITY.devices
    # Loading again adds nothing (idempotent: a restart that finds the registry incomplete).
    assert direct.load_registry(database, CITY, now_ms(), running=True) == 0
