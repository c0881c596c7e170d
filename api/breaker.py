"""A circuit breaker for the database: while it is known to be down, requests fail at once.

Without it every request waits the pool's full timeout (``database.connect_timeout_s``, 5 s by
default) before its 503, so a dashboard polling ten views stalls for 50 s. The breaker opens when
the pool fails to open a connection (or a probe fails after a broken connection), answers 503 at
once while open, and a background probe connects every ``PROBE_INTERVAL_S`` until the database
answers again; then requests go through as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import UTC, datetime
from typing import Any

import psycopg

from api.errors import DatabaseUnavailable

log = logging.getLogger("cityneuron.api")

# How often a down database is tried again: recovery is seen within about this long.
PROBE_INTERVAL_S = 1.0


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


class DatabaseBreaker:
    """Open (database down) or closed; one probe task at a time finds the database back."""

    def __init__(
        self, url: str, connect_timeout_s: float, probe_interval_s: float = PROBE_INTERVAL_S
    ) -> None:
        self._url = url
        self._connect_timeout_s = connect_timeout_s
        self._probe_interval_s = probe_interval_s
        self._down_since: datetime | None = None
        self._down_monotonic = 0.0
        self._reason = ""
        self._probe: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def down(self) -> bool:
        return self._down_since is not None

    def check(self) -> None:
        """Raise DatabaseUnavailable at once while the database is known to be down."""
        if self._down_since is not None:
            raise DatabaseUnavailable(
                f"database unavailable since {self._down_since.isoformat(timespec='seconds')}"
                f" ({self._reason}); retried every {self._probe_interval_s:g} s; /health has details"
            )

    def mark_down(self, reason: str) -> None:
        self._reason = reason
        if self._down_since is None:
            self._down_since = datetime.now(tz=UTC)
            self._down_monotonic = time.monotonic()
            log.warning("database down (%s): answering 503 at once until it is back", reason)
        self._start_probe(self._probe_interval_s)

    def mark_up(self) -> None:
        if self._down_since is not None:
            log.info("database back after %.1f s", time.monotonic() - self._down_monotonic)
            self._down_since = None

    def suspect(self) -> None:
        """A connection broke or the pool timed out: probe now, open the breaker if that fails."""
        self._start_probe(0.0)

    def _start_probe(self, delay_s: float) -> None:
        if self._closed or (self._probe is not None and not self._probe.done()):
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop (a synchronous caller): the next request on the loop probes
        self._probe = loop.create_task(self._probe_until_up(delay_s), name="cityneuron-db-probe")

    async def _probe_until_up(self, delay_s: float) -> None:
        while not self._closed:
            await asyncio.sleep(delay_s)
            delay_s = self._probe_interval_s
            reason = await self._try_connect()
            if reason is None:
                self.mark_up()
                return
            self.mark_down(reason)

    async def _try_connect(self) -> str | None:
        try:
            conn = await asyncio.wait_for(
                psycopg.AsyncConnection.connect(
                    self._url, autocommit=True, connect_timeout=max(1, round(self._connect_timeout_s))
                ),
                self._connect_timeout_s,
            )
        except TimeoutError:
            return f"no connection within {self._connect_timeout_s:g} s"
        except psycopg.Error as exc:
            return first_line(exc)
        await conn.close()
        return None

    async def close(self) -> None:
        self._closed = True
        if self._probe is not None:
            self._probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe


def connection_class(breaker: DatabaseBreaker) -> type[psycopg.AsyncConnection[Any]]:
    """A connection class whose ``connect`` (what the pool calls) tells ``breaker`` how it went:
    the pool's own failed attempts open the breaker before any request has waited its timeout."""

    class BreakerConnection(psycopg.AsyncConnection[Any]):
        @classmethod
        async def connect(cls, *args: Any, **kwargs: Any) -> Any:
            try:
                conn = await super().connect(*args, **kwargs)
            except psycopg.OperationalError as exc:
                breaker.mark_down(first_line(exc))
                raise
            breaker.mark_up()
            return conn

    return BreakerConnection
