"""City views over HTTP: AQI, water class and rain warnings from hand-made readings in a real DB.

Expected figures are worked out by hand in the comments (HJ 633 tables of DOMAIN.md section 4,
GB 3838-2002, national rainstorm signals); the API must return them exactly.
"""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest
from apiserver import serve_api
from psycopg import sql
from psycopg.types.json import Jsonb

from cityneuron.catalog import DISTRICTS
from cityneuron.settings import DatabaseSettings, Settings

AT = datetime(2025, 6, 1, 12, tzinfo=UTC)  # 20:00 in Shenzhen
HOUR = timedelta(hours=1)


def _serve(database: DatabaseSettings) -> contextlib.AbstractContextManager[httpx.Client]:
    """The city views need no broker."""
    return serve_api(Settings(database=database))


def _device(conn: psycopg.Connection, device_id: str, kind: str, district: str, **meta: Any) -> None:
    conn.execute(
        "INSERT INTO devices (device_id, kind, district, meta) VALUES (%s, %s, %s, %s)",
        (device_id, kind, district, Jsonb(meta)),
    )


def _reading(conn: psycopg.Connection, kind: str, device_id: str, at: datetime, **values: float) -> None:
    query = sql.SQL("INSERT INTO {table} (time, device_id, {columns}) VALUES (%s, %s, {marks})").format(
        table=sql.Identifier(f"reading_{kind}"),
        columns=sql.SQL(", ").join(map(sql.Identifier, values)),
        marks=sql.SQL(", ").join(sql.Placeholder() * len(values)),
    )
    conn.execute(query, (at, device_id, *values.values()))


