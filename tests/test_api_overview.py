"""District summary and city overview against a seeded registry: device states per kind, key
metrics from the latest values, alert counts, and AQI/rain equal to the city views."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from apiserver import serve_api
from devicerows import add_devices
from psycopg.types.json import Jsonb

from api.queries import overview as overview_queries
from cityneuron.settings import DatabaseSettings, Settings

NOW = datetime.now(tz=UTC)
MIN = timedelta(minutes=1)

# device: (kind, district, online, last seen)
DEVICES: dict[str, tuple[str, str, bool | None, datetime | None]] = {
    "pole-futian-0001": ("smart_pole", "futian", True, NOW),
    "pole-futian-0002": ("smart_pole", "futian", False, NOW - 5 * MIN),
    "pole-futian-0003": ("smart_pole", "futian", True, NOW - 60 * MIN),  # 60 s interval x 3: silent
    "pole-futian-0004": ("smart_pole", "futian", None, None),  # never heard from
    "aq-futian-001": ("air_station", "futian", True, NOW - 10 * MIN),
    "aq-futian-002": ("air_station", "futian", None, NOW - 30 * MIN),
    "hy-futian-001": ("hydrology_station", "futian", True, NOW - 2 * MIN),
    "mh-luohu-0001": ("manhole_cover", "luohu", True, NOW - 20 * MIN),
}
# device: (reading time, metrics) in latest_reading
LATEST: dict[str, tuple[datetime, dict[str, float]]] = {
    "pole-futian-0001": (NOW, {"pm25": 10.0, "noise_dba": 50.0}),
    "pole-futian-0003": (NOW - 60 * MIN, {"pm25": 99.0, "noise_dba": 90.0}),  # stale: not counted
    "aq-futian-001": (NOW - 10 * MIN, {"pm25": 20.0, "o3": 100.0}),
    "aq-futian-002": (NOW - 30 * MIN, {"pm25": 30.0}),
}
# (district, severity, open)
ALERTS = [
    ("futian", "critical", True),
    ("futian", "warning", True),
    ("futian", "warning", True),
    ("futian", "warning", False),
    ("luohu", "warning", True),
]


def _seed(url: str) -> None:
    with psycopg.connect(url) as conn:
        add_devices(
            conn,
            ("device_id", "kind", "district", "online", "last_seen_at"),
            [(device_id, *facts) for device_id, facts in DEVICES.items()],
        )
        for device_id, (time, metrics) in LATEST.items():
            conn.execute(
                "INSERT INTO latest_reading (device_id, kind, time, metrics, received_at) VALUES (%s, %s, %s, %s, %s)",
                (device_id, DEVICES[device_id][0], time, Jsonb(metrics), time),
            )
        for i, (district, severity, is_open) in enumerate(ALERTS):
            conn.execute(
                "INSERT INTO alerts (device_id, kind, district, rule, severity, opened_at, closed_at)"
                " VALUES (%s, 'air_station', %s, %s, %s, %s, %s)",
                (
                    f"aq-{district}-00{i}",
                    district,
                    f"rule_{i}",
                    severity,
                    NOW - 2 * MIN,
                    None if is_open else NOW,
                ),
            )
        # 24 hourly air readings (an AQI to compare) and rain in the last hour.
        for hours_ago in range(24):
            conn.execute(
                "INSERT INTO reading_air_station (time, device_id, pm25, pm10, so2, no2, co, o3)"
                " VALUES (%s, 'aq-futian-001', 40, 60, 10, 30, 0.5, 100)",
                (NOW - timedelta(hours=hours_ago, minutes=30),),
            )
        conn.execute(
            "INSERT INTO reading_hydrology_station (time, device_id, rain_mm) VALUES (%s, 'hy-futian-001', 10)",
            (NOW - 20 * MIN,),
        )


def _kinds(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {k["kind"]: k for k in body["devices_by_kind"]}


def _metrics(body: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(m["kind"], m["metric"]): m for m in body["key_metrics"]}


def test_district_summary_and_city_overview(settings: Settings) -> None:
    _seed(settings.database.url)
    with serve_api(settings) as client:
        response = client.get("/city/districts/futian/summary")
        assert response.status_code == 200, response.text
        futian = response.json()
        aqi_view = client.get("/city/aqi/districts", params={"district": "futian"}).json()["items"][0]
        rain_view = client.get("/city/rain/districts", params={"district": "futian"}).json()["items"][0]
        overview = client.get("/city/overview").json()
        bad = client.get("/city/districts/atlantis/summary")

    assert futian["district"] == "futian" and futian["name"] == "福田区" and futian["population"] == 1_553_000
    assert futian["devices"] == {"total": 7, "online": 4, "offline": 1, "silent": 1, "unknown": 1}
    kinds = _kinds(futian)
    assert kinds["smart_pole"] | {"title": ""} == {
        "kind": "smart_pole",
        "title": "",
        "total": 4,
        "online": 1,
        "offline": 1,
        "silent": 1,
        "unknown": 1,
    }
    assert kinds["air_station"]["online"] == 2 and kinds["manhole_cover"]["total"] == 0

    metrics = _metrics(futian)
    assert metrics[("air_station", "pm25")] | {"description": ""} == {
        "kind": "air_station",
        "metric": "pm25",
        "description": "",
        "unit": "ug/m3",
        "mean": 25.0,
        "min": 20.0,
        "max": 30.0,
        "devices": 2,
    }
    # The silent pole's stale 99 does not count.
    pole_pm = metrics[("smart_pole", "pm25")]
    assert (pole_pm["mean"], pole_pm["devices"]) == (10.0, 1)
    assert metrics[("smart_pole", "noise_dba")]["unit"] == "dB(A)"
    assert metrics[("air_station", "o3")]["devices"] == 1
    water = metrics[("hydrology_station", "water_level_m")]
    assert (water["mean"], water["devices"], water["unit"]) == (None, 0, "m")

    assert futian["alerts"] == {"active": 3, "by_severity": {"critical": 1, "warning": 2}}
    # AQI and rain are those of the city views.
    assert futian["aqi"]["aqi"] is not None
    for field in (
        "aqi",
        "level",
        "category_zh",
        "colour",
        "primary_pollutants",
        "stations",
        "stations_reporting",
    ):
        assert futian["aqi"][field] == aqi_view[field], field
    assert futian["rain"]["rain_1h_mm"] == rain_view["rain_1h_mm"] == 10.0
    assert futian["rain"]["warning"] == rain_view["warning"] == "none"
    assert futian["rain"]["last_hour_category"]["key"] == "heavy"

    assert overview["devices"] == {"total": 8, "online": 5, "offline": 1, "silent": 1, "unknown": 1}
    assert _kinds(overview)["manhole_cover"]["online"] == 1
    assert overview["alerts"] == {"active": 4, "by_severity": {"critical": 1, "warning": 3}}
    assert _metrics(overview)[("air_station", "pm25")]["mean"] == 25.0
    districts = {d["district"]: d for d in overview["districts"]}
    assert len(districts) == 10 and districts["futian"]["devices"] == futian["devices"]
    assert districts["luohu"]["alerts"] == {"active": 1, "by_severity": {"warning": 1}}
    assert districts["dapeng"]["devices"]["total"] == 0 and districts["dapeng"]["aqi"]["aqi"] is None

    assert bad.status_code == 400 and bad.json()["error"]["code"] == "unknown_district"


# A fixed "now" hours in the past: rows recent relative to it are long silent relative to now().
AT = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)
Stats = overview_queries.MetricStats
NONE = Stats(None, None, None, 0)


def test_key_metric_stats_per_kind_window_at_a_given_time(database: DatabaseSettings) -> None:
    """Each kind's own window (3 x its interval before ``at``), districts appear only with a device
    in time, the city always; kinds and districts come from the registry."""
    devices = {
        # smart_pole: 60 s interval, window 180 s; air_station: 1 h, window 3 h.
        "pole-futian-1": ("smart_pole", "futian", AT - 2 * MIN, {"pm25": 10.0, "noise_dba": 40.0}),
        "pole-futian-2": ("smart_pole", "futian", AT - 4 * MIN, {"pm25": 99.0}),  # out of its window
        "pole-luohu-1": ("smart_pole", "luohu", AT - 1 * MIN, {"pm25": 30.0}),  # no noise value
        "aq-luohu-1": ("air_station", "luohu", AT - 150 * MIN, {"pm25": 50.0}),  # in an air window
        "pole-nanshan-1": ("smart_pole", "nanshan", AT - 10 * MIN, {"pm25": 70.0}),  # nanshan: none in time
        "mh-futian-1": ("manhole_cover", "futian", AT, {"water_level_cm": 5.0}),  # not a key kind
    }
    with psycopg.connect(database.url) as conn:
        for device_id, (kind, district, time, metrics) in devices.items():
            conn.execute(
                "INSERT INTO devices (device_id, kind, district) VALUES (%s, %s, %s)",
                (device_id, kind, district),
            )
            conn.execute(
                "INSERT INTO latest_reading (device_id, kind, time, metrics, received_at) VALUES (%s, %s, %s, %s, %s)",
                (device_id, kind, time, Jsonb(metrics), time),
            )

    async def query(**kwargs: Any) -> overview_queries.KeyMetricStats:
        async with await psycopg.AsyncConnection.connect(database.url, autocommit=True) as conn:
            return await overview_queries.key_metric_stats(conn, silent_after_intervals=3.0, **kwargs)

    city = asyncio.run(query(at=AT))
    assert set(city) == {None, "futian", "luohu"}
    assert city[None][("smart_pole", "pm25")] == Stats(20.0, 10.0, 30.0, 2)
    assert city["futian"][("smart_pole", "pm25")] == Stats(10.0, 10.0, 10.0, 1)
    assert city["luohu"][("smart_pole", "noise_dba")] == NONE
    assert city["luohu"][("air_station", "pm25")] == Stats(50.0, 50.0, 50.0, 1)
    assert city["futian"][("air_station", "pm25")] == Stats(None, None, None, 0)

    luohu = asyncio.run(query(at=AT, district="luohu"))
    assert set(luohu) == {None, "luohu"} and luohu["luohu"] == luohu[None] == city["luohu"]
    assert asyncio.run(query(at=AT, district="nanshan")) == {
        None: dict.fromkeys(overview_queries.KEY_METRICS, NONE)
    }
    # Against the database's clock every reading is long silent.
    assert asyncio.run(query()) == {None: dict.fromkeys(overview_queries.KEY_METRICS, NONE)}
