"""GET /alerts on alerts rows as the ingest writes them: state, attribute and time filters,
cursor pagination and errors."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest
from apiserver import serve_api

from cityneuron.settings import Settings

T0 = datetime(2026, 3, 1, tzinfo=UTC)
H = timedelta(hours=1)

# name: (device, kind, district, rule, severity, opened, closed)
ALERTS: dict[str, tuple[str, str, str, str, str, datetime, datetime | None]] = {
    "pm_old": ("aq-futian-001", "air_station", "futian", "pm25_high", "warning", T0, T0 + 2 * H),
    "pm_open": ("aq-futian-001", "air_station", "futian", "pm25_high", "warning", T0 + 5 * H, None),
    "tilt": ("mh-luohu-0001", "manhole_cover", "luohu", "cover_tilt", "critical", T0 + 3 * H, None),
    "noise": ("pole-futian-0001", "smart_pole", "futian", "noise_high", "info", T0 + 4 * H, T0 + 4.5 * H),
    "rain": ("hy-baoan-001", "hydrology_station", "baoan", "rain_rainstorm", "critical", T0 + 1 * H, None),
}


@pytest.fixture
def served(settings: Settings) -> Any:
    database = settings.database
    ids: dict[str, int] = {}
    with psycopg.connect(database.url) as conn:
        for name, (device, kind, district, rule, severity, opened, closed) in ALERTS.items():
            row = conn.execute(
                "INSERT INTO alerts (device_id, kind, district, rule, severity, opened_at, closed_at, value,"
                " peak_value, close_value, detail) VALUES (%s, %s, %s, %s, %s, %s, %s, 80, 90, %s, %s)"
                " RETURNING id",
                (device, kind, district, rule, severity, opened, closed, 30 if closed else None, name),
            ).fetchone()
            assert row is not None
            ids[name] = row[0]
    # The settings fixture's broker: the API's live link must not reach for a machine-wide one.
    with serve_api(settings) as client:
        yield client, ids


def _names(client: httpx.Client, **params: Any) -> list[str]:
    response = client.get("/alerts", params=params)
    assert response.status_code == 200, response.text
    return [item["detail"] for item in response.json()["items"]]


def test_filters(served: Any) -> None:
    client, _ = served
    # Newest first by opening time.
    assert _names(client) == ["pm_open", "noise", "tilt", "rain", "pm_old"]
    assert _names(client, state="active") == ["pm_open", "tilt", "rain"]
    assert _names(client, state="closed") == ["noise", "pm_old"]
    assert _names(client, district="futian") == ["pm_open", "noise", "pm_old"]
    assert _names(client, district="luohu,baoan") == ["tilt", "rain"]
    assert _names(client, district=["luohu", "baoan"], state="active") == ["tilt", "rain"]
    assert _names(client, kind="air_station") == ["pm_open", "pm_old"]
    assert _names(client, device="pole-futian-0001") == ["noise"]
    assert _names(client, rule="pm25_high", state="active") == ["pm_open"]
    assert _names(client, severity="critical") == ["tilt", "rain"]
    # A window keeps the alerts open at some time in it: [T0+2.5h, T0+4.2h) overlaps noise, tilt
    # and rain (open), not pm_old (closed at T0+2h) nor pm_open (opened at T0+5h).
    window = {"from": (T0 + 2.5 * H).isoformat(), "to": (T0 + 4.2 * H).isoformat()}
    assert _names(client, **window) == ["noise", "tilt", "rain"]
    # Epoch milliseconds work too.
    assert _names(client, to=str(int((T0 + 1.5 * H).timestamp() * 1000))) == ["rain", "pm_old"]


def test_item_shape_and_detail(served: Any) -> None:
    client, ids = served
    body = client.get(f"/alerts/{ids['noise']}").json()
    assert body == {
        "id": ids["noise"],
        "device_id": "pole-futian-0001",
        "kind": "smart_pole",
        "district": "futian",
        "rule": "noise_high",
        "severity": "info",
        "state": "closed",
        "opened_at": "2026-03-01T04:00:00Z",
        "closed_at": "2026-03-01T04:30:00Z",
        "value": 80.0,
        "peak_value": 90.0,
        "close_value": 30.0,
        "detail": "noise",
    }
    missing = client.get("/alerts/999999")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "alert_not_found"


def test_cursor_pagination_walks_everything_once(served: Any) -> None:
    client, _ = served
    seen: list[str] = []
    cursor = None
    for _ in range(10):
        params: dict[str, Any] = {"limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = client.get("/alerts", params=params).json()
        seen += [item["detail"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ["pm_open", "noise", "tilt", "rain", "pm_old"]


_ERRORS: list[tuple[dict[str, Any], int, str]] = [
    ({"district": "atlantis"}, 400, "unknown_district"),
    ({"kind": "spaceship"}, 400, "unknown_kind"),
    ({"state": "sleeping"}, 422, "invalid_parameter"),
    ({"from": "yesterday"}, 400, "invalid_time"),
    ({"from": "2026-03-02T00:00:00Z", "to": "2026-03-01T00:00:00Z"}, 400, "invalid_time"),
    ({"cursor": "bm90LWEtY3Vyc29y"}, 400, "bad_cursor"),
    ({"limit": 0}, 422, "invalid_parameter"),
]


def test_errors(served: Any) -> None:
    client, _ = served
    for params, status, code in _ERRORS:
        response = client.get("/alerts", params=params)
        assert response.status_code == status, (params, response.text)
        assert response.json()["error"]["code"] == code, params
