"""API keys: token format, hashing, the ``api_keys`` table, and a verifier with a short cache.

A token is ``cn_<key_id>_<secret>``: ``key_id`` (12 hex digits) names the row, ``secret`` is 32
random bytes, urlsafe base64. Only ``hmac-sha256$<salt>$<digest>`` of the secret is stored.

Why HMAC-SHA256 and not bcrypt/scrypt/argon2: slow hashes exist to make guessing *low-entropy*
passwords expensive. A 256-bit random secret cannot be guessed however fast the hash is, so a slow
hash buys nothing here, while it would cost ~100 ms of CPU on every cache miss and hand anyone
with a made-up token a cheap way to burn the API's CPU. The per-key salt keeps equal secrets from
having equal hashes and makes a stolen table useless for precomputed lookups.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row

from api.db import ApiPool, AsyncConn, pooled_connection
from cityneuron.errors import ConfigError

log = logging.getLogger("cityneuron.api")

TOKEN_PREFIX = "cn"
# Verified keys are reused this long without asking the database; so a key revoked through
# another API worker (or the CLI) stops working within this many seconds. The worker that
# serves DELETE /admin/keys/{key_id} forgets the key at once.
KEY_CACHE_TTL_S = 10.0
_SECRET_BYTES = 32
_KEY_ID_HEX_DIGITS = 12
_KEY_ID_RE = re.compile(rf"[0-9a-f]{{{_KEY_ID_HEX_DIGITS}}}")
_SECRET_RE = re.compile(r"[A-Za-z0-9_-]{40,64}")
_HASH_SCHEME = "hmac-sha256"
_SALT_BYTES = 16
# Longer than any token we issue; longer input is refused before any parsing.
_MAX_TOKEN_CHARS = 128


class Scope(StrEnum):
    """What a key may do; each scope includes the ones below it (admin > write > read)."""

    READ = "read"
    WRITE = "write"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        return _RANKS[self]


_RANKS = {Scope.READ: 0, Scope.WRITE: 1, Scope.ADMIN: 2}
_SCOPE_NAMES = frozenset(s.value for s in Scope)


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A key as shown to administrators: never the secret nor its hash."""

    key_id: str
    name: str
    scopes: tuple[Scope, ...]
    created_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None

    def allows(self, needed: Scope) -> bool:
        """True when one of the key's scopes is ``needed`` or includes it."""
        return self.revoked_at is None and any(scope.rank >= needed.rank for scope in self.scopes)


@dataclass(frozen=True, slots=True)
class CreatedKey:
    key: ApiKey
    token: str  # shown once, at creation; not recoverable afterwards


# --- tokens and hashes --------------------------------------------------------------------------


def new_token() -> tuple[str, str, str]:
    """A fresh ``(key_id, secret, token)``."""
    key_id = secrets.token_hex(_KEY_ID_HEX_DIGITS // 2)
    secret = secrets.token_urlsafe(_SECRET_BYTES)
    return key_id, secret, f"{TOKEN_PREFIX}_{key_id}_{secret}"


def parse_token(token: str) -> tuple[str, str] | None:
    """``(key_id, secret)`` of a well-formed token, else None."""
    if len(token) > _MAX_TOKEN_CHARS:
        return None
    prefix, _, rest = token.partition("_")
    key_id, _, secret = rest.partition("_")
    if prefix != TOKEN_PREFIX or not _KEY_ID_RE.fullmatch(key_id) or not _SECRET_RE.fullmatch(secret):
        return None
    return key_id, secret


def hash_secret(secret: str, salt: bytes | None = None) -> str:
    """``hmac-sha256$<salt hex>$<digest hex>`` of ``secret`` with a new (or the given) salt."""
    salt = secrets.token_bytes(_SALT_BYTES) if salt is None else salt
    digest = hmac.new(salt, secret.encode(), hashlib.sha256).hexdigest()
    return f"{_HASH_SCHEME}${salt.hex()}${digest}"


def secret_matches(secret: str, stored_hash: str) -> bool:
    """Whether ``secret`` hashes to ``stored_hash``; constant time in the secret."""
    scheme, _, rest = stored_hash.partition("$")
    salt_hex, _, _digest = rest.partition("$")
    if scheme != _HASH_SCHEME:
        return False
    try:
        salt = bytes.fromhex(salt_hex)
    except ValueError:
        return False
    return hmac.compare_digest(hash_secret(secret, salt).encode(), stored_hash.encode())


# --- the api_keys table -------------------------------------------------------------------------


def _api_key(row: dict[str, Any]) -> ApiKey:
    return ApiKey(
        key_id=row["key_id"],
        name=row["name"],
        scopes=tuple(Scope(s) for s in row["scopes"] if s in _SCOPE_NAMES),
        created_at=row["created_at"],
        revoked_at=row["revoked_at"],
        last_used_at=row["last_used_at"],
    )


async def create_key(conn: AsyncConn, name: str, scopes: Sequence[Scope]) -> CreatedKey:
    """Store a new key with ``scopes``; the returned token is the only copy of its secret."""
    key_id, secret, token = new_token()
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "INSERT INTO api_keys (key_id, name, scopes, secret_hash) VALUES (%s, %s, %s, %s)"
            " RETURNING key_id, name, scopes, created_at, revoked_at, last_used_at",
            (key_id, name, [str(s) for s in scopes], hash_secret(secret)),
        )
        row = await cur.fetchone()
    assert row is not None
    key = _api_key(row)
    log.info("API key %s (%s) created with scopes %s", key.key_id, key.name, ",".join(key.scopes))
    return CreatedKey(key=key, token=token)


