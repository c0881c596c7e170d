"""HTTP API against a real PostgreSQL (and TimescaleDB) and a real Mosquitto, served by uvicorn.

Rows are inserted with psycopg directly, so these tests do not depend on the ingest package.
Aggregates are checked against values computed here in Python from the inserted rows.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import httpx
import orjson
import psycopg
import pytest
from apiserver import serve_api
from psycopg.types.json import Jsonb

from cityneuron.catalog import KIND_BY_NAME
from cityneuron.contract import CONTRACT_VERSION
from cityneuron.schema import SCHEMA_VERSION
from cityneuron.servers import MosquittoBroker, free_port
from cityneuron.settings import ApiSettings, DatabaseSettings, MqttSettings, Settings

ORIGIN = datetime(2000, 1, 1, tzinfo=UTC)
T0 = datetime(2025, 6, 1, tzinfo=UTC)
MAX_PAGE = 20
MAX_BUCKETS = 300

# --- serving ------------------------------------------------------------------------------------


def _settings(database: DatabaseSettings, mqtt_port: int) -> Settings:
    return Settings(
        mqtt=MqttSettings(port=mqtt_port),
        database=database.model_copy(update={"connect_timeout_s": 1.0}),
        api=ApiSettings(
            max_page_size=MAX_PAGE,
            default_page_size=5,
            max_buckets=MAX_BUCKETS,
            cors_origins=["http://dashboard.example"],
        ),
    )


@pytest.fixture
def client(database: DatabaseSettings, broker: MosquittoBroker) -> Iterator[httpx.Client]:
    with serve_api(_settings(database, broker.port)) as c:
        yield c


# --- seeding ------------------------------------------------------------------------------------


def _add_device(conn: psycopg.Connection, device_id: str, kind: str, district: str, **extra: Any) -> None:
    conn.execute(
        "INSERT INTO devices (device_id, kind, district, lat, lon, installed, meta, online, status_changed_at)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
        (
            device_id,
            kind,
            district,
            extra.get("lat", 22.5),
            extra.get("lon", 114.0),
            extra.get("installed", date(2024, 5, 1)),
            Jsonb(extra.get("meta", {})),
            extra.get("online"),
            extra.get("status_changed_at"),
        ),
    )


def _add_latest(
    conn: psycopg.Connection, device_id: str, kind: str, at: datetime, metrics: dict[str, float], seq: int
) -> None:
    conn.execute(
        "INSERT INTO latest_reading (device_id, kind, time, seq, metrics, received_at)"
        " VALUES (%s, %s, %s, %s, %s, %s)",
        (device_id, kind, at, seq, Jsonb(metrics), at + timedelta(seconds=2)),
    )
    # What the ingest keeps in the registry alongside.
    conn.execute(
        "UPDATE device_activity SET last_seen_at = %s, messages = messages + 1 WHERE device_id = %s",
        (at + timedelta(seconds=2), device_id),
    )


# (device_id, district, time, pm25 or None)
Row = tuple[str, str, datetime, float | None]

AIR_DEVICES = (("aq-f1", "futian"), ("aq-f2", "futian"), ("aq-n1", "nanshan"), ("aq-b1", "baoan"))


def _seed_air(url: str, days: int = 2) -> list[Row]:
    """Four air stations, a reading every 10 min (offset per device); every 7th lacks pm25."""
    rows: list[Row] = []
    with psycopg.connect(url) as conn:
        for d, (device_id, district) in enumerate(AIR_DEVICES):
            _add_device(conn, device_id, "air_station", district)
            batch = []
            for i in range(days * 144):
                at = T0 + timedelta(minutes=10 * i + 3 * d)
                pm25 = None if i % 7 == 3 else ((i * 37 + d * 101) % 997) / 10
                batch.append((at, device_id, i, pm25, 40.0 + i % 9))
                rows.append((device_id, district, at, pm25))
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO reading_air_station (time, device_id, seq, pm25, o3) VALUES (%s, %s, %s, %s, %s)",
                    batch,
                )
    return rows


def _percentile(fraction: float) -> Callable[[list[float]], float]:
    """PostgreSQL's percentile_cont: linear interpolation between the closest ranks."""

    def compute(values: list[float]) -> float:
        ordered = sorted(values)
        position = fraction * (len(ordered) - 1)
        low = int(position)
        high = min(low + 1, len(ordered) - 1)
        return ordered[low] + (ordered[high] - ordered[low]) * (position - low)

    return compute


