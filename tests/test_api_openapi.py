"""The OpenAPI document and the documentation page: served without internet, examples that are real.

No database or broker is needed: the app is built but its lifespan is not started, and only
routes that touch neither are called.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from cityneuron.settings import Settings
from cityneuron.stack import city_device_ids
from ingest.alerts.rules import load_rules


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    # No ``with``: the lifespan (pool, broker link) does not run.
    yield TestClient(create_app(Settings()))


class _Links(HTMLParser):
    """Every URL a page makes the browser fetch: src, href, and URLs written in inline scripts."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._in_script = tag == "script"
        self.urls += [value for name, value in attrs if name in ("src", "href") and value]

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script:
            self.urls += re.findall(r"""['"]((?:https?:)?//[^'"]+|/[^'"\s]*)['"]""", data)


def test_docs_page_needs_no_internet(client: TestClient) -> None:
    page = client.get("/docs")
    assert page.status_code == 200
    links = _Links()
    links.feed(page.text)
    assert links.urls, "the page references its assets"
    remote = [u for u in links.urls if re.match(r"^(https?:)?//", u)]
    assert not remote, f"/docs loads from the internet: {remote}"
    # Every asset it references is served, with content.
    for url in links.urls:
        answer = client.get(url)
        assert answer.status_code == 200, f"{url}: {answer.status_code}"
        assert answer.content, url
    js = [u for u in links.urls if u.endswith(".js")]
    assert js and client.get(js[0]).headers["content-type"].startswith(
        ("application/javascript", "text/javascript")
    )
    # The vendored release ships with its licence, served next to it.
    assert "Apache License" in client.get("/static/vendor/swagger-ui/LICENSE").text
    # ReDoc would need a CDN: it is off rather than blank.
    assert client.get("/redoc").status_code == 404


def test_static_assets_open_when_reads_need_a_key() -> None:
    settings = Settings(api={"read_requires_key": True})  # type: ignore[arg-type]
    client = TestClient(create_app(settings))
    assert client.get("/docs").status_code == 200
    assert client.get("/static/vendor/swagger-ui/swagger-ui.css").status_code == 200
    assert client.get("/devices").status_code == 401


def _examples(node: Any, key: str) -> Iterator[Any]:
    """Every value under ``key`` anywhere in ``node`` (examples nest in schemas and parameters)."""
    if isinstance(node, dict):
        for k, v in node.items():
            if k == key and not isinstance(v, dict | list):
                yield v
            yield from _examples(v, key)
    elif isinstance(node, list):
        for item in node:
            yield from _examples(item, key)


def _parameter_examples(document: dict[str, Any], name: str) -> list[Any]:
    found = []
    for operations in document["paths"].values():
        for operation in operations.values():
            for parameter in operation.get("parameters", []):
                if parameter["name"] == name:
                    found += parameter["schema"].get("examples", [])
    return found


def test_examples_name_real_devices_and_rules(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    city = set(city_device_ids(Settings()))
    device_ids = set(_examples(document, "device_id")) | set(_parameter_examples(document, "device_id"))
    # SSE example payloads are JSON inside a string.
    for text in _examples(document, "example"):
        if isinstance(text, str):
            device_ids |= set(re.findall(r'"device_id":"([^"]+)"', text))
    assert device_ids, "the document has device examples"
    assert not device_ids - city, f"example devices the default city does not have: {device_ids - city}"

    rules = load_rules()
    thresholds = {r.name: r for r in rules.thresholds}
    rule_names = set(_examples(document, "rule")) | set(_parameter_examples(document, "rule"))
    assert rule_names and not rule_names - set(rules.names), f"unknown rules: {rule_names - set(rules.names)}"
    alert = document["components"]["schemas"]["AlertOut"]["examples"][0]
    rule = thresholds[alert["rule"]]
    assert alert["kind"] in rule.kinds and alert["severity"] == rule.severity
    assert alert["device_id"].split("-")[1] == alert["district"]
    assert (
        rule.opens(alert["value"])
        and alert["detail"] == f"{rule.metric} {alert['value']:g} {rule.direction} {rule.open_at:g}"
    )


def test_websocket_protocol_is_documented(client: TestClient) -> None:
    from api.routers import streams

    document = client.get("/openapi.json").json()
    tags = {t["name"]: t.get("description", "") for t in document.get("tags", [])}
    described = tags.get("streams", "")
    assert "/ws" in described and "/ws" in document["info"]["description"]
    # Every message type the route sends or accepts is in the table / the client section.
    source = Path(streams.__file__).read_text().replace(streams.WS_PROTOCOL, "")
    sent = set(re.findall(r'"type": "(\w+)"', source))
    sent = (sent - {"string"}) | {"reading", "alert"}  # "string": the SSE schema, not a message
    assert sent >= {"ready", "missed", "heartbeat", "subscribed", "pong", "error"}
    for message_type in sent:
        assert f"| `{message_type}` |" in described, message_type
    for action in re.findall(r'"action"\) == "(\w+)"|"action"\) != "(\w+)"', source):
        name = next(a for a in action if a)
        assert f'{{"action": "{name}"' in described, name
    # docs/api.md carries the same text.
    docs = (Path(__file__).parents[1] / "docs" / "api.md").read_text()
    assert streams.WS_PROTOCOL.strip() in docs, "docs/api.md is out of step with WS_PROTOCOL"
