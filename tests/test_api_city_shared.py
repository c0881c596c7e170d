"""The city views without ``at`` are shared views like the overview: many screens polling them
within api.shared_view_max_age_ms cost one render; each route and parameter set has its own;
``at`` (a historical question) is queried every time; a shared answer is the direct answer for
its own ``at``, ETag included.

Renders are counted where they cost: the scans PostgreSQL records on the reading tables
(pg_stat_user_tables, flushed when the API's connections close at the end of each server).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
from apiserver import serve_api
from psycopg import sql
from psycopg.types.json import Jsonb

from cityneuron.settings import ApiSettings, DatabaseSettings, Settings

HOUR = timedelta(hours=1)
# Long enough that nothing expires (or is rendered ahead, at half of it) during a test.
HELD_MS = 60_000
BOUND_MS = 400
CONCURRENT = 20
SUCCESSIVE = 10

AQI_STATIONS = "/city/aqi/stations"
AQI_DISTRICTS = "/city/aqi/districts"
WATER = "/city/water-quality/stations"
RAIN = "/city/rain/districts"
# Route -> the reading table its queries scan.
TABLES = {
    AQI_STATIONS: "reading_air_station",
    AQI_DISTRICTS: "reading_air_station",
    WATER: "reading_water_quality_station",
    RAIN: "reading_hydrology_station",
}


def _settings(database: DatabaseSettings, max_age_ms: int = HELD_MS) -> Settings:
    return Settings(database=database, api=ApiSettings(shared_view_max_age_ms=max_age_ms))


def _insert(conn: psycopg.Connection, table: str, device_id: str, at: datetime, **values: float) -> None:
    query = sql.SQL("INSERT INTO {table} (time, device_id, {columns}) VALUES (%s, %s, {marks})").format(
        table=sql.Identifier(table),
        columns=sql.SQL(", ").join(map(sql.Identifier, values)),
        marks=sql.SQL(", ").join(sql.Placeholder() * len(values)),
    )
    conn.execute(query, (at, device_id, *values.values()))


def _seed(url: str) -> None:
    """A few stations of each kind with the last day's readings, up to a minute ago."""
    now = datetime.now(tz=UTC)
    devices = [
        ("aq-f1", "air_station", "futian", {}),
        ("aq-b1", "air_station", "baoan", {}),
        ("wq-ba1", "water_quality_station", "baoan", {}),
        ("wq-lg1", "water_quality_station", "longgang", {"water_body": "reservoir"}),
        ("hy-ft1", "hydrology_station", "futian", {}),
        ("hy-lg1", "hydrology_station", "longgang", {}),
    ]
    with psycopg.connect(url) as conn:
        for device_id, kind, district, meta in devices:
            conn.execute(
                "INSERT INTO devices (device_id, kind, district, meta) VALUES (%s, %s, %s, %s)",
                (device_id, kind, district, Jsonb(meta)),
            )
        for k in range(24):
            at = now - timedelta(minutes=1) - k * HOUR
            air = {"pm10": 40.0, "so2": 10.0, "no2": 30.0, "co": 0.5, "o3": 100.0}
            _insert(conn, "reading_air_station", "aq-f1", at, pm25=60.0 if k % 2 else 80.0, **air)
            _insert(conn, "reading_air_station", "aq-b1", at, pm25=30.0, so2=120.0)
            _insert(conn, "reading_hydrology_station", "hy-ft1", at, rain_mm=6.0, water_level_m=1.0)
            _insert(conn, "reading_hydrology_station", "hy-lg1", at, rain_mm=0.5, water_level_m=1.0)
        water = {"ph": 7.2, "do_mgl": 5.5, "codmn_mgl": 5.0, "nh3n_mgl": 1.2, "tp_mgl": 0.25, "tn_mgl": 3.0}
        _insert(conn, "reading_water_quality_station", "wq-ba1", now - 2 * HOUR, **water)
        _insert(conn, "reading_water_quality_station", "wq-lg1", now - 3 * HOUR, **water)


def _ok(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _ask_at_once(client: httpx.Client, path: str, params: dict[str, str], n: int) -> list[httpx.Response]:
    async def ask() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=str(client.base_url), timeout=30) as concurrent:
            return list(await asyncio.gather(*(concurrent.get(path, params=params) for _ in range(n))))

    return asyncio.run(ask())


# --- renders counted by the database --------------------------------------------------------------


def _scans(url: str) -> dict[str, int]:
    """Sequential and index scans recorded so far on each reading table (and its partitions)."""
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT p.relname, coalesce(sum(coalesce(s.seq_scan, 0) + coalesce(s.idx_scan, 0)), 0)"
            " FROM pg_class p JOIN pg_stat_user_tables s ON s.relid = p.oid"
            "  OR s.relid IN (SELECT inhrelid FROM pg_inherits WHERE inhparent = p.oid)"
            " WHERE p.relname = ANY(%s) GROUP BY p.relname",
            (sorted(set(TABLES.values())),),
        ).fetchall()
    return {name: int(n) for name, n in rows}


def _scans_of_a_server(database: DatabaseSettings, ask: Callable[[httpx.Client], None]) -> dict[str, int]:
    """The scans the API made while serving ``ask``: counted once its connections are closed (a
    backend reports its statistics when it exits, not on each query)."""
    before = _scans(database.url)
    with serve_api(_settings(database)) as client:
        ask(client)
    deadline = time.monotonic() + 30
    with psycopg.connect(database.url, autocommit=True) as conn:
        while True:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND pid <> pg_backend_pid()"
            ).fetchone()
            if row is not None and row[0] == 0:
                break
            assert time.monotonic() < deadline, "the API's connections did not close"
            time.sleep(0.05)
    after = _scans(database.url)
    return {table: after.get(table, 0) - before.get(table, 0) for table in after}