async def list_keys(conn: AsyncConn) -> list[ApiKey]:
    """Every key, revoked ones included, oldest first."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "SELECT key_id, name, scopes, created_at, revoked_at, last_used_at FROM api_keys"
            " ORDER BY created_at, key_id"
        )
        return [_api_key(row) for row in await cur.fetchall()]


async def revoke_key(conn: AsyncConn, key_id: str) -> ApiKey | None:
    """Revoke ``key_id`` (a no-op when already revoked); None when there is no such key."""
    if not _KEY_ID_RE.fullmatch(key_id):
        return None
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE key_id = %s"
            " RETURNING key_id, name, scopes, created_at, revoked_at, last_used_at",
            (key_id,),
        )
        row = await cur.fetchone()
    if row is None:
        return None
    log.info("API key %s (%s) revoked", row["key_id"], row["name"])
    return _api_key(row)


async def _load_key(conn: AsyncConn, key_id: str) -> tuple[ApiKey, str] | None:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "SELECT key_id, name, scopes, created_at, revoked_at, last_used_at, secret_hash"
            " FROM api_keys WHERE key_id = %s",
            (key_id,),
        )
        row = await cur.fetchone()
    return None if row is None else (_api_key(row), row["secret_hash"])


async def _touch(conn: AsyncConn, key_id: str) -> None:
    await conn.execute("UPDATE api_keys SET last_used_at = now() WHERE key_id = %s", (key_id,))


# --- verification -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Cached:
    key: ApiKey
    secret_hash: str
    loaded_at: float


class KeyVerifier:
    """Checks presented tokens against the table, keeping found keys for ``ttl_s`` seconds.

    Only keys that exist are cached (so the cache is bounded by the table), revoked ones included
    so a revoked key hammering the API costs no queries. ``last_used_at`` is written when a key
    is (re)loaded, so it is exact to within ``ttl_s`` at a cost of one UPDATE per key per TTL.
    """

    def __init__(self, ttl_s: float | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl_s = KEY_CACHE_TTL_S if ttl_s is None else ttl_s
        self._clock = clock
        self._cache: dict[str, _Cached] = {}

    async def verify(self, pool: ApiPool, connect_timeout_s: float, token: str) -> ApiKey | None:
        """The active key ``token`` belongs to, or None (malformed, unknown, wrong secret, revoked).

        Raises DatabaseUnavailable when the key has to be loaded and the database is down.
        """
        parsed = parse_token(token)
        if parsed is None:
            return None
        key_id, secret = parsed
        cached = self._fresh(key_id)
        if cached is None:
            cached = await self._load(pool, connect_timeout_s, key_id, secret)
            if cached is None:
                return None
        if cached.key.revoked_at is not None or not secret_matches(secret, cached.secret_hash):
            return None
        return cached.key

    def needs_lookup(self, token: str) -> bool:
        """Whether verifying ``token`` would query the database (a well-formed token not cached)."""
        parsed = parse_token(token)
        return parsed is not None and not self._fresh(parsed[0])

    def forget(self, key_id: str) -> None:
        """Drop ``key_id`` from the cache, so its next use reads the table."""
        self._cache.pop(key_id, None)

    def _fresh(self, key_id: str) -> _Cached | None:
        cached = self._cache.get(key_id)
        if cached is None or self._clock() - cached.loaded_at >= self._ttl_s:
            return None
        return cached

    async def _load(
        self, pool: ApiPool, connect_timeout_s: float, key_id: str, secret: str
    ) -> _Cached | None:
        async with pooled_connection(pool, connect_timeout_s) as conn:
            found = await _load_key(conn, key_id)
            if found is None:
                self._cache.pop(key_id, None)
                return None
            key, secret_hash = found
            if key.revoked_at is None and secret_matches(secret, secret_hash):
                await _touch(conn, key_id)
        cached = _Cached(key=key, secret_hash=secret_hash, loaded_at=self._clock())
        self._cache[key_id] = cached
        return cached


def ensure_token_file(database_url: str, path: Path, name: str, scopes: Sequence[Scope]) -> bool:
    """Create a key with ``scopes`` and write its token to ``path`` (0600), unless the file exists
    and its key is still valid there. Returns True when a new key was made (``cityneuron up``)."""
    existing = path.read_text().strip() if path.exists() else ""
    parsed = parse_token(existing) if existing else None
    try:
        with psycopg.connect(database_url, autocommit=True) as conn:
            if parsed is not None:
                row = conn.execute(
                    "SELECT secret_hash FROM api_keys WHERE key_id = %s AND revoked_at IS NULL", (parsed[0],)
                ).fetchone()
                if row is not None and secret_matches(parsed[1], row[0]):
                    return False
            key_id, secret, token = new_token()
            conn.execute(
                "INSERT INTO api_keys (key_id, name, scopes, secret_hash) VALUES (%s, %s, %s, %s)",
                (key_id, name, [str(s) for s in scopes], hash_secret(secret)),
            )
    except psycopg.Error as exc:
        raise ConfigError(f"cannot create the API key {name!r}: {exc}") from exc
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(token + "\n")
    log.info("API key %s (%s) written to %s", key_id, name, path)
    return True
