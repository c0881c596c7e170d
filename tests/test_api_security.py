"""API keys, scopes, rate limits, body size limits, CORS and log hygiene, against a real
PostgreSQL and the app served by uvicorn. Keys are made with the ``cityneuron apikey`` CLI, the
way an operator makes the first admin key.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
import websockets.exceptions
import websockets.sync.client
from apiserver import serve_api

import api.keys
from api.keys import ApiKey, Scope, hash_secret, parse_token, secret_matches
from api.ratelimit import RateLimiter, retry_after_header
from cityneuron.cli import main as cli_main
from cityneuron.servers import MosquittoBroker
from cityneuron.settings import ApiSettings, DatabaseSettings, MqttSettings, Settings


def _settings(database: DatabaseSettings, broker: MosquittoBroker, **api: Any) -> Settings:
    return Settings(
        mqtt=MqttSettings(port=broker.port),
        database=database.model_copy(update={"connect_timeout_s": 2.0}),
        api=ApiSettings(**api),
    )


def _cli(capsys: pytest.CaptureFixture[str], database: DatabaseSettings, *args: str) -> tuple[int, str]:
    capsys.readouterr()
    status = cli_main(["apikey", *args, "--database-url", database.url])
    return status, capsys.readouterr().out


def _new_key(capsys: pytest.CaptureFixture[str], database: DatabaseSettings, scope: str) -> str:
    status, out = _cli(capsys, database, "create", "--name", f"test {scope}", "--scope", scope)
    assert status == 0
    token = out.strip().splitlines()[-1]
    assert parse_token(token) is not None
    return token


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = orjson.loads(response.content)
    assert body["error"]["code"] == code, body
    return body


def _write_routes(client: httpx.Client) -> list[str]:
    """Paths with a POST outside /admin (commands, once that router exists)."""
    spec = orjson.loads(client.get("/openapi.json").content)
    return [p for p, ops in spec["paths"].items() if "post" in ops and not p.startswith("/admin")]


@pytest.fixture
def keys(capsys: pytest.CaptureFixture[str], database: DatabaseSettings) -> dict[str, str]:
    return {scope.value: _new_key(capsys, database, scope.value) for scope in Scope}


@pytest.fixture
def client(database: DatabaseSettings, broker: MosquittoBroker) -> Iterator[httpx.Client]:
    with serve_api(_settings(database, broker)) as c:
        yield c


# --- tokens, hashes, scopes, buckets (no server) ------------------------------------------------


def test_token_format_and_hash() -> None:
    key_id, secret, token = api.keys.new_token()
    assert token == f"cn_{key_id}_{secret}"
    assert parse_token(token) == (key_id, secret)
    for bad in (
        "",
        "cn_",
        f"xx_{key_id}_{secret}",
        f"cn_{key_id.upper()}_{secret}",
        f"cn_{key_id}_short",
        token + "x" * 100,
    ):
        assert parse_token(bad) is None, bad
    stored = hash_secret(secret)
    assert secret not in stored and stored.startswith("hmac-sha256$")
    assert secret_matches(secret, stored)
    assert not secret_matches(secret[:-1] + ("A" if secret[-1] != "A" else "B"), stored)
    assert hash_secret(secret) != stored, "each hash has its own salt"
    assert not secret_matches(secret, "bcrypt$whatever")


def test_scopes_include_the_lower_ones() -> None:
    def key(*scopes: Scope, revoked: bool = False) -> ApiKey:
        from datetime import UTC, datetime

        now = datetime.now(tz=UTC)
        return ApiKey("0" * 12, "k", scopes, now, now if revoked else None, None)

    assert key(Scope.ADMIN).allows(Scope.WRITE) and key(Scope.ADMIN).allows(Scope.READ)
    assert key(Scope.WRITE).allows(Scope.READ) and not key(Scope.WRITE).allows(Scope.ADMIN)
    assert not key(Scope.READ).allows(Scope.WRITE)
    assert not key(Scope.ADMIN, revoked=True).allows(Scope.READ)


def test_token_bucket() -> None:
    now = [100.0]
    limiter = RateLimiter(rate_per_s=2.0, burst=3, clock=lambda: now[0])
    assert [limiter.acquire("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.acquire("a") == pytest.approx(0.5)
    assert limiter.acquire("b") == 0.0, "callers have separate buckets"
    now[0] += 0.5
    assert limiter.acquire("a") == 0.0
    assert limiter.acquire("a") > 0
    now[0] += 60
    assert [limiter.acquire("a") for _ in range(3)] == [0.0, 0.0, 0.0], "refills up to the burst only"
    assert limiter.acquire("a") > 0
    assert retry_after_header(0.01) == "1" and retry_after_header(1.2) == "2"


# --- keys and scopes ----------------------------------------------------------------------------


def test_writes_need_a_key_with_the_scope(client: httpx.Client, keys: dict[str, str]) -> None:
    body = {"name": "dashboard", "scope": "read"}
    missing = client.post("/admin/keys", json=body)
    _error(missing, 401, "missing_api_key")
    assert missing.headers["www-authenticate"].startswith("Bearer")
    _error(client.post("/admin/keys", json=body, headers=_bearer(keys["read"])), 403, "insufficient_scope")
    forbidden = client.post("/admin/keys", json=body, headers=_bearer(keys["write"]))
    _error(forbidden, 403, "insufficient_scope")
    assert 'scope="admin"' in forbidden.headers["www-authenticate"]
    assert client.post("/admin/keys", json=body, headers=_bearer(keys["admin"])).status_code == 201
    assert client.post("/admin/keys", json=body, headers={"X-API-Key": keys["admin"]}).status_code == 201
    _error(client.get("/admin/keys"), 401, "missing_api_key")
    _error(client.get("/admin/keys", headers=_bearer(keys["write"])), 403, "insufficient_scope")

    # Every other write route (commands): 401 without a key, 403 with a read key, past auth with write.
    for path in _write_routes(client):
        url = path.replace("{device_id}", "pole-futian-0001")
        command = {"command": "set_lamp_level", "args": {"level": 50}}
        _error(client.post(url, json=command), 401, "missing_api_key")
        _error(client.post(url, json=command, headers=_bearer(keys["read"])), 403, "insufficient_scope")
        written = client.post(url, json=command, headers=_bearer(keys["write"]))
        assert written.status_code not in (401, 403), written.text


def test_bad_tokens_are_refused(client: httpx.Client, keys: dict[str, str]) -> None:
    key_id, secret = parse_token(keys["admin"]) or ("", "")
    wrong_secret = f"cn_{key_id}_{'A' * len(secret)}"
    for headers in (
        _bearer("nonsense"),
        _bearer(wrong_secret),
        _bearer(f"cn_{'f' * 12}_{secret}"),
        {"Authorization": f"Basic {keys['admin']}"},
        {"X-API-Key": wrong_secret},
        {"Authorization": "Bearer"},
    ):
        refused = client.get("/admin/keys", headers=headers)
        _error(refused, 401, "invalid_api_key")
        assert 'error="invalid_token"' in refused.headers["www-authenticate"]
    # Unknown routes and methods stay 404/405 for anyone.
    _error(client.post("/devices"), 405, "method_not_allowed")
    _error(client.delete("/admin/nowhere"), 404, "not_found")


def test_admin_key_lifecycle(client: httpx.Client, keys: dict[str, str]) -> None:
    admin = _bearer(keys["admin"])
    created = client.post("/admin/keys", json={"name": "ops console", "scope": "write"}, headers=admin)
    assert created.status_code == 201
    new = orjson.loads(created.content)
    assert new["scopes"] == ["write"] and new["revoked_at"] is None
    token = new["token"]
    assert parse_token(token) == (new["key_id"], token.split("_", 2)[2])
    assert client.get("/admin/keys", headers=_bearer(token)).status_code == 403

    listed = client.get("/admin/keys", headers=admin)
    assert listed.status_code == 200
    items = {k["key_id"]: k for k in orjson.loads(listed.content)["items"]}
    assert len(items) == 4 and items[new["key_id"]]["name"] == "ops console"
    assert token not in listed.text and "hash" not in listed.text and "token" not in listed.text
    assert items[new["key_id"]]["last_used_at"] is not None, "used once above"
    admin_id = parse_token(keys["admin"])[0]  # type: ignore[index]
    assert items[admin_id]["last_used_at"] is not None

    revoked = client.delete(f"/admin/keys/{new['key_id']}", headers=admin)
    assert revoked.status_code == 200 and orjson.loads(revoked.content)["revoked_at"] is not None
    # This worker forgets the key at once.
    _error(
        client.post("/admin/keys", json={"name": "x", "scope": "read"}, headers=_bearer(token)),
        401,
        "invalid_api_key",
    )
    assert client.delete(f"/admin/keys/{new['key_id']}", headers=admin).status_code == 200, "idempotent"
    _error(client.delete(f"/admin/keys/{'0' * 12}", headers=admin), 404, "key_not_found")
    _error(
        client.post("/admin/keys", json={"name": "", "scope": "root"}, headers=admin),
        422,
        "invalid_parameter",
    )
    _error(
        client.post("/admin/keys", json={"name": "a\x00b", "scope": "read"}, headers=admin),
        422,
        "invalid_parameter",
    )


def test_revoked_elsewhere_stops_within_the_cache_time(
    capsys: pytest.CaptureFixture[str],
    database: DatabaseSettings,
    broker: MosquittoBroker,
    keys: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(api.keys, "KEY_CACHE_TTL_S", 1.0)
    write = _bearer(keys["admin"])
    with serve_api(_settings(database, broker)) as client:
        assert client.get("/admin/keys", headers=write).status_code == 200  # now cached
        # Revoked through the CLI, i.e. behind this worker's back.
        status, out = _cli(capsys, database, "revoke", parse_token(keys["admin"])[0])  # type: ignore[index]
        assert status == 0 and "revoked" in out
        time.sleep(1.1)
        _error(client.get("/admin/keys", headers=write), 401, "invalid_api_key")


def test_cli_lists_and_revokes(
    capsys: pytest.CaptureFixture[str], database: DatabaseSettings, keys: dict[str, str]
) -> None:
    status, out = _cli(capsys, database, "list", "--json")
    assert status == 0
    listed = [orjson.loads(line) for line in out.splitlines()]
    assert sorted(k["scopes"][0] for k in listed) == ["admin", "read", "write"]
    for token in keys.values():
        assert token not in out and token.split("_", 2)[2] not in out
    assert _cli(capsys, database, "revoke", "0" * 12)[0] == 1
    status, out = _cli(capsys, database, "list")
    assert status == 0 and out.count("active") == 3


# --- reads ----------------------------------------------------------------------------------------


def test_reads_open_by_default(client: httpx.Client) -> None:
    assert client.get("/devices").status_code == 200
    assert client.get("/openapi.json").status_code == 200


def test_reads_need_a_key_when_configured(
    database: DatabaseSettings, broker: MosquittoBroker, keys: dict[str, str]
) -> None:
    with serve_api(_settings(database, broker, read_requires_key=True)) as client:
        _error(client.get("/devices"), 401, "missing_api_key")
        _error(client.get("/devices", headers=_bearer("cn_nope")), 401, "invalid_api_key")
        assert client.get("/devices", headers=_bearer(keys["read"])).status_code == 200
        assert client.get("/devices", headers={"X-API-Key": keys["write"]}).status_code == 200
        for path in ("/health", "/openapi.json", "/docs"):
            assert client.get(path).status_code not in (401, 403), path


def test_websocket_follows_the_read_rule(
    database: DatabaseSettings, broker: MosquittoBroker, keys: dict[str, str]
) -> None:
    with serve_api(_settings(database, broker, read_requires_key=True)) as client:
        url = f"ws://{client.base_url.host}:{client.base_url.port}/ws"
        with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
            websockets.sync.client.connect(url, open_timeout=10).close()
        assert refused.value.response.status_code == 403
        with websockets.sync.client.connect(
            url, additional_headers=_bearer(keys["read"]), open_timeout=10
        ) as ws:
            assert orjson.loads(ws.recv(timeout=10))["type"] == "ready"


# --- rate limits and sizes ----------------------------------------------------------------------


def test_rate_limit_answers_429_and_recovers(
    database: DatabaseSettings, broker: MosquittoBroker, keys: dict[str, str]
) -> None:
    with serve_api(_settings(database, broker, rate_limit_per_s=1.0, rate_limit_burst=3)) as client:
        limited = None
        for _ in range(50):
            response = client.get("/devices")
            if response.status_code == 429:
                limited = response
                break
            assert response.status_code == 200
        assert limited is not None, "no 429 in 50 requests at 1/s with a burst of 3"
        _error(limited, 429, "too_many_requests")
        retry_after = int(limited.headers["retry-after"])
        assert retry_after >= 1
        # A key has its own bucket, apart from the anonymous caller's address.
        assert client.get("/devices", headers=_bearer(keys["read"])).status_code == 200
        time.sleep(retry_after)
        assert client.get("/devices").status_code == 200

        # Made-up tokens are throttled (before any database lookup), not answered 401 forever.
        time.sleep(2)  # the address's bucket gets a token or two back
        statuses = [
            client.post("/admin/keys", json={}, headers=_bearer(f"cn_{i:012x}_{'B' * 43}")).status_code
            for i in range(50)
        ]
        assert 401 in statuses and 429 in statuses


def test_oversized_bodies_get_413(client: httpx.Client, keys: dict[str, str]) -> None:
    admin = _bearer(keys["admin"])
    limit = ApiSettings().max_request_bytes
    big = orjson.dumps({"name": "x" * (limit + 10), "scope": "read"})
    declared = client.post("/admin/keys", content=big, headers={**admin, "Content-Type": "application/json"})
    _error(declared, 413, "payload_too_large")

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(big), 4096):
            yield big[i : i + 4096]

    streamed = client.post(
        "/admin/keys", content=chunks(), headers={**admin, "Content-Type": "application/json"}
    )
    assert "content-length" not in streamed.request.headers
    _error(streamed, 413, "payload_too_large")
    # Under the limit the same route works, streamed or not.
    small = orjson.dumps({"name": "y" * 100, "scope": "read"})
    assert (
        client.post(
            "/admin/keys", content=small, headers={**admin, "Content-Type": "application/json"}
        ).status_code
        == 201
    )
    assert (
        client.post(
            "/admin/keys", content=iter([small]), headers={**admin, "Content-Type": "application/json"}
        ).status_code
        == 201
    )


# --- CORS, OpenAPI, logs ------------------------------------------------------------------------


def test_cors_allow_list(database: DatabaseSettings, broker: MosquittoBroker) -> None:
    origins = ["http://dashboard.example", "*"]
    with serve_api(_settings(database, broker, cors_origins=origins)) as client:
        allowed = client.get("/devices", headers={"Origin": "http://dashboard.example"})
        assert allowed.headers["access-control-allow-origin"] == "http://dashboard.example"
        assert "access-control-allow-credentials" not in allowed.headers
        evil = client.get("/devices", headers={"Origin": "http://evil.example"})
        assert "access-control-allow-origin" not in evil.headers, "'*' is not honoured"
        preflight = client.options(
            "/admin/keys",
            headers={
                "Origin": "http://dashboard.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, content-type",
            },
        )
        assert preflight.status_code == 200
        assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
        # Refusals carry CORS headers, so a browser dashboard can read why.
        refused = client.post("/admin/keys", json={}, headers={"Origin": "http://dashboard.example"})
        assert refused.status_code == 401
        assert refused.headers["access-control-allow-origin"] == "http://dashboard.example"


def test_openapi_documents_the_security(client: httpx.Client) -> None:
    spec = orjson.loads(client.get("/openapi.json").content)
    schemes = spec["components"]["securitySchemes"]
    assert schemes["ApiKeyBearer"]["scheme"] == "bearer"
    assert schemes["ApiKeyHeader"] == {**schemes["ApiKeyHeader"], "in": "header", "name": "X-API-Key"}
    create = spec["paths"]["/admin/keys"]["post"]
    assert create["x-required-scope"] == "admin" and {"ApiKeyBearer": []} in create["security"]
    assert {"401", "403", "413", "429"} <= set(create["responses"])
    assert "security" not in spec["paths"]["/health"]["get"]
    assert "security" not in spec["paths"]["/devices"]["get"], "reads are open by default"
    for path in _write_routes(client):
        assert spec["paths"][path]["post"]["x-required-scope"] == "write"


def test_no_token_in_logs_or_errors(
    client: httpx.Client, keys: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    key_id, secret = parse_token(keys["admin"]) or ("", "")
    wrong = f"cn_{key_id}_{secret[::-1]}"
    bodies = []
    for headers in (
        _bearer(keys["admin"]),
        {"X-API-Key": keys["read"]},
        _bearer(wrong),
        _bearer(keys["write"]),
    ):
        for method, path in (("GET", "/admin/keys"), ("POST", "/admin/keys"), ("DELETE", "/admin/keys/zzz")):
            bodies.append(
                client.request(method, path, headers=headers, json={"name": "n", "scope": "read"}).text
            )
    created = client.post(
        "/admin/keys", json={"name": "logged", "scope": "write"}, headers=_bearer(keys["admin"])
    )
    new_token = orjson.loads(created.content)["token"]
    client.delete(f"/admin/keys/{parse_token(new_token)[0]}", headers=_bearer(keys["admin"]))  # type: ignore[index]
    assert client.get("/admin/keys", headers=_bearer(new_token)).status_code == 401

    logged = caplog.text
    assert "created" in logged and "revoked" in logged, "key events are logged (by id)"
    for token in (*keys.values(), wrong, new_token):
        secret_part = token.split("_", 2)[2]
        assert secret_part not in logged
        assert all(secret_part not in body for body in bodies)
