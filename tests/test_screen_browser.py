"""The operations screen in a real headless Chromium against a real `cityneuron up` stack.

One stack and one page for the module (starting them takes ~30 s); the tests run in file order
and the last one checks every request the page made went to 127.0.0.1 only.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx
import paho.mqtt.client as paho
import pytest
from browser import Browser, chromium
from paho.mqtt.enums import CallbackAPIVersion
from stackproc import Stack, running_stack

from cityneuron import contract
from cityneuron.credentials import device_password, read_device_key


def _wait(
    predicate: Callable[[], Any],
    timeout_s: float,
    what: str,
    every_s: float = 0.25,
    on_timeout: Callable[[], Any] | None = None,
) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(every_s)
    seen = f" (saw {on_timeout()})" if on_timeout is not None else ""
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}{seen}")


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    # The simulator starts 70 simulated minutes ago at 60x and then keeps pace with the clock:
    # within about a minute every air station has an hourly value (so districts have an AQI),
    # and from then on the city runs in real time (tens of readings a second, not hundreds).
    start = (datetime.now(tz=UTC) - timedelta(minutes=70)).strftime("%Y-%m-%dT%H:%M:%SZ")
    with running_stack("--speed", "60", "--start", start) as running:
        yield running


@pytest.fixture(scope="module")
def api(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.api, timeout=10) as client:
        # The registry fills from the devices' retained statuses: wait until the city is complete.
        _wait(lambda: client.get("/city/overview").json()["devices"]["total"] >= 3050, 90, "the small city")
        yield client


@pytest.fixture(scope="module")
def page(stack: Stack, api: httpx.Client) -> Iterator[Browser]:
    with chromium() as browser:
        browser.driver.get(f"{stack.api}/screen/?lang=en")
        _wait(
            lambda: browser.js(
                "return window.cityScreen && (window.cityScreen.ready || window.cityScreen.errors.length > 0)"
            ),
            30,
            "the screen",
        )
        assert browser.js("return window.cityScreen.errors") == []
        yield browser


def _devices_total(api: httpx.Client) -> int:
    total, cursor = 0, None
    while True:
        body = api.get("/devices", params={"limit": 1000, **({"cursor": cursor} if cursor else {})}).json()
        total += len(body["items"])
        cursor = body["next_cursor"]
        if cursor is None:
            return total


def test_up_banner_names_the_screen_first(stack: Stack) -> None:
    first = next(line for line in stack.banner.splitlines() if line.startswith("  "))
    assert f"{stack.api}/screen/" in first


def test_every_device_is_drawn(page: Browser, api: httpx.Client) -> None:
    total = _devices_total(api)
    assert total == 3050
    drawn = page.js("return window.cityScreen.map.drawn")
    assert drawn == total
    assert page.js("return document.getElementById('devices-total').dataset.total") == str(total)


def test_district_fill_is_the_api_aqi_colour(page: Browser, api: httpx.Client) -> None:
    # `up` prints its banner once the registry is in (by COPY), which can be before the air
    # stations' first reports are stored: wait for the first district AQI.
    def districts_with_aqi() -> dict[str, dict[str, Any]]:
        items = api.get("/city/aqi/districts").json()["items"]
        return {d["district"]: d for d in items if d["colour"] is not None}

    aqi = _wait(districts_with_aqi, 120, "a district AQI from the air stations' first reports")
    with_aqi = list(aqi)

    # The map polls the overview every 10 s: wait for its fills to match the API's categories.
    def fills_match() -> bool:
        fills = page.js("return window.cityScreen.map.fills")
        return all(fills.get(slug) == aqi[slug]["colour"] for slug in with_aqi)

    _wait(fills_match, 30, "district fills equal to the AQI category colours")
    slug = with_aqi[0]
    chip = page.js(
        f"return document.querySelector('#aqi-panel .chip[data-district=\"{slug}\"]').dataset.colour"
    )
    assert chip == aqi[slug]["colour"]
    # The pixel at the district's label point is its colour blended over the map background.
    sample = page.js(
        """const m = window.cityScreen.map, r = m.regions.find((x) => x.slug === arguments[0]);
        const [sx, sy] = m.toScreen(r.label[0], r.label[1] + 0.012);
        const dpr = window.devicePixelRatio || 1;
        return Array.from(m.ctx.getImageData(Math.round(sx * dpr), Math.round(sy * dpr), 1, 1).data);""",
        slug,
    )
    colour = aqi[slug]["colour"]
    want = [int(colour[i : i + 2], 16) for i in (1, 3, 5)]
    # The canvas is transparent under the fill (the dark ground is the page's): the pixel is the
    # category colour itself at the fill's opacity (0.34), give or take premultiplied rounding.
    assert all(abs(s - w) <= 3 for s, w in zip(sample[:3], want, strict=True)), (sample, want)
    assert abs(sample[3] - 0.34 * 255) <= 2, sample


def test_a_published_reading_reaches_the_live_feed(page: Browser, stack: Stack) -> None:
    device, district, kind = "wq-luohu-00001", "luohu", "water_quality_station"
    # Only water-quality stations in the feed (the map's kind filter applies to it and to the
    # readings stream): ten stations analysing every 4 h, so ours stays in view.
    page.js(
        "const s = document.getElementById('kind-filter'); s.value = arguments[0];"
        " s.dispatchEvent(new Event('change'));",
        kind,
    )
    _wait(
        lambda: page.js("return window.cityScreen.live.following") == kind,
        15,
        "the readings stream of that kind",
    )
    seq = 987_654
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"screen-test-{seq}")
    client.username_pw_set(
        device, device_password(read_device_key(stack.home / "secrets" / "device.key"), device)
    )
    port = int(stack.banner.split("mqtt://127.0.0.1:")[1].split()[0])
    connected = threading.Event()
    client.on_connect = lambda _c, _u, _f, reason, _p: reason.is_failure or connected.set()
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        assert connected.wait(10), "the device could not connect"
        payload = contract.encode_reading(contract.now_ms(), {"ph": 7.25, "do_mgl": 6.5}, seq=seq)
        client.publish(contract.device_topic(district, kind, device), payload, qos=1).wait_for_publish(10)
        _wait(
            lambda: page.js(
                f'return !!document.querySelector(\'#feed-panel .feed-item[data-device="{device}"][data-seq="{seq}"]\')'
            ),
            30,
            "the reading in the live feed",
            on_timeout=lambda: page.js(
                "const f = window.cityScreen.feed; return JSON.stringify([f.received, f.kind, f.items.slice(0, 3)])"
            ),
        )
    finally:
        client.loop_stop()
        client.disconnect()
    page.js(
        "const s = document.getElementById('kind-filter'); s.value = ''; s.dispatchEvent(new Event('change'));"
    )


def test_a_command_from_the_device_panel_is_acked(page: Browser, api: httpx.Client, stack: Stack) -> None:
    device = "pole-futian-00001"
    page.js(
        "const i = document.getElementById('search-input'); i.value = arguments[0];"
        " document.getElementById('search').requestSubmit();",
        device,
    )
    _wait(
        lambda: page.js("return !!document.querySelector('#device-panel #cmd-lamp')"), 15, "the device panel"
    )
    # Latest values carry units and times; the chart drew its points.
    _wait(
        lambda: page.js("return document.querySelectorAll('#dp-latest tr[data-metric]').length > 3"),
        15,
        "latest values",
    )
    _wait(
        lambda: page.js("return Number(document.getElementById('dp-chart').dataset.points || 0) > 0"),
        20,
        "the chart",
    )
    page.js(
        "const k = document.getElementById('cmd-key'); k.value = arguments[0]; k.dispatchEvent(new Event('change'));"
        " document.getElementById('cmd-level').value = '35'; document.getElementById('cmd-lamp').click();",
        stack.admin_token,
    )
    state = _wait(
        lambda: page.js(
            "const s = document.querySelector('#cmd-log .cmd-state'); return s && s.dataset.state !== 'pending' && s.dataset.state"
        ),
        30,
        "the command to leave pending",
    )
    assert state == "acked"
    # The key lives in this tab's sessionStorage only, never in localStorage.
    assert page.js("return sessionStorage.getItem('cityneuron.apiKey')") == stack.admin_token
    assert stack.admin_token not in str(page.js("return JSON.stringify(localStorage)"))
    commands = api.get(f"/devices/{device}/commands").json()["items"]
    assert commands[0]["state"] == "acked" and commands[0]["args"] == {"level": 35.0}


def test_an_unchanged_refresh_is_a_304(page: Browser) -> None:
    def states_304() -> bool:
        return any("/map/states" in r["url"] and r["status"] == 304 for r in page.responses())

    # The states poll runs every 5 s; a live city keeps every device online, so it stays 304.
    _wait(states_304, 30, "a 304 answer to the states poll", every_s=1)


def test_density_mode_then_single_devices_when_zoomed_in(
    page: Browser, stack: Stack, api: httpx.Client
) -> None:
    total = api.get("/city/overview").json()["devices"]["total"]
    # Pretend the city is too big to draw dot by dot: density bins counted by the database.
    page.driver.get(f"{stack.api}/screen/?lang=en&max_drawn=500")
    _wait(lambda: page.js("return !!(window.cityScreen && window.cityScreen.ready)"), 30, "the screen")
    bins = page.js(
        "const b = window.cityScreen.map.bins; return b && [b.n.reduce((a, n) => a + n, 0), b.x.length]"
    )
    assert bins is not None and bins[0] == total and bins[1] > 10
    # Zoom into Futian: few enough devices in view, so their positions come for that bbox only.
    page.js(
        """const m = window.cityScreen.map, r = m.regions.find((x) => x.slug === 'futian');
        m.view.cx = r.label[0]; m.view.cy = r.label[1]; m.view.scale *= 25; m.onView();"""
    )
    _wait(lambda: page.js("return window.cityScreen.map.bins === null"), 15, "single devices")
    count = page.js("return window.cityScreen.data.store.count")
    assert 0 < count <= 500
    assert page.js("return window.cityScreen.map.drawn") > 0


def test_no_request_leaves_the_machine(page: Browser) -> None:
    urls = [urlsplit(u) for u in page.requests()]
    network = [u for u in urls if u.scheme in ("http", "https", "ws", "wss")]
    assert len(network) > 10
    assert {u.hostname for u in network} == {"127.0.0.1"}, network
    # Anything else is the browser's own pages (chrome://new-tab-page before navigation) or inline.
    # chrome-untrusted:// is the new-tab page's own frames (Chromium 156 in a fresh root).
    assert {u.scheme for u in urls} <= {"http", "chrome", "chrome-untrusted", "data", "blob"}, urls
