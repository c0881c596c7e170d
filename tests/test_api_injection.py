"""Injection strings in every path and query parameter (and top-level body field) of every route
in the app's own OpenAPI schema: the answer is 2xx or 4xx, never 5xx, and the data survives.

The routes come from /openapi.json, so routes added later are swept without touching this file.
Requests carry an admin key so writes get past authentication to the handlers.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from typing import Any
from urllib.parse import quote

import httpx
import orjson
import psycopg
import pytest
from apiserver import serve_api
from psycopg.types.json import Jsonb

from api.keys import hash_secret, new_token
from cityneuron.servers import MosquittoBroker
from cityneuron.settings import ApiSettings, DatabaseSettings, MqttSettings, Settings

DEVICE = "pole-futian-0001"
INJECTIONS = (
    "' OR 1=1 --",
    '"; DROP TABLE devices; --',
    "1); DELETE FROM api_keys; --",
    "1' AND pg_sleep(5) IS NULL --",
    "Ωμέγα 中文 🏙️ \u202e \ufeff",
    "x" * 4000,
    "9" * 40,
    "../../../etc/passwd",
    "..%2f..%2fadmin",
    "a\x00b",
    "%00",
    '{"$gt": ""}',
    "[1, 2, {}]",
    "-1",
    "1e309",
    "NaN",
    "%",
    "_*\\",
    " ",
    "",
)
# Plausible values for the parameters not under test, by name; others use the schema's example.
BASELINE = {
    "device_id": DEVICE,
    "device": DEVICE,
    "district": "futian",
    "kind": "smart_pole",
    "metric": "pm25",
    "key_id": "0" * 12,
    "alert_id": "1",
    "command_id": "c-0",
}


def _resolve(schema: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        schema = spec["components"]["schemas"][name]
    return schema


def _example(param: dict[str, Any], spec: dict[str, Any]) -> Any:
    if param["name"] in BASELINE:
        return BASELINE[param["name"]]
    if "example" in param:
        return param["example"]
    if isinstance(param.get("examples"), dict) and param["examples"]:
        return next(iter(param["examples"].values())).get("value", "1")
    schema = _resolve(param.get("schema", {}), spec)
    for candidate in (schema, *(_resolve(s, spec) for s in schema.get("anyOf", []))):
        if candidate.get("examples"):
            return candidate["examples"][0]
        if "enum" in candidate:
            return candidate["enum"][0]
        if "default" in candidate and candidate["default"] is not None:
            return candidate["default"]
    return "1"


def _sample_body(schema: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    schema = _resolve(schema, spec)
    if schema.get("examples"):
        return dict(schema["examples"][0])
    body: dict[str, Any] = {}
    for name, prop in schema.get("properties", {}).items():
        prop = _resolve(prop, spec)
        if prop.get("examples"):
            body[name] = prop["examples"][0]
        elif "enum" in prop:
            body[name] = prop["enum"][0]
        else:
            body[name] = {"string": "x", "integer": 1, "number": 1, "boolean": True, "object": {}}.get(
                prop.get("type", "string"), "x"
            )
    return body


@dataclass(frozen=True)
class _Operation:
    method: str
    path: str
    params: list[dict[str, Any]]
    path_values: dict[str, Any]
    required_query: dict[str, Any]
    body: dict[str, Any] | None

    def url(self, **override: Any) -> str:
        path = self.path
        for name, value in {**self.path_values, **override}.items():
            path = path.replace("{" + name + "}", quote(str(value), safe=""))
        return path


def _operations(spec: dict[str, Any]) -> Iterator[_Operation]:
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            params = operation.get("parameters", [])
            content = operation.get("requestBody", {}).get("content", {})
            body_schema = content.get("application/json", {}).get("schema")
            yield _Operation(
                method=method.upper(),
                path=path,
                params=[p for p in params if p["in"] in ("path", "query")],
                path_values={p["name"]: _example(p, spec) for p in params if p["in"] == "path"},
                required_query={
                    p["name"]: _example(p, spec) for p in params if p["in"] == "query" and p.get("required")
                },
                body=_sample_body(body_schema, spec) if body_schema else None,
            )


def _requests(spec: dict[str, Any]) -> Iterator[tuple[str, str, str, dict[str, Any], Any]]:
    """(method, url, what, query, body) for every parameter of every operation and every string."""
    for op in _operations(spec):
        for param in op.params:
            name = param["name"]
            for value in INJECTIONS:
                if param["in"] == "query":
                    yield op.method, op.url(), name, {**op.required_query, name: value}, op.body
                elif value.strip():  # an empty segment is another route (or a redirect), not this one
                    yield op.method, op.url(**{name: value}), name, op.required_query, op.body
        for field, example in (op.body or {}).items():
            for value in INJECTIONS:
                injected = {value: value} if isinstance(example, dict) else value
                yield (
                    op.method,
                    op.url(),
                    f"body.{field}",
                    op.required_query,
                    {**(op.body or {}), field: injected},
                )


def _wait_until_ready(client: httpx.Client, spec: dict[str, Any]) -> None:
    """Baseline requests until none answers 503: the API's broker link connects in the background."""
    waiting = list(_operations(spec))
    deadline = time.monotonic() + 20
    while waiting and time.monotonic() < deadline:
        still = []
        for op in waiting:
            with client.stream(op.method, op.url(), params=op.required_query, json=op.body) as response:
                if response.status_code == 503:
                    still.append(op)
        waiting = still
        if waiting:
            time.sleep(0.2)


