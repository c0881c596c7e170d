"""What the API's performance work must not break: the shared-view caches keep their staleness bound
and their ETags follow the data, several uvicorn workers serve, and values the database cannot
represent are a 400, not a 500."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import psycopg
import pytest
from apiserver import serve_api
from devicerows import add_devices
from psycopg.types.json import Jsonb

from api.viewcache import RenderedView, ViewCache
from cityneuron.servers import MosquittoBroker, free_port
from cityneuron.settings import ApiSettings, DatabaseSettings, MqttSettings, Settings

SUMMARY = "/city/districts/futian/summary"
MAX_AGE_MS = 400
STATION = "aq-futian-001"


# --- the cache on its own, with a clock the test moves ------------------------------------------


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class _Renderer:
    """Counts its renders; each answer's body is its render number."""

    def __init__(self) -> None:
        self.renders = 0

    async def __call__(self) -> RenderedView:
        self.renders += 1
        number = self.renders
        await asyncio.sleep(0.01)
        return RenderedView(str(number).encode(), f'"{number}"')


def test_view_cache_renders_once_per_period_and_shares_it() -> None:
    async def scenario() -> None:
        clock = _Clock()
        cache = ViewCache(1.0, clock=clock)
        render = _Renderer()
        # Twenty screens asking at once: one render, one answer for all.
        views = await asyncio.gather(*(cache.get("summary", render) for _ in range(20)))
        assert render.renders == 1 and {v.body for v in views} == {b"1"}
        clock.now += 0.4
        assert (await cache.get("summary", render)).body == b"1"
        assert render.renders == 1
        # Another key is another view.
        assert (await cache.get("overview", render)).body == b"2"
        # Half the bound: still the same answer, its successor rendered meanwhile ...
        clock.now += 0.2
        assert (await cache.get("summary", render)).body == b"1"
        await asyncio.sleep(0.05)
        assert render.renders == 3
        # ... and served from then on, without anyone waiting for it.
        clock.now += 0.1
        assert (await cache.get("summary", render)).body == b"3"
        # Nobody asked for a while: everything expired, the next request renders and waits.
        clock.now += 5.0
        assert (await cache.get("summary", render)).body == b"4"
        assert render.renders == 4

    asyncio.run(scenario())


def test_view_cache_renders_ahead_while_the_view_is_asked_for() -> None:
    """With ``keep_warm_s`` the successor is rendered on a timer at half the age, so a request just
    after expiry is served without waiting; a view nobody asks for any more is left to expire."""

    async def scenario() -> None:
        cache = ViewCache(0.2, keep_warm_s=0.3)
        render = _Renderer()
        assert (await cache.get("overview", render)).body == b"1"
        await asyncio.sleep(0.25)  # past the first answer's expiry: the timer rendered its successor
        before = render.renders
        assert before >= 2
        view = await cache.get("overview", render)
        # Served at once (the newest answer, or the one before while the newest still renders).
        assert render.renders == before and view.body in {str(before - 1).encode(), str(before).encode()}
        await asyncio.sleep(0.8)  # nobody asks: renders ahead stop once 0.3 s passed without a request
        stopped = render.renders
        await asyncio.sleep(0.3)
        assert render.renders == stopped
        cold = ViewCache(0.2)  # keep_warm_s 0: only a request renders
        other = _Renderer()
        await cold.get("overview", other)
        await asyncio.sleep(0.25)
        assert other.renders == 1

    asyncio.run(scenario())


def test_view_cache_spaces_out_a_view_slow_to_render() -> None:
    """With ``render_share`` 0.1, a view whose render took 0.5 s is served for 5 s, not 1 s: its
    renders take a tenth of the time at most. A quick view keeps the max age."""

    async def scenario() -> None:
        clock = _Clock()
        cache = ViewCache(1.0, clock=clock, render_share=0.1)
        renders = 0

        async def slow() -> RenderedView:
            nonlocal renders
            renders += 1
            clock.now += 0.5  # the render takes half a second of the clock
            await asyncio.sleep(0)
            return RenderedView(str(renders).encode(), f'"{renders}"')

        assert (await cache.get("overview", slow)).body == b"1"
        assert cache.age_s("overview") == pytest.approx(5.0)
        clock.now += 1.5  # 2 s after the render started: past the max age, within 10 render times
        assert (await cache.get("overview", slow)).body == b"1"
        assert renders == 1
        clock.now += 3.5  # 5.5 s: expired; the next request renders again
        assert (await cache.get("overview", slow)).body == b"2"
        quick = _Renderer()
        await cache.get("summary", quick)
        assert cache.age_s("summary") == 1.0
        with pytest.raises(ValueError, match="render_share"):
            ViewCache(1.0, render_share=1.5)

    asyncio.run(scenario())


