"""Liveness (device status), live latest views, incremental polling and ETags."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import psycopg
import pytest
from apiserver import serve_api
from devicerows import add_devices
from psycopg.types.json import Jsonb

from api.queries.liveness import device_status, status_sql
from cityneuron.catalog import KIND_BY_NAME
from cityneuron.servers import MosquittoBroker
from cityneuron.settings import ApiSettings, DatabaseSettings, MqttSettings, Settings

NOW = datetime(2026, 3, 1, 8, tzinfo=UTC)


@pytest.mark.parametrize("named", [True, False])
def test_status_sql_matches_python(database: DatabaseSettings, named: bool) -> None:
    air = KIND_BY_NAME["air_station"].interval_s
    cases = [
        ("a-off", "air_station", False, NOW),
        ("a-never", "air_station", True, None),
        ("a-null-online-fresh", "air_station", None, NOW - timedelta(seconds=air)),
        ("a-silent", "air_station", True, NOW - timedelta(seconds=air * 3 + 1)),
        ("a-edge", "air_station", True, NOW - timedelta(seconds=air * 3)),
        ("x-unknown-kind", "no_such_kind", True, NOW - timedelta(days=30)),
    ]
    with psycopg.connect(database.url) as conn:
        add_devices(
            conn,
            ("device_id", "kind", "district", "online", "last_seen_at"),
            [(device_id, kind, "futian", online, seen) for device_id, kind, online, seen in cases],
        )
        frag = status_sql(3.0, as_of=NOW, named=named)
        query = psycopg.sql.SQL("SELECT a.device_id, {} FROM device_activity a ORDER BY 1").format(frag.sql)
        got = dict(conn.execute(query, frag.params).fetchall())
    want = {
        device_id: device_status(
            online=online, last_seen_at=seen, kind=kind, now=NOW, silent_after_intervals=3.0
        )
        for device_id, kind, online, seen in cases
    }
    assert got == want
    assert want["a-off"] == "offline" and want["a-never"] == "unknown" and want["a-silent"] == "silent"
    assert want["a-edge"] == "online" and want["x-unknown-kind"] == "online"


# --- GET /latest and ETags ----------------------------------------------------------------------


@pytest.fixture
def client(database: DatabaseSettings, broker: MosquittoBroker) -> Iterator[httpx.Client]:
    settings = Settings(
        mqtt=MqttSettings(port=broker.port),
        database=database.model_copy(update={"connect_timeout_s": 1.0}),
        # These tests read back each row right after writing it: no sharing window.
        api=ApiSettings(latest_max_age_ms=0),
    )
    with serve_api(settings) as c:
        yield c


def _device(conn: psycopg.Connection, device_id: str, kind: str, district: str) -> None:
    conn.execute(
        "INSERT INTO devices (device_id, kind, district, online) VALUES (%s, %s, %s, true)",
        (device_id, kind, district),
    )


def _report(conn: psycopg.Connection, device_id: str, kind: str, seq: int, metrics: dict[str, float]) -> None:
    """What the ingest does for a reading: upsert latest_reading, stamp received_at with now()."""
    conn.execute(
        "INSERT INTO latest_reading (device_id, kind, time, seq, metrics, received_at)"
        " VALUES (%s, %s, now(), %s, %s, clock_timestamp())"
        " ON CONFLICT (device_id) DO UPDATE SET time = EXCLUDED.time, seq = EXCLUDED.seq,"
        " metrics = EXCLUDED.metrics, received_at = EXCLUDED.received_at",
        (device_id, kind, seq, Jsonb(metrics)),
    )
    conn.execute(
        "UPDATE device_activity SET last_seen_at = clock_timestamp() WHERE device_id = %s", (device_id,)
    )


def _seed_poles(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        for i in range(4):
            _device(conn, f"pole-f{i}", "smart_pole", "futian")
            _report(conn, f"pole-f{i}", "smart_pole", 1, {"lamp_level": 10.0 * i, "noise_dba": 50.0})
        _device(conn, "pole-n0", "smart_pole", "nanshan")
        _report(conn, "pole-n0", "smart_pole", 1, {"lamp_level": 99.0})
        _device(conn, "pole-f9", "smart_pole", "futian")  # never reported
        _device(conn, "aq-f0", "air_station", "futian")
        _report(conn, "aq-f0", "air_station", 1, {"pm25": 12.0})


def test_latest_of_kind_in_district(client: httpx.Client, database: DatabaseSettings) -> None:
    _seed_poles(database.url)
    response = client.get("/latest", params={"kind": "smart_pole", "district": "futian"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["kind"] == "smart_pole" and body["district"] == "futian" and body["since"] is None
    assert body["devices"] == 4
    assert [i["device_id"] for i in body["items"]] == [f"pole-f{i}" for i in range(4)]
    # No stored reading dates the value (only latest_reading is seeded here).
    assert body["items"][2]["metrics"]["lamp_level"] == {"value": 20.0, "unit": "%", "time": None}
    assert body["items"][2]["metrics"]["noise_dba"]["unit"] == "dB(A)"

    city = client.get("/latest", params={"kind": "smart_pole"}).json()
    assert {i["device_id"] for i in city["items"]} == {"pole-f0", "pole-f1", "pole-f2", "pole-f3", "pole-n0"}

    empty = client.get("/latest", params={"kind": "water_meter", "district": "futian"}).json()
    assert empty["items"] == [] and empty["devices"] == 0
    assert client.get("/latest", params={"kind": "ufo"}).status_code == 400
    assert client.get("/latest", params={"kind": "smart_pole", "district": "x"}).status_code == 400
    assert client.get("/latest", params={"kind": "smart_pole", "since": "yesterday"}).status_code == 400
    assert client.get("/latest").status_code == 422


def test_latest_since_returns_only_changes(client: httpx.Client, database: DatabaseSettings) -> None:
    _seed_poles(database.url)
    params = {"kind": "smart_pole", "district": "futian"}
    first = client.get("/latest", params=params).json()
    # next_since trails the server clock, so the reports just made are inside the overlap...
    overlap = client.get("/latest", params={**params, "since": first["next_since"]}).json()
    assert {i["device_id"] for i in overlap["items"]} <= {f"pole-f{i}" for i in range(4)}
    # ...and a since after them (epoch ms accepted) selects nothing until a device reports again.
    with psycopg.connect(database.url, autocommit=True) as conn:
        now = conn.execute("SELECT clock_timestamp()").fetchone()[0]  # type: ignore[index]
        since_ms = str(int(now.timestamp() * 1000) + 1)
        quiet = client.get("/latest", params={**params, "since": since_ms}).json()
        assert quiet["items"] == [] and quiet["devices"] == 4
        _report(conn, "pole-f1", "smart_pole", 2, {"lamp_level": 55.0})
        _report(conn, "pole-n0", "smart_pole", 2, {"lamp_level": 1.0})  # other district
    changed = client.get("/latest", params={**params, "since": since_ms}).json()
    assert [i["device_id"] for i in changed["items"]] == ["pole-f1"]
    assert changed["items"][0]["seq"] == 2 and changed["items"][0]["metrics"]["lamp_level"]["value"] == 55.0
    assert datetime.fromisoformat(changed["since"]) == datetime.fromtimestamp(int(since_ms) / 1000, UTC)
    assert datetime.fromisoformat(changed["next_since"]) < datetime.fromisoformat(
        changed["items"][0]["received_at"]
    ), "next_since stays behind what was just delivered"


def test_latest_etag_answers_304_until_something_changes(
    client: httpx.Client, database: DatabaseSettings
) -> None:
    _seed_poles(database.url)
    params = {"kind": "smart_pole", "district": "futian"}
    first = client.get("/latest", params=params)
    etag = first.headers["etag"]
    assert etag.startswith('"') and first.headers["cache-control"] == "no-cache"

    again = client.get("/latest", params=params, headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b"" and again.headers["etag"] == etag
    weak = client.get("/latest", params=params, headers={"If-None-Match": f'"other", W/{etag}'})
    assert weak.status_code == 304
    assert client.get("/latest", params=params, headers={"If-None-Match": '"other"'}).status_code == 200
    # Another filter has its own tag.
    other = client.get("/latest", params={"kind": "smart_pole"}, headers={"If-None-Match": etag})
    assert other.status_code == 200 and other.headers["etag"] != etag

    with psycopg.connect(database.url, autocommit=True) as conn:
        _report(conn, "pole-n0", "smart_pole", 3, {"lamp_level": 2.0})
    # A change in another district leaves this view's tag alone...
    assert client.get("/latest", params=params, headers={"If-None-Match": etag}).status_code == 304
    with psycopg.connect(database.url, autocommit=True) as conn:
        _report(conn, "pole-f3", "smart_pole", 2, {"lamp_level": 70.0})
    # ...one in it does not.
    changed = client.get("/latest", params=params, headers={"If-None-Match": etag})
    assert changed.status_code == 200 and changed.headers["etag"] != etag
    assert {i["device_id"]: i["seq"] for i in changed.json()["items"]}["pole-f3"] == 2
    with psycopg.connect(database.url, autocommit=True) as conn:
        _device(conn, "pole-f8", "smart_pole", "futian")
        _report(conn, "pole-f8", "smart_pole", 1, {"lamp_level": 5.0})
    newcomer = client.get("/latest", params=params, headers={"If-None-Match": changed.headers["etag"]})
    assert newcomer.status_code == 200 and newcomer.json()["devices"] == 5


def test_device_latest_etag(client: httpx.Client, database: DatabaseSettings) -> None:
    _seed_poles(database.url)
    first = client.get("/devices/pole-f2/latest")
    etag = first.headers["etag"]
    assert client.get("/devices/pole-f2/latest", headers={"If-None-Match": etag}).status_code == 304
    assert client.get("/devices/pole-f1/latest", headers={"If-None-Match": etag}).status_code == 200
    with psycopg.connect(database.url, autocommit=True) as conn:
        _report(conn, "pole-f2", "smart_pole", 2, {"lamp_level": 21.0})
    fresh = client.get("/devices/pole-f2/latest", headers={"If-None-Match": etag})
    assert fresh.status_code == 200 and fresh.json()["seq"] == 2


def test_device_status_follows_last_seen(client: httpx.Client, database: DatabaseSettings) -> None:
    _seed_poles(database.url)
    pole = KIND_BY_NAME["smart_pole"].interval_s
    with psycopg.connect(database.url, autocommit=True) as conn:
        conn.execute(
            "UPDATE device_activity SET last_seen_at = now() - make_interval(secs => %s) WHERE device_id = 'pole-f0'",
            (pole * 3 + 30,),
        )
        conn.execute("UPDATE devices SET online = false WHERE device_id = 'pole-f1'")
    statuses = {
        d["device_id"]: d["status"]
        for d in client.get("/devices", params={"kind": "smart_pole", "limit": 100}).json()["items"]
    }
    assert statuses == {
        "pole-f0": "silent",
        "pole-f1": "offline",
        "pole-f2": "online",
        "pole-f3": "online",
        "pole-f9": "unknown",
        "pole-n0": "online",
    }
    silent = client.get("/devices", params={"status": "silent"}).json()["items"]
    assert [d["device_id"] for d in silent] == ["pole-f0"]
    assert client.get("/devices/pole-f0").json()["status"] == "silent"
