"""The connection pool and the mapping of database failures to API errors."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from weakref import WeakKeyDictionary

import orjson
import psycopg
from psycopg.types.json import set_json_loads
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from api.breaker import DatabaseBreaker, connection_class, first_line
from api.errors import ApiError, BadRequest, DatabaseUnavailable
from cityneuron.settings import DatabaseSettings

log = logging.getLogger("cityneuron.api")

# Bounds one request's database work; a runaway aggregate must not hold a pooled connection.
STATEMENT_TIMEOUT_MS = 30_000

AsyncConn = psycopg.AsyncConnection[Any]


class QueryTimeout(ApiError):
    status_code = 503
    code = "query_timeout"


async def _configure(conn: AsyncConn) -> None:
    # jsonb (latest values) parsed by orjson: several times faster than json on the polled views.
    set_json_loads(orjson.loads, conn)
    # Responses are in UTC whatever the server's TimeZone is.
    await conn.execute("SET TIME ZONE 'UTC'")
    await conn.execute("SELECT set_config('statement_timeout', %s, false)", (str(STATEMENT_TIMEOUT_MS),))


# A connection used less than this ago was working a moment ago: checking it before lending it
# again would cost a round trip per request for nothing. One idle longer is checked, so a database
# restart in a quiet spell costs no failed request; one under traffic costs at most one 503 per
# pooled connection (the pool discards a broken connection when it comes back).
CHECK_IDLE_AFTER_S = 1.0


class ApiPool(AsyncConnectionPool[AsyncConn]):
    """The API's pool: lends a connection after a check only when it sat idle.

    Last use is recorded by :func:`pooled_connection`, not by a pool ``reset`` callback: with one,
    psycopg_pool hands every returned connection to a worker task, about 70 us of CPU a request.
    """

    def __init__(self, db: DatabaseSettings) -> None:
        self._last_used_s: WeakKeyDictionary[AsyncConn, float] = WeakKeyDictionary()
        self.breaker = DatabaseBreaker(db.url, db.connect_timeout_s)
        super().__init__(
            db.url,
            connection_class=connection_class(self.breaker),
            min_size=db.pool_min_size,
            max_size=db.pool_max_size,
            kwargs={"autocommit": True, "connect_timeout": max(1, round(db.connect_timeout_s))},
            configure=_configure,
            check=self._check_if_idle,
            timeout=db.connect_timeout_s,
            name="cityneuron-api",
            open=False,
        )

    async def _check_if_idle(self, conn: AsyncConn) -> None:
        if time.monotonic() - self._last_used_s.get(conn, -CHECK_IDLE_AFTER_S) >= CHECK_IDLE_AFTER_S:
            await AsyncConnectionPool.check_connection(conn)

    def mark_used(self, conn: AsyncConn) -> None:
        self._last_used_s[conn] = time.monotonic()

    async def close(self, timeout: float = 5.0) -> None:
        await self.breaker.close()
        await super().close(timeout)


def build_pool(db: DatabaseSettings) -> ApiPool:
    """A closed pool for ``db``; open it in the application lifespan."""
    return ApiPool(db)


@asynccontextmanager
async def pooled_connection(pool: ApiPool, timeout_s: float) -> AsyncIterator[AsyncConn]:
    """A connection from ``pool``; database failures inside become DatabaseUnavailable/QueryTimeout.

    While the database is known to be down (api/breaker.py) this fails at once, without waiting.
    """
    pool.breaker.check()
    try:
        async with pool.connection(timeout=timeout_s) as conn:
            try:
                yield conn
            finally:
                pool.mark_used(conn)
    except PoolTimeout as exc:
        # Down (the pool's attempts failed meanwhile) or only busy: the probe tells which.
        pool.breaker.suspect()
        raise DatabaseUnavailable(
            f"database unavailable: no connection within {timeout_s:g} s; /health has details"
        ) from exc
    except psycopg.errors.QueryCanceled as exc:
        raise QueryTimeout(
            f"the query ran longer than {STATEMENT_TIMEOUT_MS // 1000} s: ask for a shorter range or a wider bucket"
        ) from exc
    except psycopg.OperationalError as exc:
        pool.breaker.suspect()
        raise DatabaseUnavailable(f"database unavailable: {first_line(exc)}") from exc
    except psycopg.DataError as exc:
        # SQLSTATE class 22 "data exception": a value the request carried that PostgreSQL cannot
        # represent or compute with (out of range, overflow); the client can fix it, so 400.
        raise BadRequest(
            f"a parameter value is out of the database's range: {first_line(exc)}", code="value_out_of_range"
        ) from exc