def test_view_cache_does_not_keep_failures_and_zero_disables_it() -> None:
    async def scenario() -> None:
        cache = ViewCache(60.0, clock=_Clock())
        attempts = 0

        async def flaky() -> RenderedView:
            nonlocal attempts
            attempts += 1
            if attempts == 1:
                raise RuntimeError("database down")
            return RenderedView(b"{}", '"x"')

        with pytest.raises(RuntimeError):
            await cache.get("summary", flaky)
        assert (await cache.get("summary", flaky)).body == b"{}"
        assert attempts == 2

        uncached = ViewCache(0)
        render = _Renderer()
        bodies = [(await uncached.get("summary", render)).body for _ in range(3)]
        assert bodies == [b"1", b"2", b"3"]

    asyncio.run(scenario())


def test_view_cache_keeps_at_most_max_entries() -> None:
    async def scenario() -> None:
        clock = _Clock()
        cache = ViewCache(1.0, clock=clock, max_entries=3)
        render = _Renderer()
        for device in ("a", "b", "c"):
            await cache.get(device, render)
        # Full of fresh entries: a new key clears them rather than grow past the bound.
        assert (await cache.get("d", render)).body == b"4"
        assert (await cache.get("a", render)).body == b"5"
        # Expired entries are dropped first; fresh ones stay.
        clock.now += 0.9
        await cache.get("e", render)
        assert render.renders == 6
        clock.now += 0.2
        assert (await cache.get("e", render)).body == b"6"
        await cache.get("f", render)
        assert (await cache.get("e", render)).body == b"6"
        assert render.renders == 7

    asyncio.run(scenario())


# --- the cache behind the district summary, over HTTP -------------------------------------------


def _seed_station(url: str, pm25: float) -> None:
    now = datetime.now(tz=UTC)
    with psycopg.connect(url) as conn:
        add_devices(
            conn,
            ("device_id", "kind", "district", "lat", "lon", "online", "last_seen_at", "messages"),
            [(STATION, "air_station", "futian", 22.541, 114.055, True, now, 1)],
        )
        _set_pm25(conn, pm25, seq=1)


def _set_pm25(conn: psycopg.Connection, pm25: float, seq: int) -> None:
    now = datetime.now(tz=UTC)
    conn.execute(
        "INSERT INTO latest_reading (device_id, kind, time, seq, metrics, received_at)"
        " VALUES (%s, 'air_station', %s, %s, %s, %s) ON CONFLICT (device_id) DO UPDATE"
        " SET time = EXCLUDED.time, seq = EXCLUDED.seq, metrics = EXCLUDED.metrics,"
        " received_at = EXCLUDED.received_at",
        (STATION, now, seq, Jsonb({"pm25": pm25}), now),
    )


def _pm25_mean(response: httpx.Response) -> float:
    assert response.status_code == 200, response.text
    for item in response.json()["key_metrics"]:
        if (item["kind"], item["metric"]) == ("air_station", "pm25"):
            return float(item["mean"])
    raise AssertionError("no air_station pm25 key metric")


def test_summary_shows_a_new_reading_within_the_bound_and_its_etag_changes(
    database: DatabaseSettings, broker: MosquittoBroker
) -> None:
    _seed_station(database.url, 10.0)
    settings = Settings(
        mqtt=MqttSettings(port=broker.port),
        database=database,
        api=ApiSettings(shared_view_max_age_ms=MAX_AGE_MS),
    )
    with serve_api(settings) as client:
        first = client.get(SUMMARY)
        assert _pm25_mean(first) == 10.0
        etag = first.headers["etag"]
        assert etag.startswith('W/"')
        unchanged = client.get(SUMMARY, headers={"If-None-Match": etag})
        assert unchanged.status_code == 304 and unchanged.headers["etag"] == etag

        with psycopg.connect(database.url) as conn:
            _set_pm25(conn, 30.0, seq=2)
        # Past the bound, whatever was rendered before the change has expired.
        time.sleep(MAX_AGE_MS / 1000)
        second = client.get(SUMMARY)
        assert _pm25_mean(second) == 30.0
        assert second.headers["etag"] != etag
        assert client.get(SUMMARY, headers={"If-None-Match": etag}).status_code == 200
        assert client.get(SUMMARY, headers={"If-None-Match": second.headers["etag"]}).status_code in (
            200,
            304,
        )


def _latest_seq(response: httpx.Response) -> int:
    assert response.status_code == 200, response.text
    return int(response.json()["seq"])


