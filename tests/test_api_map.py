"""The catalog and the map feeds: /catalog, /map/positions, /map/states (since=), /map/density."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import psycopg
import pytest
from apiserver import serve_api

from api.live.statuslog import StatusLog
from cityneuron.catalog import DISTRICTS, KINDS
from cityneuron.servers import MosquittoBroker
from cityneuron.settings import ApiSettings, DatabaseSettings, MqttSettings, Settings


@pytest.fixture
def client(database: DatabaseSettings, broker: MosquittoBroker) -> Iterator[httpx.Client]:
    settings = Settings(
        mqtt=MqttSettings(port=broker.port),
        database=database,
        # No sharing window: each request sees the rows the test just wrote.
        api=ApiSettings(shared_view_max_age_ms=0),
    )
    with serve_api(settings) as c:
        yield c


def _seed(url: str) -> None:
    rows = [
        ("pole-a", "smart_pole", "futian", 22.54123, 114.05511, True, "now()"),
        ("pole-b", "smart_pole", "nanshan", 22.53, 113.93, False, "now()"),
        ("aq-c", "air_station", "futian", 22.5411, 114.0551, True, "now() - interval '1 day'"),
        ("wm-d", "water_meter", "baoan", 22.655, 113.884, None, "NULL"),
        ("odd-e", "weather_balloon", "futian", None, None, True, "now()"),
    ]
    with psycopg.connect(url, autocommit=True) as conn:
        for device_id, kind, district, lat, lon, online, seen in rows:
            conn.execute(
                "INSERT INTO devices (device_id, kind, district, lat, lon, online) VALUES (%s, %s, %s, %s, %s, %s)",
                (device_id, kind, district, lat, lon, online),
            )
            conn.execute(
                f"UPDATE device_activity SET last_seen_at = {seen} WHERE device_id = %s", (device_id,)
            )


def test_catalog_is_the_catalog(client: httpx.Client) -> None:
    response = client.get("/catalog")
    assert response.status_code == 200
    body = response.json()
    assert [d["slug"] for d in body["districts"]] == [d.slug for d in DISTRICTS]
    futian = body["districts"][0]
    assert (futian["name_zh"], futian["name_en"], futian["lat"]) == ("福田区", "Futian", 22.541)
    pole = next(k for k in body["kinds"] if k["name"] == "smart_pole")
    assert pole["interval_s"] == KINDS[0].interval_s
    assert pole["commands"] == ["set_lamp_level"]
    # Every kind has both short labels: the screen names kinds from these alone.
    assert all(k["name_en"] and k["name_zh"] for k in body["kinds"])
    assert (pole["name_en"], pole["name_zh"]) == ("Smart pole", "智能杆")
    pm25 = next(m for m in pole["metrics"] if m["name"] == "pm25")
    assert (pm25["unit"], pm25["low"], pm25["high"]) == ("ug/m3", 0.0, 1000.0)
    assert body["aqi_categories"][0]["colour"] == "#00E400"
    assert [w["key"] for w in body["rain_warnings"]] == ["none", "blue", "yellow", "orange", "red"]
    assert body["water_classes"][-1] == "劣V"
    again = client.get("/catalog", headers={"If-None-Match": response.headers["etag"]})
    assert again.status_code == 304 and again.content == b""


def test_positions_are_columns_with_an_etag(client: httpx.Client, database: DatabaseSettings) -> None:
    _seed(database.url)
    response = client.get("/map/positions")
    assert response.status_code == 200
    body = response.json()
    assert body["id"] == ["aq-c", "pole-a", "pole-b", "wm-d"]
    assert (body["count"], body["unplaced"], body["scale"]) == (4, 1, 100_000)
    assert body["lat"][1] == 2_254_123 and body["lon"][1] == 11_405_511
    assert [body["kinds"][k] for k in body["kind"]] == [
        "air_station",
        "smart_pole",
        "smart_pole",
        "water_meter",
    ]
    assert [body["districts"][d] for d in body["district"]] == ["futian", "futian", "nanshan", "baoan"]
    etag = response.headers["etag"]
    assert client.get("/map/positions", headers={"If-None-Match": etag}).status_code == 304
    only = client.get("/map/positions", params={"kind": "smart_pole", "bbox": "113.9,22.5,114.0,22.6"}).json()
    assert only["id"] == ["pole-b"]
    with psycopg.connect(database.url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO devices (device_id, kind, district, lat, lon) VALUES ('pole-z', 'smart_pole', 'luohu', 22.5, 114.1)"
        )
    changed = client.get("/map/positions", headers={"If-None-Match": etag})
    assert changed.status_code == 200 and "pole-z" in changed.json()["id"]


def test_positions_are_gzipped_when_large(client: httpx.Client, database: DatabaseSettings) -> None:
    with psycopg.connect(database.url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO devices (device_id, kind, district, lat, lon)"
            " SELECT 'pole-' || lpad(i::text, 5, '0'), 'smart_pole', 'futian', 22.5 + i * 1e-5, 114.0"
            " FROM generate_series(1, 2000) i"
        )
    raw = client.get("/map/positions", headers={"Accept-Encoding": "gzip"})
    assert raw.headers["content-encoding"] == "gzip"
    assert raw.json()["count"] == 2000  # httpx decodes it
    assert int(raw.headers["content-length"]) * 3 < len(raw.content)


def test_states_reset_then_only_changes(client: httpx.Client, database: DatabaseSettings) -> None:
    _seed(database.url)
    first = client.get("/map/states")
    body = first.json()
    assert body["reset"] is True and body["devices"] == 5 and body["default_status"] == "online"
    assert dict(zip(body["ids"], body["status"], strict=True)) == {
        "pole-b": "offline",
        "aq-c": "silent",
        "wm-d": "unknown",
    }
    version = body["version"]
    unchanged = client.get("/map/states", params={"since": version})
    assert unchanged.json() == {**body, "reset": False, "ids": [], "status": []}
    assert (
        client.get(
            "/map/states", params={"since": version}, headers={"If-None-Match": unchanged.headers["etag"]}
        ).status_code
        == 304
    )
    with psycopg.connect(database.url, autocommit=True) as conn:
        conn.execute("UPDATE devices SET online = true WHERE device_id = 'pole-b'")
        conn.execute("UPDATE device_activity SET last_seen_at = now() WHERE device_id = 'pole-b'")
        conn.execute("UPDATE devices SET online = false WHERE device_id = 'pole-a'")
    changed = client.get(
        "/map/states", params={"since": version}, headers={"If-None-Match": unchanged.headers["etag"]}
    )
    assert changed.status_code == 200
    delta = changed.json()
    assert delta["reset"] is False and delta["version"] > version
    assert dict(zip(delta["ids"], delta["status"], strict=True)) == {"pole-a": "offline", "pole-b": "online"}
    # A version from before anything this process kept: everything again.
    assert client.get("/map/states", params={"since": 1}).json()["reset"] is True


def test_states_of_one_view(client: httpx.Client, database: DatabaseSettings) -> None:
    _seed(database.url)
    # Futian's corner: pole-a (online) and aq-c (silent); pole-b and wm-d lie outside.
    view = {"bbox": "114.0,22.5,114.1,22.6"}
    first = client.get("/map/states", params=view)
    assert first.status_code == 200
    body = first.json()
    assert (body["reset"], body["version"], body["devices"]) == (True, 0, 2)
    assert dict(zip(body["ids"], body["status"], strict=True)) == {"aq-c": "silent"}
    etag = first.headers["etag"]
    assert client.get("/map/states", params=view, headers={"If-None-Match": etag}).status_code == 304
    with psycopg.connect(database.url, autocommit=True) as conn:
        conn.execute("UPDATE devices SET online = false WHERE device_id = 'pole-a'")
        conn.execute("UPDATE devices SET online = false WHERE device_id = 'pole-b'")  # not in view
    changed = client.get("/map/states", params=view, headers={"If-None-Match": etag})
    assert changed.status_code == 200
    assert dict(zip(changed.json()["ids"], changed.json()["status"], strict=True)) == {
        "aq-c": "silent",
        "pole-a": "offline",
    }
    refused = client.get("/map/states", params={**view, "since": 3})
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "invalid_query"
    assert client.get("/map/states", params={"bbox": "1,2,3"}).status_code == 400


def test_status_log_merges_changes_and_forgets_old_versions() -> None:
    now = [1000.0]
    log = StatusLog(keep=2, clock=lambda: now[0])
    log.record({"a": "offline"}, 3, "r1")
    v0 = log.since(None).version
    now[0] += 1
    log.record({"a": "offline", "b": "silent"}, 3, "r1")
    now[0] += 1
    log.record({"b": "silent"}, 3, "r1")
    assert log.since(v0).changes == {"a": "online", "b": "silent"}
    now[0] += 1
    log.record({"b": "silent"}, 3, "r1")  # nothing changed: no new version
    v2 = log.since(None).version
    assert log.since(v2).changes == {} and not log.since(v2).reset
    now[0] += 1
    log.record({}, 3, "r1")
    assert log.since(v0).reset  # only two change sets kept: v0's successors are gone


def test_density_counts_in_the_database(client: httpx.Client, database: DatabaseSettings) -> None:
    _seed(database.url)
    body = client.get("/map/density", params={"cell_deg": 0.1}).json()
    assert body["devices"] == 4 and sum(body["n"]) == 4
    cells = {
        (x, y): (n, down) for x, y, n, down in zip(body["x"], body["y"], body["n"], body["down"], strict=True)
    }
    # pole-a and aq-c (silent) share Futian's cell; pole-b (offline) is in Nanshan's.
    assert cells[(1140, 225)] == (2, 1)
    assert cells[(1139, 225)] == (1, 1)
    assert client.get("/map/density", params={"cell_deg": 0.0001}).status_code == 422


def test_positions_refuse_more_than_max(client: httpx.Client, database: DatabaseSettings) -> None:
    _seed(database.url)
    refused = client.get("/map/positions", params={"max": 3})
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "too_many_devices"
    assert client.get("/map/positions", params={"max": 4}).json()["count"] == 4