_PY_AGG: dict[str, Callable[[list[float]], float]] = {
    "avg": statistics.fmean,
    "min": min,
    "max": max,
    "sum": sum,
    "count": len,
    "p50": _percentile(0.5),
    "p90": _percentile(0.9),
    "p95": _percentile(0.95),
    "p99": _percentile(0.99),
}

Points = dict[tuple[str | None, datetime], tuple[float | None, int]]


def _filled(
    want: Points, *, bucket: timedelta, start: datetime, end: datetime, fill: str, grouped: bool
) -> Points:
    """``want`` with every bucket of [start, end) for each group with data (the one series always)."""
    groups = sorted({g for g, _ in want}) if grouped else [None]
    first = ORIGIN + ((start - ORIGIN) // bucket) * bucket
    out: Points = {}
    for group in groups:
        previous: float | None = None
        at = first
        while at < end:
            value, count = want.get((group, at), (None, 0))
            if value is None and fill == "zero":
                value = 0
            elif value is None and fill == "previous":
                value = previous
            out[(group, at)] = (value, count)
            previous = value if count else previous
            at += bucket
    return out


def _expected(
    rows: list[Row],
    *,
    bucket: timedelta,
    agg: str,
    start: datetime,
    end: datetime,
    district: str | None = None,
    device_id: str | None = None,
    group_by: str | None = None,
) -> Points:
    groups: dict[tuple[str | None, datetime], list[float]] = defaultdict(list)
    for dev, dist, at, value in rows:
        if value is None or not start <= at < end:
            continue
        if (district and dist != district) or (device_id and dev != device_id):
            continue
        begin = ORIGIN + ((at - ORIGIN) // bucket) * bucket
        group = dist if group_by == "district" else dev if group_by == "device" else None
        groups[(group, begin)].append(value)
    return {key: (_PY_AGG[agg](values), len(values)) for key, values in groups.items()}


def _points(body: dict[str, Any]) -> Points:
    out: Points = {}
    for series in body["series"]:
        times = [p["time"] for p in series["points"]]
        assert times == sorted(times), "buckets must come in time order"
        for p in series["points"]:
            out[(series["group"], datetime.fromisoformat(p["time"]))] = (p["value"], p["count"])
    return out


def _assert_same(got: Points, want: Points) -> None:
    assert got.keys() == want.keys()
    for key, (value, count) in want.items():
        assert got[key][1] == count, key
        if value is None:
            assert got[key][0] is None, key
        else:
            assert got[key][0] == pytest.approx(value, rel=1e-9, abs=1e-9), key


def _error(response: httpx.Response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and body["error"]["code"] == code, body
    message: str = body["error"]["message"]
    assert message
    return message


def _iso(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


# --- health -------------------------------------------------------------------------------------


def test_health_ok_reports_versions(client: httpx.Client) -> None:
    response = client.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["broker"]["reachable"] is True and body["broker"]["detail"] is None
    db = body["database"]
    assert db["reachable"] is True
    assert db["postgresql"][0].isdigit()
    assert db["timescaledb"] is None and db["timescaledb_present"] is False
    assert db["schema_version"] == SCHEMA_VERSION
    assert body["versions"] == {"cityneuron": "0.1.0", "contract": CONTRACT_VERSION, "schema": SCHEMA_VERSION}


def test_health_503_when_broker_down(client: httpx.Client, broker: MosquittoBroker) -> None:
    broker.stop(graceful=True)
    response = client.get("/health")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert body["broker"]["reachable"] is False
    assert "cannot connect" in body["broker"]["detail"]
    assert body["database"]["reachable"] is True
    assert set(body) == {"status", "broker", "database", "versions", "ready", "ready_detail"}
    assert body["ready"] is False and "broker" in body["ready_detail"]


def test_database_down_gives_503_everywhere(database: DatabaseSettings, broker: MosquittoBroker) -> None:
    down = database.model_copy(update={"url": f"postgresql://nobody:x@127.0.0.1:{free_port()}/none"})
    with serve_api(_settings(down, broker.port)) as client:
        health = client.get("/health")
        assert health.status_code == 503
        assert health.json()["database"]["reachable"] is False
        assert health.json()["database"]["detail"]
        assert health.json()["broker"]["reachable"] is True
        message = _error(client.get("/devices"), 503, "database_unavailable")
        assert "database unavailable" in message
        _error(
            client.get("/aggregates", params={"kind": "air_station", "metric": "pm25"}),
            503,
            "database_unavailable",
        )


# --- devices ------------------------------------------------------------------------------------

_KINDS = ("air_station", "smart_pole", "water_meter")
_DISTRICTS = ("futian", "nanshan", "baoan", "luohu")


@pytest.fixture
def registry(database: DatabaseSettings) -> list[dict[str, str]]:
    """23 devices over three kinds and four districts; some with a latest reading."""
    devices = []
    with psycopg.connect(database.url) as conn:
        for i in range(23):
            device = {"device_id": f"dev-{i:03d}", "kind": _KINDS[i % 3], "district": _DISTRICTS[i % 4]}
            _add_device(
                conn,
                device["device_id"],
                device["kind"],
                device["district"],
                online=i % 2 == 0,
                status_changed_at=T0,
                lon=113.9 + i * 0.01,
                lat=22.5 + i * 0.005,
            )
            if i % 5 == 0:
                _add_latest(conn, device["device_id"], device["kind"], T0 + timedelta(minutes=i), {}, i)
            devices.append(device)
    return devices


def _walk(client: httpx.Client, params: dict[str, Any]) -> tuple[list[dict[str, Any]], int]:
    items: list[dict[str, Any]] = []
    pages = 0
    cursor = None
    while True:
        response = client.get("/devices", params={**params, **({"cursor": cursor} if cursor else {})})
        assert response.status_code == 200, response.text
        body = response.json()
        pages += 1
        items += body["items"]
        cursor = body["next_cursor"]
        if cursor is None:
            return items, pages


def test_devices_filters_and_pagination(client: httpx.Client, registry: list[dict[str, str]]) -> None:
    items, pages = _walk(client, {"limit": 4})
    assert [d["device_id"] for d in items] == sorted(d["device_id"] for d in registry)
    assert pages == 6
    first = next(d for d in items if d["device_id"] == "dev-005")
    assert first["last_seen"] == "2025-06-01T00:05:02Z"
    assert first["online"] is False and first["status_changed_at"] == "2025-06-01T00:00:00Z"
    assert next(d for d in items if d["device_id"] == "dev-001")["last_seen"] is None

    for params in (
        {"kind": "smart_pole"},
        {"district": "baoan"},
        {"kind": "air_station", "district": "futian"},
    ):
        got, _ = _walk(client, {**params, "limit": 2})
        want = [d["device_id"] for d in registry if all(d[k] == v for k, v in params.items())]
        assert [d["device_id"] for d in got] == want
        assert want, "each filter must select something"

    default_page = client.get("/devices").json()
    assert len(default_page["items"]) == 5 and default_page["next_cursor"]

    # Seen long ago (T0) and claiming to be up: silent; said it was down: offline; never seen: unknown.
    by_id = {d["device_id"]: d for d in items}
    assert by_id["dev-000"]["status"] == "silent" and by_id["dev-005"]["status"] == "offline"
    assert by_id["dev-001"]["status"] == "offline" and by_id["dev-002"]["status"] == "unknown"
    for status in ("silent", "offline", "unknown"):
        got, _ = _walk(client, {"status": status, "limit": 3})
        assert [d["device_id"] for d in got] == [d for d in by_id if by_id[d]["status"] == status]
        assert got
    assert client.get("/devices", params={"status": "online"}).json()["items"] == []

    # Device i sits at (113.9 + 0.01 i, 22.5 + 0.005 i): this box holds devices 5..10, edges included.
    got, _ = _walk(client, {"bbox": "113.95,22.525,114.0,22.56", "limit": 4})
    assert [d["device_id"] for d in got] == [f"dev-{i:03d}" for i in range(5, 11)]
    got, _ = _walk(client, {"bbox": "113.95,22.525,114.0,22.56", "kind": "air_station"})
    assert [d["device_id"] for d in got] == ["dev-006", "dev-009"]


def test_devices_bad_parameters(client: httpx.Client, registry: list[dict[str, str]]) -> None:
    assert "air_station" in _error(client.get("/devices", params={"kind": "lamp"}), 400, "unknown_kind")
    assert "futian" in _error(
        client.get("/devices", params={"district": "atlantis"}), 400, "unknown_district"
    )
    assert str(MAX_PAGE) in _error(
        client.get("/devices", params={"limit": MAX_PAGE + 1}), 400, "limit_too_large"
    )
    assert "limit" in _error(client.get("/devices", params={"limit": 0}), 422, "invalid_parameter")
    _error(client.get("/devices", params={"cursor": "%%%"}), 400, "bad_cursor")
    assert "status" in _error(client.get("/devices", params={"status": "asleep"}), 422, "invalid_parameter")
    for bbox in ("1,2,3", "a,b,c,d", "114,22,113,23", "0,-91,1,0", "nan,0,1,1"):
        assert "bbox" in _error(client.get("/devices", params={"bbox": bbox}), 400, "invalid_bbox")


def test_device_detail_and_404(client: httpx.Client, database: DatabaseSettings) -> None:
    with psycopg.connect(database.url) as conn:
        _add_device(
            conn, "pole-1", "smart_pole", "nanshan", meta={"height_m": 12}, online=True, status_changed_at=T0
        )
        _add_latest(conn, "pole-1", "smart_pole", T0, {"lamp_level": 40.0}, 7)
    body = client.get("/devices/pole-1").json()
    assert body["device_id"] == "pole-1" and body["kind"] == "smart_pole" and body["district"] == "nanshan"
    assert body["online"] is True and body["meta"] == {"height_m": 12}
    assert body["installed"] == "2024-05-01"
    assert body["last_seen"] == "2025-06-01T00:00:02Z"
    assert body["auto_registered"] is False
    assert body["status"] == "silent" and body["silent_after_s"] == 3 * KIND_BY_NAME["smart_pole"].interval_s
    with psycopg.connect(database.url) as conn:
        conn.execute(
            "UPDATE device_activity SET last_seen_at = now(), messages = 100, seq_max = 104, seq_gaps = 3,"
            " seq_duplicates = 2, seq_reordered = 1 WHERE device_id = 'pole-1'"
        )
    body = client.get("/devices/pole-1").json()
    assert body["status"] == "online"
    assert body["quality"] == {
        "messages": 100,
        "seq_max": 104,
        "seq_gaps": 3,
        "seq_duplicates": 2,
        "seq_reordered": 1,
    }
    assert "pole-2" in _error(client.get("/devices/pole-2"), 404, "device_not_found")


def test_latest_with_units(client: httpx.Client, database: DatabaseSettings) -> None:
    with psycopg.connect(database.url) as conn:
        _add_device(conn, "aq-1", "air_station", "futian")
        _add_device(conn, "aq-2", "air_station", "futian")
        _add_latest(conn, "aq-1", "air_station", T0, {"o3": 80.5, "pm25": 12.5}, 42)
    response = client.get("/devices/aq-1/latest")
    assert response.status_code == 200
    assert response.json() == {
        "device_id": "aq-1",
        "kind": "air_station",
        "time": "2025-06-01T00:00:00Z",
        "received_at": "2025-06-01T00:00:02Z",
        "seq": 42,
        # Catalog order (pm25 before o3) and catalog units; no stored reading dates them here
        # (tests/test_api_latest.py checks each metric's own time through the ingest).
        "metrics": {
            "pm25": {"value": 12.5, "unit": "ug/m3", "time": None},
            "o3": {"value": 80.5, "unit": "ug/m3", "time": None},
        },
    }
    assert list(response.json()["metrics"]) == ["pm25", "o3"]
    _error(client.get("/devices/aq-2/latest"), 404, "no_reading")
    _error(client.get("/devices/aq-9/latest"), 404, "device_not_found")


# --- readings -----------------------------------------------------------------------------------


def test_readings_window_metric_and_pagination(client: httpx.Client, database: DatabaseSettings) -> None:
    with psycopg.connect(database.url) as conn:
        _add_device(conn, "hy-1", "hydrology_station", "longgang")
        _add_device(conn, "hy-2", "hydrology_station", "longgang")
        for i in range(30):
            rain = None if i % 4 == 0 else i / 10
            conn.execute(
                "INSERT INTO reading_hydrology_station (time, device_id, seq, water_level_m, rain_mm, received_at)"
                " VALUES (%s, 'hy-1', %s, %s, %s, %s)",
                (T0 + timedelta(minutes=i), i, 1.0 + i / 100, rain, T0 + timedelta(minutes=i, seconds=1)),
            )
        # Another device's readings must never leak in.
        conn.execute(
            "INSERT INTO reading_hydrology_station (time, device_id, water_level_m) VALUES (%s, 'hy-2', 9)",
            (T0 + timedelta(minutes=10),),
        )
    start = T0 + timedelta(minutes=5)
    end = T0 + timedelta(minutes=25)
    # from as epoch ms, to as RFC 3339 with an offset: both accepted.
    window = {"from": str(int(start.timestamp() * 1000)), "to": "2025-06-01T08:25:00+08:00"}

    got: list[dict[str, Any]] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {**window, "limit": 7, **({"cursor": cursor} if cursor else {})}
        body = client.get("/devices/hy-1/readings", params=params).json()
        assert body["kind"] == "hydrology_station" and body["from"] == _iso(start) and body["to"] == _iso(end)
        assert body["units"] == {"water_level_m": "m", "rain_mm": "mm", "supply_v": "V"}
        assert len(body["items"]) <= 7
        got += body["items"]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert pages == 3
    assert [r["seq"] for r in got] == list(range(5, 25))
    assert got[0] == {
        "time": "2025-06-01T00:05:00Z",
        "received_at": "2025-06-01T00:05:01Z",
        "seq": 5,
        "values": {"water_level_m": 1.05, "rain_mm": 0.5},
    }
    assert "rain_mm" not in got[3]["values"]  # seq 8 carried no rain

    rain = client.get(
        "/devices/hy-1/readings", params={**window, "metric": "rain_mm", "limit": MAX_PAGE}
    ).json()
    assert rain["units"] == {"rain_mm": "mm"}
    assert [r["seq"] for r in rain["items"]] == [i for i in range(5, 25) if i % 4 != 0]
    assert all(set(r["values"]) == {"rain_mm"} for r in rain["items"])
    assert rain["next_cursor"] is None

    default_limit = client.get("/devices/hy-1/readings", params=window).json()
    assert len(default_limit["items"]) == 5

    assert "supply_v" in _error(
        client.get("/devices/hy-1/readings", params={**window, "metric": "pm25"}), 400, "unknown_metric"
    )
    _error(
        client.get("/devices/hy-1/readings", params={**window, "limit": MAX_PAGE + 1}), 400, "limit_too_large"
    )
    _error(
        client.get("/devices/hy-1/readings", params={"from": window["to"], "to": window["from"]}),
        400,
        "invalid_time",
    )
    assert "time zone" in _error(
        client.get("/devices/hy-1/readings", params={"from": "2025-06-01T00:00:00"}), 400, "invalid_time"
    )
    _error(client.get("/devices/hy-1/readings", params={"from": "yesterday"}), 400, "invalid_time")
    device_cursor = client.get("/devices", params={"limit": 1}).json()["next_cursor"]
    _error(
        client.get("/devices/hy-1/readings", params={**window, "cursor": device_cursor}), 400, "bad_cursor"
    )
    _error(client.get("/devices/nope/readings"), 404, "device_not_found")


# --- aggregates ---------------------------------------------------------------------------------

_CASES: tuple[dict[str, Any], ...] = (
    {"bucket": "15m", "agg": "avg"},
    {"bucket": "1h", "agg": "min", "group_by": "district"},
    {"bucket": "2h", "agg": "max", "group_by": "device"},
    {"bucket": "1d", "agg": "count"},
    {"bucket": "30m", "agg": "sum", "district": "futian"},
    {"bucket": "45m", "agg": "avg", "district": "futian", "group_by": "device"},
    {"bucket": "5m", "agg": "avg", "device_id": "aq-n1"},
    {"bucket": "450s", "agg": "count", "device_id": "aq-b1"},
    {"bucket": "1h", "agg": "p95", "district": "futian"},
    {"bucket": "3h", "agg": "p50", "group_by": "district"},
    {"bucket": "1d", "agg": "p99"},
    {"bucket": "2h", "agg": "p90", "device_id": "aq-f2"},
)

# Gap filling: 5 min buckets over 10 min readings leave every other bucket empty, and the window
# starts two hours before the first reading (T0) to give leading gaps.
_FILL_CASES: tuple[dict[str, Any], ...] = (
    {"bucket": "5m", "agg": "avg", "device_id": "aq-f1", "fill": "null"},
    {"bucket": "5m", "agg": "max", "device_id": "aq-f1", "fill": "previous"},
    {"bucket": "5m", "agg": "count", "district": "futian", "fill": "zero"},
    {"bucket": "7m", "agg": "p95", "group_by": "district", "fill": "previous"},
    {"bucket": "1h", "agg": "sum", "group_by": "device", "fill": "zero"},
    {"bucket": "30m", "agg": "avg", "district": "luohu", "fill": "null"},
)


def _query(case: dict[str, Any], start: datetime, end: datetime) -> dict[str, Any]:
    return {"kind": "air_station", "metric": "pm25", "from": _iso(start), "to": _iso(end), **case}


def _bucket(text: str) -> timedelta:
    unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}[text[-1]]
    return timedelta(**{unit: int(text[:-1])})


def assert_fill_cases(client: httpx.Client, rows: list[Row], source: str) -> None:
    start = T0 - timedelta(hours=2, minutes=3)
    end = T0 + timedelta(hours=6)
    for case in _FILL_CASES:
        response = client.get("/aggregates", params=_query(case, start, end))
        assert response.status_code == 200, (case, response.text)
        body = response.json()
        assert body["fill"] == case["fill"]
        width = _bucket(case["bucket"])
        want = _expected(
            rows,
            bucket=width,
            agg=case["agg"],
            start=start,
            end=end,
            district=case.get("district"),
            device_id=case.get("device_id"),
            group_by=case.get("group_by"),
        )
        full = _filled(
            want, bucket=width, start=start, end=end, fill=case["fill"], grouped="group_by" in case
        )
        assert len(full) > len(want) or case.get("district") == "luohu", case
        _assert_same(_points(body), full)
        assert body["source"] == source or case["agg"].startswith("p")


def test_aggregates_match_python(client: httpx.Client, database: DatabaseSettings) -> None:
    rows = _seed_air(database.url)
    # An unaligned window: partial first and last buckets.
    start = T0 + timedelta(hours=5, minutes=7)
    end = T0 + timedelta(hours=29, minutes=41)
    for case in _CASES:
        response = client.get("/aggregates", params=_query(case, start, end))
        assert response.status_code == 200, (case, response.text)
        body = response.json()
        assert body["source"] == "reading_air_station" and body["unit"] == "ug/m3"
        assert body["bucket_seconds"] == _bucket(case["bucket"]).total_seconds()
        assert all(s["group"] is None for s in body["series"]) or case.get("group_by")
        want = _expected(
            rows,
            bucket=_bucket(case["bucket"]),
            agg=case["agg"],
            start=start,
            end=end,
            district=case.get("district"),
            device_id=case.get("device_id"),
            group_by=case.get("group_by"),
        )
        assert want, case
        _assert_same(_points(body), want)
    assert_fill_cases(client, rows, "reading_air_station")
    counts = client.get("/aggregates", params=_query({"bucket": "1d", "agg": "count"}, start, end)).json()
    assert isinstance(counts["series"][0]["points"][0]["value"], int)


def test_aggregates_limits_and_bad_parameters(client: httpx.Client, database: DatabaseSettings) -> None:
    with psycopg.connect(database.url) as conn:
        _add_device(conn, "pole-1", "smart_pole", "futian")
    base = {"kind": "air_station", "metric": "pm25", "from": _iso(T0), "to": _iso(T0 + timedelta(days=1))}

    message = _error(client.get("/aggregates", params={**base, "bucket": "1m"}), 400, "too_many_buckets")
    assert "1440" in message and str(MAX_BUCKETS) in message
    assert client.get("/aggregates", params={**base, "bucket": "5m"}).status_code == 200  # 288 buckets

    message = _error(client.get("/aggregates", params={"metric": "pm25"}), 422, "invalid_parameter")
    assert "'kind'" in message
    assert "agg" in _error(
        client.get("/aggregates", params={**base, "agg": "median"}), 422, "invalid_parameter"
    )
    assert "group_by" in _error(
        client.get("/aggregates", params={**base, "group_by": "x"}), 422, "invalid_parameter"
    )
    for bucket in ("5x", "0m", "m", "-1h", "99999999d"):
        _error(client.get("/aggregates", params={**base, "bucket": bucket}), 400, "invalid_bucket")
    assert "o3" in _error(
        client.get("/aggregates", params={**base, "metric": "lamp_level"}), 400, "unknown_metric"
    )
    _error(client.get("/aggregates", params={**base, "kind": "ufo"}), 400, "unknown_kind")
    _error(client.get("/aggregates", params={**base, "district": "x"}), 400, "unknown_district")
    _error(client.get("/aggregates", params={**base, "device_id": "pole-1"}), 400, "kind_mismatch")
    _error(client.get("/aggregates", params={**base, "device_id": "ghost"}), 404, "device_not_found")
    _error(client.get("/aggregates", params={**base, "to": "not-a-time"}), 400, "invalid_time")
    _error(client.get("/nowhere"), 404, "not_found")
    _error(client.post("/devices"), 405, "method_not_allowed")


# --- cross-cutting ------------------------------------------------------------------------------


def test_cors_and_openapi(client: httpx.Client) -> None:
    allowed = client.get("/health", headers={"Origin": "http://dashboard.example"})
    assert allowed.headers["access-control-allow-origin"] == "http://dashboard.example"
    other = client.get("/health", headers={"Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in other.headers

    spec = orjson.loads(client.get("/openapi.json").content)
    # Other views (city, alerts, commands, streams, admin) add their own paths.
    assert {
        "/health",
        "/metrics",
        "/devices",
        "/devices/{device_id}",
        "/devices/{device_id}/latest",
        "/devices/{device_id}/readings",
        "/latest",
        "/aggregates",
    } <= set(spec["paths"])
    schemas = spec["components"]["schemas"]
    for name in (
        "AggregateResponse",
        "LatestPage",
        "DeviceDetail",
        "DevicePage",
        "ReadingPage",
        "LatestReading",
    ):
        assert schemas[name].get("examples"), name
    assert "304" in spec["paths"]["/latest"]["get"]["responses"]
    params = {p["name"]: p for p in spec["paths"]["/aggregates"]["get"]["parameters"]}
    assert {"p95", "p99"} <= set(params["agg"]["schema"]["enum"])
    assert set(params["fill"]["schema"]["enum"]) == {"none", "null", "previous", "zero"}
    assert params["from"]["schema"]["examples"]
    aggregates = spec["paths"]["/aggregates"]["get"]
    assert aggregates["responses"]["422"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "ErrorBody"
    )
    assert client.get("/docs").status_code == 200


def test_prometheus_metrics_by_route_template(client: httpx.Client, database: DatabaseSettings) -> None:
    with psycopg.connect(database.url) as conn:
        _add_device(conn, "aq-1", "air_station", "futian")
    for device_id in ("aq-1", "aq-2", "aq-3"):
        client.get(f"/devices/{device_id}")
    client.get("/no/such/path")
    response = client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    text = response.text
    template = 'route="/devices/{device_id}"'
    assert f'cityneuron_api_requests_total{{method="GET",{template},status="200"}} 1.0' in text
    assert f'cityneuron_api_requests_total{{method="GET",{template},status="404"}} 2.0' in text
    assert 'route="<unmatched>",status="404"' in text
    assert "aq-2" not in text, "raw paths must not become labels"
    assert f'cityneuron_api_request_duration_seconds_count{{method="GET",{template}}} 3.0' in text
    assert 'cityneuron_api_request_duration_seconds_bucket{le="0.01",method="GET",' + template in text


# --- TimescaleDB continuous aggregates ----------------------------------------------------------


@pytest.mark.timescaledb
def test_continuous_aggregates_equal_raw(tsdb_database: DatabaseSettings, broker: MosquittoBroker) -> None:
    rows = _seed_air(tsdb_database.url, days=3)
    with psycopg.connect(tsdb_database.url, autocommit=True) as conn:
        for view in ("reading_air_station_1h", "reading_air_station_1d"):
            conn.execute("CALL refresh_continuous_aggregate(%s::regclass, NULL, NULL)", (view,))
        views = conn.execute("SELECT view_name FROM timescaledb_information.continuous_aggregates").fetchall()
        assert len(views) == 2 * len(KIND_BY_NAME)
    start = T0
    end = T0 + timedelta(days=3)
    cases = (
        ({"bucket": "1h", "agg": "avg"}, "reading_air_station_1h"),
        ({"bucket": "3h", "agg": "sum", "group_by": "district"}, "reading_air_station_1h"),
        ({"bucket": "6h", "agg": "min", "group_by": "device"}, "reading_air_station_1h"),
        ({"bucket": "1d", "agg": "max", "district": "futian"}, "reading_air_station_1d"),
        ({"bucket": "1d", "agg": "avg", "group_by": "district"}, "reading_air_station_1d"),
        ({"bucket": "2d", "agg": "count", "device_id": "aq-f2"}, "reading_air_station_1d"),
        ({"bucket": "24h", "agg": "sum", "group_by": "device"}, "reading_air_station_1d"),
    )
    with serve_api(_settings(tsdb_database, broker.port)) as client:
        health = client.get("/health").json()
        assert health["database"]["timescaledb_present"] is True and health["database"]["timescaledb"]
        for case, source in cases:
            via_cagg = client.get("/aggregates", params=_query(case, start, end)).json()
            via_raw = client.get("/aggregates", params={**_query(case, start, end), "source": "raw"}).json()
            assert via_cagg["source"] == source, case
            assert via_raw["source"] == "reading_air_station"
            want = _expected(
                rows,
                bucket=_bucket(case["bucket"]),
                agg=case["agg"],
                start=start,
                end=end,
                district=case.get("district"),
                device_id=case.get("device_id"),
                group_by=case.get("group_by"),
            )
            assert want, case
            _assert_same(_points(via_cagg), want)
            _assert_same(_points(via_raw), want)
        # A day bucket over an hour-aligned (not day-aligned) window reads the hourly aggregate;
        # a window off the hour, or a bucket that is no whole number of hours, reads raw rows.
        shifted = client.get(
            "/aggregates", params=_query({"bucket": "1d"}, start + timedelta(hours=5), end)
        ).json()
        assert shifted["source"] == "reading_air_station_1h"
        off_hour = client.get(
            "/aggregates", params=_query({"bucket": "1h"}, start + timedelta(minutes=5), end)
        ).json()
        assert off_hour["source"] == "reading_air_station"
        minutes = client.get("/aggregates", params=_query({"bucket": "90m"}, start, end)).json()
        assert minutes["source"] == "reading_air_station"
        # Percentiles cannot come from count/sum/min/max: always raw, and equal to Python's.
        p95 = {"bucket": "1d", "agg": "p95", "group_by": "district"}
        body = client.get("/aggregates", params=_query(p95, start, end)).json()
        assert body["source"] == "reading_air_station"
        want = _expected(rows, bucket=_bucket("1d"), agg="p95", start=start, end=end, group_by="district")
        _assert_same(_points(body), want)
        # Gap filling with time_bucket_gapfill (widths dividing two days) and generate_series (7m)
        # gives what the plain-PostgreSQL test expects; over aligned windows, from the aggregates too.
        assert_fill_cases(client, rows, "reading_air_station")
        for case in (
            {"bucket": "1h", "agg": "avg", "fill": "previous", "district": "futian"},
            {"bucket": "1d", "agg": "sum", "fill": "zero", "group_by": "device"},
        ):
            wide_start, wide_end = start - timedelta(days=2), end + timedelta(days=1)
            via_cagg = client.get("/aggregates", params=_query(case, wide_start, wide_end)).json()
            via_raw = client.get(
                "/aggregates", params={**_query(case, wide_start, wide_end), "source": "raw"}
            ).json()
            assert via_cagg["source"].startswith("reading_air_station_1"), case
            width = _bucket(case["bucket"])
            want = _expected(
                rows,
                bucket=width,
                agg=case["agg"],
                start=wide_start,
                end=wide_end,
                district=case.get("district"),
                group_by=case.get("group_by"),
            )
            full = _filled(
                want,
                bucket=width,
                start=wide_start,
                end=wide_end,
                fill=case["fill"],
                grouped="group_by" in case,
            )
            _assert_same(_points(via_cagg), full)
            _assert_same(_points(via_raw), full)