def test_many_polls_without_at_cost_one_render_and_at_queries_every_time(database: DatabaseSettings) -> None:
    _seed(database.url)

    def once(client: httpx.Client) -> None:
        for path in TABLES:
            _ok(client.get(path))

    def many(client: httpx.Client) -> None:
        for path in TABLES:
            answers = _ask_at_once(client, path, {}, CONCURRENT)
            answers += [client.get(path) for _ in range(SUCCESSIVE)]
            # One render: the same bytes, evaluation time included, for every screen.
            assert {_ok(a)["at"] for a in answers} == {answers[0].json()["at"]}
            assert {a.content for a in answers} == {answers[0].content}

    def historical(client: httpx.Client) -> None:
        for path in TABLES:
            for _ in range(3):
                _ok(client.get(path, params={"at": datetime.now(tz=UTC).isoformat()}))

    one = _scans_of_a_server(database, once)
    assert all(one[table] > 0 for table in set(TABLES.values())), one
    assert _scans_of_a_server(database, many) == one
    assert _scans_of_a_server(database, historical) == {table: 3 * n for table, n in one.items()}


# --- what is shared, and with what -----------------------------------------------------------------

# Parameter sets that each change the answer: each is its own shared view.
VARIANTS: list[tuple[str, dict[str, str]]] = [
    (AQI_STATIONS, {}),
    (AQI_STATIONS, {"district": "futian"}),
    (AQI_STATIONS, {"standard": "HJ633-2012"}),
    (AQI_STATIONS, {"period": "daily"}),
    (AQI_DISTRICTS, {}),
    (AQI_DISTRICTS, {"district": "baoan", "standard": "HJ633-2012"}),
    (AQI_DISTRICTS, {"period": "daily"}),
    (WATER, {}),
    (WATER, {"district": "longgang"}),
    (RAIN, {}),
    (RAIN, {"district": "futian"}),
]


def test_each_route_and_parameter_set_is_its_own_view_equal_to_the_direct_answer(
    database: DatabaseSettings,
) -> None:
    _seed(database.url)
    with serve_api(_settings(database)) as client:
        first = {(path, tuple(params.items())): client.get(path, params=params) for path, params in VARIANTS}
        for (path, items), shared in first.items():
            params = dict(items)
            body = _ok(shared)
            # Each answers its own parameters, not another's entry.
            if "standard" in params:
                assert body["standard"] == params["standard"]
            if "period" in params:
                assert body["period"] == params["period"] and body["day"] is not None
            if "district" in params:
                assert {item["district"] for item in body["items"]} == {params["district"]}
            # Identical to the direct query for the instant the shared view was rendered at, ETag
            # included, so a screen switching between the two sees no change.
            direct = client.get(path, params={**params, "at": body["at"]})
            assert direct.content == shared.content, (path, params)
            assert direct.headers["etag"] == shared.headers["etag"]
        # Rendered at least once each, one after the other: no two share an entry.
        assert len({r.json()["at"] for r in first.values()}) == len(VARIANTS)
        # Asked again: every one still the same shared answer (none displaced another).
        for (path, items), shared in first.items():
            again = client.get(path, params=dict(items))
            assert again.content == shared.content
            # Conditional polls keep working on the shared answer.
            tagged = client.get(path, params=dict(items), headers={"If-None-Match": shared.headers["etag"]})
            assert tagged.status_code == 304 and tagged.content == b""
        assert sum(len(r.json()["items"]) for (p, _), r in first.items() if p == AQI_STATIONS) > 0


def _add_newer_readings(url: str) -> None:
    """A reading of each kind that changes every view's figures."""
    at = datetime.now(tz=UTC) - timedelta(seconds=1)
    bad_water = {"ph": 7.0, "do_mgl": 1.0, "codmn_mgl": 20.0, "nh3n_mgl": 5.0, "tp_mgl": 1.0, "tn_mgl": 9.0}
    with psycopg.connect(url) as conn:
        _insert(conn, "reading_air_station", "aq-f1", at, so2=700.0, no2=500.0)
        _insert(conn, "reading_air_station", "aq-b1", at, so2=700.0, no2=500.0)
        _insert(conn, "reading_water_quality_station", "wq-ba1", at, **bad_water)
        _insert(conn, "reading_hydrology_station", "hy-ft1", at, rain_mm=80.0, water_level_m=2.0)


def test_at_bypasses_the_shared_view_and_the_bound_holds(database: DatabaseSettings) -> None:
    _seed(database.url)
    with serve_api(_settings(database)) as client:
        shared = {path: client.get(path) for path in TABLES}
        _add_newer_readings(database.url)
        for path, before in shared.items():
            # Within the max age every poll without `at` gets the answer already made ...
            assert client.get(path).content == before.content
            # ... while a request naming the time is queried: it sees the new reading.
            now = _ok(client.get(path, params={"at": datetime.now(tz=UTC).isoformat()}))
            assert now["items"] != before.json()["items"], path
    with serve_api(_settings(database, BOUND_MS)) as client:
        old = {path: client.get(path) for path in TABLES}
        with psycopg.connect(database.url) as conn:
            _insert(conn, "reading_hydrology_station", "hy-lg1", datetime.now(tz=UTC), rain_mm=60.0)
        # Past the bound, whatever was rendered before the change has expired.
        time.sleep(BOUND_MS / 1000)
        new = client.get(RAIN, headers={"If-None-Match": old[RAIN].headers["etag"]})
        longgang = next(d for d in _ok(new)["items"] if d["district"] == "longgang")
        assert longgang["rain_1h_mm"] == 60.5 and new.headers["etag"] != old[RAIN].headers["etag"]
