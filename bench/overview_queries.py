"""Time the queries behind one /city/overview or district-summary render on an existing database.

Read-only: for measuring a loaded city (e.g. the 1:1 home of ``cityneuron up --home H``, with only
its PostgreSQL started), not for CI. Each query of a render runs ``--repeat`` times on one
connection (prepared after a few runs, as in the API's pool); ``--explain`` prints each one's
EXPLAIN (ANALYZE, BUFFERS) first. ``--at`` evaluates the key metrics, AQI and rain at a past time,
so a database stopped hours ago is measured with the liveness its devices had then (the device
counts use the database's clock: their query has no such parameter).

    python bench/overview_queries.py --home /var/tmp/sz --at 2026-12-03T17:44:00+00:00 --explain
    python bench/overview_queries.py --home /var/tmp/sz --district futian --repeat 20
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from api.queries import alerts as alert_queries
from api.queries import city as city_queries
from api.queries import overview as queries
from cityneuron.settings import Settings

Conn = psycopg.AsyncConnection[Any]


class Explaining:
    """A connection that prints the plan of every SELECT it is given before running it."""

    def __init__(self, conn: Conn) -> None:
        self._conn = conn

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)

    async def execute(self, query: Any, params: Any = None) -> Any:
        text = query.as_string(self._conn) if isinstance(query, sql.Composable) else str(query)
        if text.lstrip().upper().startswith("SELECT"):
            explain = sql.SQL("EXPLAIN (ANALYZE, BUFFERS) ") + sql.SQL(text)
            cur = await self._conn.execute(explain, params)
            print("\n".join(row[0] for row in await cur.fetchall()), flush=True)
        return await self._conn.execute(query, params)


def _url(args: argparse.Namespace) -> str:
    if args.url:
        return str(args.url)
    home = Path(args.home)
    stack = json.loads((home / "stack.json").read_text())["database"]
    password = (home / stack["password_file"]).read_text().strip()
    return str(stack["url_without_password"]).replace("@", f":{password}@", 1)


def _render(
    conn: Any, at: datetime, now: datetime | None, district: str | None
) -> dict[str, Callable[[], Awaitable[Any]]]:
    """The five queries of api.routers.overview._summaries, by name."""
    silent = Settings().ingest.silent_after_intervals
    return {
        "device_counts": lambda: queries.device_counts(
            conn, silent_after_intervals=silent, district=district
        ),
        "key_metric_stats": lambda: queries.key_metric_stats(
            conn, silent_after_intervals=silent, district=district, at=now
        ),
        "air_hourly_means": lambda: city_queries.air_hourly_means(conn, end=at, district=district),
        "rain_accumulations": lambda: city_queries.rain_accumulations(conn, at=at, district=district),
        "active_alert_counts": lambda: alert_queries.active_counts(conn, district),
    }


async def run(args: argparse.Namespace) -> None:
    now = datetime.fromisoformat(args.at) if args.at else None
    at = now or datetime.now(tz=UTC)
    async with await psycopg.AsyncConnection.connect(_url(args), autocommit=True) as conn:
        await conn.execute("SET TIME ZONE 'UTC'")
        if args.explain:
            for name, query in _render(Explaining(conn), at, now, args.district).items():
                print(f"== {name}", flush=True)
                await query()
        totals = [0.0] * args.repeat
        for name, query in _render(conn, at, now, args.district).items():
            times = []
            for i in range(args.repeat):
                began = time.perf_counter()
                await query()
                times.append((time.perf_counter() - began) * 1000)
                totals[i] += times[-1]
            print(f"{name}: median {statistics.median(times):.1f} ms, max {max(times):.1f} ms", flush=True)
        print(f"render ({args.district or 'city'}): median {statistics.median(totals):.1f} ms", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--home", help="a cityneuron home with stack.json (its PostgreSQL running)")
    source.add_argument("--url", help="a database URL with its password")
    parser.add_argument("--district", help="a district summary's queries (default: the overview's)")
    parser.add_argument("--at", help="evaluate liveness, AQI and rain at this ISO time (default: now)")
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--explain", action="store_true", help="print each query's plan first")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