def _seed(database: DatabaseSettings) -> str:
    """One smart pole, and an admin key; returns the key's token."""
    key_id, secret, token = new_token()
    with psycopg.connect(database.url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO devices (device_id, kind, district, lat, lon, installed, meta)"
            " VALUES (%s, 'smart_pole', 'futian', 22.54, 114.05, %s, %s)",
            (DEVICE, date(2024, 5, 1), Jsonb({})),
        )
        conn.execute(
            "INSERT INTO api_keys (key_id, name, scopes, secret_hash) VALUES (%s, 'sweep', %s, %s)",
            (key_id, ["admin"], hash_secret(secret)),
        )
    return token


@pytest.fixture
def sweep_client(database: DatabaseSettings, broker: MosquittoBroker) -> Iterator[httpx.Client]:
    token = _seed(database)
    settings = Settings(
        mqtt=MqttSettings(port=broker.port),
        database=database,
        api=ApiSettings(rate_limit_per_s=1e6, rate_limit_burst=1_000_000),
    )
    with serve_api(settings) as client:
        client.headers["Authorization"] = f"Bearer {token}"
        yield client


def test_injection_strings_never_cause_5xx(sweep_client: httpx.Client, database: DatabaseSettings) -> None:
    spec = orjson.loads(sweep_client.get("/openapi.json").content)
    _wait_until_ready(sweep_client, spec)
    failures: list[str] = []
    count = 0
    for method, url, what, query, body in _requests(spec):
        count += 1
        # stream(): an endless route (Server-Sent Events) answers with its status, then is closed.
        with sweep_client.stream(method, url, params=query, json=body) as response:
            status = response.status_code
            detail = "" if status < 500 else response.read().decode(errors="replace")[:200]
        if not (200 <= status < 300 or 400 <= status < 500):
            failures.append(
                f"{method} {url[:80]} {what}={str(query.get(what, ''))[:40]!r}: {status} {detail}"
            )
    assert count > 500, f"only {count} requests: is the schema empty?"
    assert not failures, f"{len(failures)} of {count} requests failed:\n" + "\n".join(failures[:40])

    with psycopg.connect(database.url) as conn:
        assert conn.execute("SELECT count(*) FROM devices").fetchone() == (1,)
        assert conn.execute("SELECT count(*) FROM api_keys WHERE revoked_at IS NULL").fetchone()[0] >= 1  # type: ignore[index]
