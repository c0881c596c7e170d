"""The connection pool and the mapping of database failures to API errors."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from api.errors import ApiError, DatabaseUnavailable
from cityneuron.settings import DatabaseSettings

log = logging.getLogger("cityneuron.api")

# Bounds one request's database work; a runaway aggregate must not hold a pooled connection.
STATEMENT_TIMEOUT_MS = 30_000

AsyncConn = psycopg.AsyncConnection[Any]


class QueryTimeout(ApiError):
    status_code = 503
    code = "query_timeout"


async def _configure(conn: AsyncConn) -> None:
    # Responses are in UTC whatever the server's TimeZone is.
    await conn.execute("SET TIME ZONE 'UTC'")
    await conn.execute("SELECT set_config('statement_timeout', %s, false)", (str(STATEMENT_TIMEOUT_MS),))


def build_pool(db: DatabaseSettings) -> AsyncConnectionPool[AsyncConn]:
    """A closed pool for ``db``; open it in the application lifespan."""
    return AsyncConnectionPool(
        db.url,
        min_size=db.pool_min_size,
        max_size=db.pool_max_size,
        kwargs={"autocommit": True, "connect_timeout": max(1, round(db.connect_timeout_s))},
        configure=_configure,
        # Checks a connection before lending it, so a database restart costs no failed request.
        check=AsyncConnectionPool.check_connection,
        timeout=db.connect_timeout_s,
        name="cityneuron-api",
        open=False,
    )


@asynccontextmanager
async def pooled_connection(
    pool: AsyncConnectionPool[AsyncConn], timeout_s: float
) -> AsyncIterator[AsyncConn]:
    """A connection from ``pool``; database failures inside become DatabaseUnavailable/QueryTimeout."""
    try:
        async with pool.connection(timeout=timeout_s) as conn:
            yield conn
    except PoolTimeout as exc:
        raise DatabaseUnavailable(
            f"database unavailable: no connection within {timeout_s:g} s; /health has details"
        ) from exc
    except psycopg.errors.QueryCanceled as exc:
        raise QueryTimeout(
            f"the query ran longer than {STATEMENT_TIMEOUT_MS // 1000} s: ask for a shorter range or a wider bucket"
        ) from exc
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(f"database unavailable: {_first_line(exc)}") from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__