def test_latest_of_a_device_is_shared_then_expires(
    database: DatabaseSettings, broker: MosquittoBroker
) -> None:
    _seed_station(database.url, 10.0)
    latest = f"/devices/{STATION}/latest"
    held = Settings(
        mqtt=MqttSettings(port=broker.port), database=database, api=ApiSettings(latest_max_age_ms=60_000)
    )
    with serve_api(held) as client:
        first = client.get(latest)
        assert _latest_seq(first) == 1
        with psycopg.connect(database.url) as conn:
            _set_pm25(conn, 30.0, seq=2)
        # Within the bound every poll gets the answer already made, validator included.
        assert _latest_seq(client.get(latest)) == 1
        assert client.get(latest, headers={"If-None-Match": first.headers["etag"]}).status_code == 304
        # An unknown device is not cached as anything: still a 404 with its reason.
        missing = client.get("/devices/aq-nowhere/latest")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "device_not_found"

    bounded = held.model_copy(update={"api": ApiSettings(latest_max_age_ms=MAX_AGE_MS)})
    with serve_api(bounded) as client:
        before = client.get(latest)
        assert _latest_seq(before) == 2
        with psycopg.connect(database.url) as conn:
            _set_pm25(conn, 40.0, seq=3)
        time.sleep(MAX_AGE_MS / 1000)
        after = client.get(latest, headers={"If-None-Match": before.headers["etag"]})
        assert _latest_seq(after) == 3 and after.headers["etag"] != before.headers["etag"]


def test_latest_of_a_district_reused_only_while_nothing_changed(
    database: DatabaseSettings, broker: MosquittoBroker
) -> None:
    _seed_station(database.url, 10.0)
    settings = Settings(mqtt=MqttSettings(port=broker.port), database=database)
    params = {"kind": "air_station", "district": "futian"}

    def pm25(response: httpx.Response) -> float:
        assert response.status_code == 200, response.text
        (item,) = response.json()["items"]
        return float(item["metrics"]["pm25"]["value"])

    with serve_api(settings) as client:
        first = client.get("/latest", params=params)
        again = client.get("/latest", params=params)
        assert pm25(first) == pm25(again) == 10.0
        assert first.headers["etag"] == again.headers["etag"]
        with psycopg.connect(database.url) as conn:
            _set_pm25(conn, 30.0, seq=2)
        changed = client.get("/latest", params=params)
        assert pm25(changed) == 30.0
        assert changed.headers["etag"] != first.headers["etag"]


# --- several workers ------------------------------------------------------------------------------


def _worker_pids(parent: int) -> list[int]:
    """Children of ``parent`` started by multiprocessing's spawn (uvicorn's worker processes)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == parent and b"spawn_main" in cmdline:
            found.append(int(entry.name))
    return found


def test_two_uvicorn_workers_answer_health(database: DatabaseSettings, broker: MosquittoBroker) -> None:
    settings = Settings(
        mqtt=MqttSettings(port=broker.port),
        database=database,
        api=ApiSettings(port=free_port(), workers=2),
    )
    code = (
        "import sys; from api.main import run; from cityneuron.settings import Settings;"
        " run(Settings.model_validate_json(sys.argv[1]))"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", code, settings.model_dump_json()],
        cwd=Path(__file__).resolve().parent.parent,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        health = None
        while time.monotonic() < deadline and process.poll() is None:
            try:
                health = httpx.get(f"http://127.0.0.1:{settings.api.port}/health", timeout=5)
                if health.status_code == 200 and len(_worker_pids(process.pid)) == 2:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        assert process.poll() is None, process.stderr.read().decode() if process.stderr else ""
        assert health is not None and health.status_code == 200, health.text if health else "no answer"
        assert health.json()["database"]["reachable"] is True
        assert len(_worker_pids(process.pid)) == 2
        # Every answer comes from one of them, whichever it is.
        for _ in range(6):
            assert (
                httpx.get(f"http://127.0.0.1:{settings.api.port}/devices?limit=1", timeout=5).status_code
                == 200
            )
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# --- values out of the database's range ----------------------------------------------------------


def test_values_out_of_range_are_400(database: DatabaseSettings, broker: MosquittoBroker) -> None:
    settings = Settings(mqtt=MqttSettings(port=broker.port), database=database)
    with serve_api(settings) as client:
        # date_bin puts the first bucket of year 1 before year 1: PostgreSQL's DataError.
        response = client.get(
            "/aggregates",
            params={
                "kind": "air_station",
                "metric": "pm25",
                "bucket": "3660d",
                "from": "0001-01-01T00:00:00Z",
                "to": "9999-12-31T00:00:00Z",
                "fill": "zero",
            },
        )
        assert response.status_code == 400, response.text
        assert response.json()["error"]["code"] == "value_out_of_range"
        assert "out of" in response.json()["error"]["message"]
        # A 24 h window ending at 0001-01-01: Python's date arithmetic overflows.
        response = client.get("/city/aqi/stations", params={"at": "0001-01-01T00:00:00Z"})
        assert response.status_code == 400, response.text
        assert response.json()["error"]["code"] == "value_out_of_range"