def _iso(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


def _ok(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _error(response: httpx.Response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and body["error"]["code"] == code, body
    message: str = body["error"]["message"]
    return message


def _by(items: list[dict[str, Any]], key: str) -> dict[str, dict[str, Any]]:
    return {item[key]: item for item in items}


def _iaqis(item: dict[str, Any]) -> dict[str, int | None]:
    return {ind["indicator"]: ind["iaqi"] for ind in item["indicators"]}


# --- AQI: hourly --------------------------------------------------------------------------------

_GASES = {"pm10": 40.0, "so2": 10.0, "no2": 30.0, "co": 0.5, "o3": 100.0}


def _seed_hourly(url: str) -> None:
    with psycopg.connect(url) as conn:
        for device_id, district in (("aq-f1", "futian"), ("aq-f2", "futian"), ("aq-b1", "baoan")):
            _device(conn, device_id, "air_station", district)
        _device(conn, "aq-n1", "air_station", "nanshan")  # never reports
        for k in range(24):
            at = AT - k * HOUR
            # aq-f1: PM2.5 alternating 60/80, 24 h mean 70.
            _reading(conn, "air_station", "aq-f1", at, pm25=60.0 if k % 2 == 0 else 80.0, **_GASES)
            _reading(conn, "air_station", "aq-f2", at, pm25=50.0, **_GASES)
            # aq-b1: SO2 900 in the last hour, 100 before: 24 h mean (23 * 100 + 900) / 24 = 133.3.
            _reading(conn, "air_station", "aq-b1", at, so2=900.0 if k == 0 else 100.0)
        # Outside (AT - 24 h, AT]: must not count.
        _reading(conn, "air_station", "aq-f1", AT - 24 * HOUR, pm25=1000.0, o3=1000.0)
        _reading(conn, "air_station", "aq-f1", AT + timedelta(minutes=1), pm25=1000.0, o3=1000.0)


@pytest.mark.parametrize("database_kind", ["plain", "timescaledb"])
def test_hourly_aqi_stations_and_districts(database_kind: str, request: pytest.FixtureRequest) -> None:
    database: DatabaseSettings = request.getfixturevalue(
        "database" if database_kind == "plain" else "tsdb_database"
    )
    _seed_hourly(database.url)
    with _serve(database) as client:
        body = _ok(client.get("/city/aqi/stations", params={"at": _iso(AT)}))
        assert body["period"] == "hourly" and body["standard"] == "HJ633-2026"
        assert "HJ 633-2026" in body["standard_title"]
        assert body["at"] == "2025-06-01T12:00:00Z" and body["day"] is None
        assert body["window_start"] == "2025-05-31T12:00:00Z" and body["window_end"] == "2025-06-01T12:00:00Z"
        stations = _by(body["items"], "device_id")
        assert list(stations) == ["aq-b1", "aq-f1", "aq-f2", "aq-n1"]

        f1 = stations["aq-f1"]
        # PM2.5 70 -> 100 + 50/55 * 10 = 109.09 -> 110; PM10 40 -> 40; SO2 10 -> 3.33 -> 4;
        # NO2 30 -> 15; CO 0.5 -> 5; O3 100 -> 31.25 -> 32.
        assert _iaqis(f1) == {
            "pm25_24h": 110,
            "pm10_24h": 40,
            "so2_1h": 4,
            "no2_1h": 15,
            "co_1h": 5,
            "o3_1h": 32,
        }
        assert (f1["aqi"], f1["level"], f1["category_zh"], f1["category_en"], f1["colour"]) == (
            110,
            3,
            "轻度污染",
            "Lightly polluted",
            "#FF7E00",
        )
        assert f1["primary_pollutants"] == ["PM2.5"] and f1["district"] == "futian"
        pm25 = f1["indicators"][0]
        assert pm25 == {
            "indicator": "pm25_24h",
            "pollutant": "PM2.5",
            "averaging": "24 h moving mean (at least 20 hourly means)",
            "concentration": 70.0,
            "unit": "ug/m3",
            "samples": 24,
            "samples_required": 20,
            "valid": True,
            "iaqi": 110,
            "iaqi_basis": "pm25_24h",
            "primary": True,
            "note": None,
        }
        assert f1["indicators"][4]["unit"] == "mg/m3" and f1["indicators"][4]["samples"] == 1
        # aq-f2: PM2.5 50 -> 50 + 50/25 * 15 = 80.
        assert stations["aq-f2"]["aqi"] == 80 and stations["aq-f2"]["category_zh"] == "良"

        b1 = stations["aq-b1"]
        so2 = next(i for i in b1["indicators"] if i["indicator"] == "so2_1h")
        # SO2 1 h 900 > 800: IAQI from the 24 h mean 133.3 -> 50 + 50/100 * 83.3 = 91.67 -> 92.
        assert so2["concentration"] == 900.0 and so2["iaqi"] == 92 and so2["iaqi_basis"] == "so2_24h"
        assert "133.3" in so2["note"]
        assert b1["aqi"] == 92 and b1["primary_pollutants"] == ["SO2"]
        assert _iaqis(b1)["pm25_24h"] is None

        n1 = stations["aq-n1"]
        assert n1["aqi"] is None and n1["level"] is None and n1["primary_pollutants"] == []
        assert all(i["concentration"] is None and i["samples"] == 0 for i in n1["indicators"])

        # HJ 633-2012: PM2.5 70 -> 50 + 50/40 * 35 = 93.75 -> 94; 50 -> 68.75 -> 69.
        old = _by(
            _ok(client.get("/city/aqi/stations", params={"at": _iso(AT), "standard": "HJ633-2012"}))["items"],
            "device_id",
        )
        assert old["aq-f1"]["aqi"] == 94 and old["aq-f1"]["category_zh"] == "良"
        assert old["aq-f1"]["primary_pollutants"] == ["PM2.5"] and old["aq-f2"]["aqi"] == 69

        # Epoch ms means the same instant; a district filter keeps its stations only.
        epoch = _ok(
            client.get(
                "/city/aqi/stations", params={"at": str(int(AT.timestamp() * 1000)), "district": "futian"}
            )
        )
        assert [s["device_id"] for s in epoch["items"]] == ["aq-f1", "aq-f2"]
        assert epoch["items"][0] == f1

        districts_body = _ok(client.get("/city/aqi/districts", params={"at": _iso(AT)}))
        assert "mean" in districts_body["method"]
        districts = _by(districts_body["items"], "district")
        assert list(districts) == [d.slug for d in DISTRICTS]
        futian = districts["futian"]
        # Hourly district PM2.5 = mean(60|80, 50) = 55|65, 24 h mean 60: the 2026 IAQI-100 breakpoint.
        assert futian["aqi"] == 100 and futian["name"] == "福田区"
        assert futian["stations"] == 2 and futian["stations_reporting"] == 2
        assert futian["indicators"][0]["concentration"] == 60.0 and futian["primary_pollutants"] == ["PM2.5"]
        assert districts["baoan"]["aqi"] == 92
        assert districts["nanshan"]["stations"] == 1 and districts["nanshan"]["stations_reporting"] == 0
        assert districts["nanshan"]["aqi"] is None
        assert districts["luohu"]["stations"] == 0 and districts["luohu"]["aqi"] is None

        # HJ 633-2012 for the district: 60 -> 50 + 50/40 * 25 = 81.25 -> 82.
        futian_2012 = _ok(
            client.get(
                "/city/aqi/districts", params={"at": _iso(AT), "district": "futian", "standard": "HJ633-2012"}
            )
        )["items"]
        assert len(futian_2012) == 1 and futian_2012[0]["aqi"] == 82


# --- AQI: daily ---------------------------------------------------------------------------------

DAY_START = datetime(2025, 5, 31, 16, tzinfo=UTC)  # 2025-06-01 00:00 China Standard Time


def test_hourly_moving_means_need_20_hours(database: DatabaseSettings) -> None:
    """A station that started reporting a few hours ago has no valid PM2.5 24 h moving mean
    (GB 3095-2012 table 4 / HJ 663-2013: at least 20 hourly means), not one from those hours."""
    with psycopg.connect(database.url) as conn:
        _device(conn, "aq-new", "air_station", "luohu")
        _device(conn, "aq-old", "air_station", "luohu")
        for k in range(19):
            _reading(conn, "air_station", "aq-new", AT - k * HOUR, pm25=200.0, no2=30.0)
        for k in range(20):
            _reading(conn, "air_station", "aq-old", AT - k * HOUR, pm25=200.0, no2=30.0)
    with _serve(database) as client:
        body = _ok(client.get("/city/aqi/stations", params={"at": _iso(AT), "district": "luohu"}))
        stations = _by(body["items"], "device_id")
        new = {i["indicator"]: i for i in stations["aq-new"]["indicators"]}
        pm25 = new["pm25_24h"]
        assert (pm25["samples"], pm25["samples_required"], pm25["valid"]) == (19, 20, False)
        assert pm25["concentration"] is None and pm25["iaqi"] is None
        assert "19 of the 20 hourly means" in pm25["note"]
        # The AQI rests on what is valid: NO2 1 h 30 -> 15.
        assert stations["aq-new"]["aqi"] == 15 and stations["aq-new"]["primary_pollutants"] == []
        no2 = new["no2_1h"]
        assert (no2["samples"], no2["samples_required"], no2["valid"]) == (1, 1, True)
        # A missing pollutant is invalid with nothing to rest on, and says so without a count.
        assert new["so2_1h"]["valid"] is False and new["so2_1h"]["samples"] == 0
        old = {i["indicator"]: i for i in stations["aq-old"]["indicators"]}
        assert old["pm25_24h"]["valid"] is True and old["pm25_24h"]["samples"] == 20
        # PM2.5 200 -> 200 + 100/100 * 50 = 250 (HJ 633-2026).
        assert old["pm25_24h"]["iaqi"] == 250 and stations["aq-old"]["aqi"] == 250
        district = _ok(client.get("/city/aqi/districts", params={"at": _iso(AT), "district": "luohu"}))
        (luohu,) = district["items"]
        # The district's hourly series has 20 hours (aq-old's); its moving mean is valid.
        assert _iaqis(luohu)["pm25_24h"] == 250


def test_daily_aqi(database: DatabaseSettings) -> None:
    with psycopg.connect(database.url) as conn:
        _device(conn, "aq-d1", "air_station", "longhua")
        for i in range(24):
            at = DAY_START + (i + 1) * HOUR  # hour-ending labels 01:00 ... 24:00
            values = {
                "pm25": 30.0,
                "so2": 100.0,
                "no2": 40.0,
                "co": 1.0,
                "o3": 200.0 if 13 <= i <= 20 else 100.0,
            }
            if i >= 5:
                values["pm10"] = 500.0  # 19 hours only: below the 20-hour minimum
            _reading(conn, "air_station", "aq-d1", at, **values)
        # 00:00 belongs to the day before; a spike there must not count.
        _reading(conn, "air_station", "aq-d1", DAY_START, pm25=1000.0, o3=1000.0)

    with _serve(database) as client:
        params = {"period": "daily", "at": "2025-06-02T03:00:00+08:00"}
        body = _ok(client.get("/city/aqi/stations", params=params))
        assert body["period"] == "daily" and body["day"] == "2025-06-01"
        assert body["window_start"] == "2025-05-31T16:00:00Z" and body["window_end"] == "2025-06-01T16:00:00Z"
        (d1,) = body["items"]
        # PM2.5 30 -> 42.86 -> 43; SO2 24 h 100 -> 75; NO2 24 h 40 -> 50; CO 24 h 1 -> 25;
        # O3 max 8 h 200 -> 100 + 50/55 * 40 = 136.36 -> 137; O3 max 1 h 200 -> 100.
        assert _iaqis(d1) == {
            "pm25_24h": 43,
            "pm10_24h": None,
            "so2_24h": 75,
            "no2_24h": 50,
            "co_24h": 25,
            "o3_8h": 137,
            "o3_1h": 100,
        }
        indicators = _by(d1["indicators"], "indicator")
        assert indicators["pm10_24h"]["samples"] == 19 and indicators["pm10_24h"]["concentration"] is None
        assert indicators["o3_8h"]["concentration"] == 200.0 and indicators["o3_8h"]["samples"] == 17
        assert indicators["o3_8h"]["primary"] is True and indicators["o3_1h"]["primary"] is False
        assert d1["aqi"] == 137 and d1["primary_pollutants"] == ["O3"] and d1["level"] == 3

        # At midnight exactly the day just ended is complete; a minute before, it is not.
        at_midnight = _ok(
            client.get("/city/aqi/stations", params={"period": "daily", "at": "2025-06-01T16:00:00Z"})
        )
        assert at_midnight["day"] == "2025-06-01" and at_midnight["items"][0]["aqi"] == 137
        before = _ok(
            client.get("/city/aqi/stations", params={"period": "daily", "at": "2025-06-01T23:59:00+08:00"})
        )
        assert before["day"] == "2025-05-31"
        # The day before holds only the 00:00 spike: one hour is too few for any 24 h mean.
        assert _iaqis(before["items"][0])["pm25_24h"] is None

        longhua = _ok(client.get("/city/aqi/districts", params={**params, "district": "longhua"}))["items"]
        assert len(longhua) == 1 and longhua[0]["aqi"] == 137 and longhua[0]["stations_reporting"] == 1


# --- water quality ------------------------------------------------------------------------------

_CLASS_IV = {"ph": 7.2, "do_mgl": 5.5, "codmn_mgl": 5.0, "nh3n_mgl": 1.2, "tp_mgl": 0.25, "tn_mgl": 3.0}
_CLASS_I = {"ph": 7.0, "do_mgl": 9.0, "codmn_mgl": 1.0, "nh3n_mgl": 0.1, "tp_mgl": 0.01, "tn_mgl": 0.5}
_WORSE = {"ph": 7.0, "do_mgl": 1.0, "codmn_mgl": 20.0, "nh3n_mgl": 5.0, "tp_mgl": 1.0, "tn_mgl": 9.0}


def test_water_quality_classes(database: DatabaseSettings) -> None:
    with psycopg.connect(database.url) as conn:
        _device(conn, "wq-ba1", "water_quality_station", "baoan")
        _device(conn, "wq-lg1", "water_quality_station", "longgang", water_body="reservoir")
        _device(conn, "wq-ft1", "water_quality_station", "futian")
        _reading(conn, "water_quality_station", "wq-ba1", AT - 8 * HOUR, **_CLASS_I)
        _reading(conn, "water_quality_station", "wq-ba1", AT - HOUR, **_CLASS_IV)
        _reading(conn, "water_quality_station", "wq-ba1", AT + HOUR, **_WORSE)  # after `at`
        _reading(
            conn,
            "water_quality_station",
            "wq-lg1",
            AT - 2 * HOUR,
            ph=7.0,
            do_mgl=8.0,
            codmn_mgl=1.5,
            nh3n_mgl=0.1,
            tp_mgl=0.04,
            tn_mgl=2.5,
        )
        _reading(conn, "water_quality_station", "wq-ft1", AT - 30 * HOUR, **_WORSE)  # stale

    with _serve(database) as client:
        body = _ok(client.get("/city/water-quality/stations", params={"at": _iso(AT)}))
        assert body["standard"] == "GB 3838-2002" and body["lookback_hours"] == 24
        stations = _by(body["items"], "device_id")
        assert list(stations) == ["wq-ba1", "wq-ft1", "wq-lg1"]

        ba1 = stations["wq-ba1"]
        assert ba1["analysis_time"] == _iso(AT - HOUR) and ba1["water_body"] == "river"
        assert ba1["water_class"] == "IV" and ba1["class_number"] == 4
        assert ba1["deciding_parameters"] == ["nh3n_mgl", "tp_mgl"]
        # TP (0.25 - 0.2) / 0.2 = 0.25 before NH3-N (1.2 - 1.0) / 1.0 = 0.2.
        assert ba1["main_pollutants"] == ["tp_mgl", "nh3n_mgl"]
        params = _by(ba1["parameters"], "parameter")
        assert list(params) == ["ph", "do_mgl", "codmn_mgl", "nh3n_mgl", "tp_mgl", "tn_mgl"]
        assert params["nh3n_mgl"] == {
            "parameter": "nh3n_mgl",
            "label": "NH3-N",
            "value": 1.2,
            "unit": "mg/L",
            "water_class": "IV",
            "counts_towards_class": True,
            "exceedance_over_iii": 0.2,
            "note": None,
        }
        assert params["do_mgl"]["water_class"] == "III" and params["ph"]["water_class"] == "I"
        assert params["tn_mgl"]["value"] == 3.0 and params["tn_mgl"]["water_class"] is None
        assert params["tn_mgl"]["counts_towards_class"] is False

        lg1 = stations["wq-lg1"]
        # Reservoir: TP 0.04 is lake class III; TN 2.5 is 劣V but only a reference.
        assert lg1["water_body"] == "lake" and lg1["water_class"] == "III"
        assert lg1["deciding_parameters"] == ["tp_mgl"] and lg1["main_pollutants"] == []
        assert _by(lg1["parameters"], "parameter")["tn_mgl"]["water_class"] == "劣V"

        ft1 = stations["wq-ft1"]
        assert ft1["analysis_time"] is None and ft1["water_class"] is None and ft1["class_number"] is None

        # Earlier `at` (epoch ms, exactly the clean analysis' time): that analysis is the latest.
        earlier = _ok(
            client.get(
                "/city/water-quality/stations",
                params={"at": str(int((AT - 8 * HOUR).timestamp() * 1000)), "district": "baoan"},
            )
        )
        (only,) = earlier["items"]
        assert only["water_class"] == "I" and only["analysis_time"] == _iso(AT - 8 * HOUR)
        # Later: the 劣V analysis (DO 1.0 and the rest beyond V).
        later = _ok(client.get("/city/water-quality/stations", params={"at": _iso(AT + HOUR)}))
        assert _by(later["items"], "device_id")["wq-ba1"]["water_class"] == "劣V"

        # Polled with If-None-Match: the weak ETag ignores `at`, so the same classes are a 304 even
        # though the evaluation time moved; other classes are a full answer.
        first = client.get("/city/water-quality/stations", params={"at": _iso(AT + HOUR)})
        etag = first.headers["etag"]
        assert etag.startswith('W/"')
        same = client.get(
            "/city/water-quality/stations",
            params={"at": _iso(AT + 2 * HOUR)},
            headers={"If-None-Match": etag},
        )
        assert same.status_code == 304 and same.content == b""
        other = client.get(
            "/city/water-quality/stations", params={"at": _iso(AT)}, headers={"If-None-Match": etag}
        )
        assert other.status_code == 200 and other.headers["etag"] != etag


# --- rain ---------------------------------------------------------------------------------------


def _rain(conn: psycopg.Connection, device_id: str, amounts: dict[datetime, float]) -> None:
    for at, mm in amounts.items():
        _reading(conn, "hydrology_station", device_id, at, rain_mm=mm, water_level_m=1.0)


def _half_hours_before(n: int, mm: float) -> dict[datetime, float]:
    return {AT - timedelta(minutes=30 + 60 * k): mm for k in range(n)}


def test_rain_districts_and_warnings(database: DatabaseSettings) -> None:
    with psycopg.connect(database.url) as conn:
        stations = {
            "hy-lg1": "longgang",
            "hy-ft1": "futian",
            "hy-ns1": "nanshan",
            "hy-ba1": "baoan",
            "hy-lh1": "luohu",
            "hy-lh2": "luohu",
            "hy-dp1": "dapeng",
            "hy-gm1": "guangming",
        }
        for device_id, district in stations.items():
            _device(conn, device_id, "hydrology_station", district)
        # Longgang: 60 mm in 3 h in 10-minute readings (3.4 mm x 6 in the last hour, 3.3 mm x 12
        # before): 20.4 mm last hour (暴雨), 3 h 60 mm -> orange.
        _rain(conn, "hy-lg1", {AT - timedelta(minutes=10 * j): 3.4 if j < 6 else 3.3 for j in range(18)})
        _reading(conn, "hydrology_station", "hy-lg1", AT - timedelta(minutes=5), water_level_m=2.0)
        # Futian: 40 + 40 + 30 = 110 mm in (AT - 3 h, AT] -> red; 50 mm exactly at AT - 3 h is
        # outside the 3 h window but inside 6 h (160 mm).
        _rain(conn, "hy-ft1", {AT: 40.0, AT - HOUR: 40.0, AT - 2 * HOUR: 30.0, AT - 3 * HOUR: 50.0})
        # Nanshan: 11 mm an hour for 5 h: 3 h 33, 6 h 55 -> yellow.
        _rain(conn, "hy-ns1", _half_hours_before(5, 11.0))
        # Bao'an: 5.5 mm an hour for 10 h: 6 h 33, 12 h 55 -> blue.
        _rain(conn, "hy-ba1", _half_hours_before(10, 5.5))
        # Luohu: 30 mm and 40 mm in 3 h at two gauges: the max (40) stays below 50, no signal.
        _rain(conn, "hy-lh1", _half_hours_before(3, 10.0))
        _rain(conn, "hy-lh2", _half_hours_before(2, 20.0))
        # Dapeng: reporting, dry.
        _rain(conn, "hy-dp1", _half_hours_before(24, 0.0))
        # Guangming: only readings outside (AT - 24 h, AT].
        _rain(conn, "hy-gm1", {AT - 24 * HOUR: 80.0, AT + timedelta(minutes=5): 80.0})

    with _serve(database) as client:
        body = _ok(client.get("/city/rain/districts", params={"at": _iso(AT)}))
        assert body["unit"] == "mm" and body["at"] == _iso(AT)
        assert "blue 50 mm/12 h" in body["standard"] and "maximum over its stations" in body["method"]
        districts = _by(body["items"], "district")
        assert list(districts) == [d.slug for d in DISTRICTS]

        def summary(slug: str) -> tuple[Any, ...]:
            d = districts[slug]
            cat = d["last_hour_category"]
            day = d["rain_24h_category"]
            return (
                d["rain_1h_mm"],
                d["rain_3h_mm"],
                d["rain_6h_mm"],
                d["rain_12h_mm"],
                d["rain_24h_mm"],
                cat and cat["key"],
                day and day["key"],
                d["warning"],
            )

        assert summary("longgang") == (20.4, 60.0, 60.0, 60.0, 60.0, "rainstorm", "rainstorm", "orange")
        assert summary("futian") == (40.0, 110.0, 160.0, 160.0, 160.0, "rainstorm", "heavy_rainstorm", "red")
        assert summary("nanshan") == (11.0, 33.0, 55.0, 55.0, 55.0, "heavy", "rainstorm", "yellow")
        assert summary("baoan") == (5.5, 16.5, 33.0, 55.0, 55.0, "moderate", "rainstorm", "blue")
        assert summary("luohu") == (20.0, 40.0, 40.0, 40.0, 40.0, "rainstorm", "heavy", "none")
        assert summary("dapeng") == (0.0, 0.0, 0.0, 0.0, 0.0, "none", "none", "none")
        assert summary("guangming") == (None,) * 7 + (None,)
        assert summary("pingshan") == (None,) * 7 + (None,)

        longgang = districts["longgang"]
        assert longgang["name"] == "龙岗区" and longgang["warning_zh"] == "暴雨橙色预警信号"
        assert longgang["last_hour_category"] == {
            "key": "rainstorm",
            "name_zh": "暴雨",
            "name_en": "rainstorm",
        }
        assert districts["futian"]["warning_zh"] == "暴雨红色预警信号"
        assert districts["luohu"]["stations"] == 2 and districts["luohu"]["stations_reporting"] == 2
        assert districts["guangming"]["stations"] == 1 and districts["guangming"]["stations_reporting"] == 0
        assert districts["pingshan"]["stations"] == 0 and districts["pingshan"]["warning_zh"] is None

        # An hour later the 30 mm at AT - 2 h has left the 3 h window: 40 + 40 = 80 mm in
        # (AT - 2 h, AT + 1 h] -> orange; nothing fell in the last hour.
        later = _ok(client.get("/city/rain/districts", params={"at": _iso(AT + HOUR), "district": "futian"}))
        (futian,) = later["items"]
        assert futian["rain_3h_mm"] == 80.0 and futian["warning"] == "orange" and futian["rain_1h_mm"] is None


# --- parameters ---------------------------------------------------------------------------------


def test_bad_parameters(database: DatabaseSettings) -> None:
    with _serve(database) as client:
        for path in (
            "/city/aqi/stations",
            "/city/aqi/districts",
            "/city/water-quality/stations",
            "/city/rain/districts",
        ):
            assert "time zone" in _error(
                client.get(path, params={"at": "2025-06-01T00:00:00"}), 400, "invalid_time"
            )
            _error(client.get(path, params={"at": "yesterday"}), 400, "invalid_time")
            assert "futian" in _error(
                client.get(path, params={"district": "atlantis"}), 400, "unknown_district"
            )
        assert "standard" in _error(
            client.get("/city/aqi/stations", params={"standard": "EPA"}), 422, "invalid_parameter"
        )
        assert "period" in _error(
            client.get("/city/aqi/districts", params={"period": "weekly"}), 422, "invalid_parameter"
        )
        # Without `at` the views answer for now (an empty city: every district, no data).
        now = _ok(client.get("/city/rain/districts"))
        assert len(now["items"]) == len(DISTRICTS) and all(d["warning"] is None for d in now["items"])
        spec = client.get("/openapi.json").json()
        assert {
            "/city/aqi/stations",
            "/city/aqi/districts",
            "/city/water-quality/stations",
            "/city/rain/districts",
        } <= set(spec["paths"])
