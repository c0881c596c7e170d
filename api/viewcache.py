"""A short server-side cache of rendered views that many dashboards poll at once.

The district summary and the city overview aggregate over every device of a district (or the
city): five queries per answer; the city views (AQI, water quality, rain) asked for now read a day
of every station's readings. An operations centre has many screens polling the same view every
few seconds; answering each poll from scratch costs the database the same work over and over for a
result that changes far less often than it is asked for. So each view is rendered once per
``max_age_s`` per set of parameters (twice under steady polling: the successor is rendered ahead,
from half that age) and shared: no answer is served more than ``max_age_s`` after its render
started. Concurrent misses for one key wait for one render (no stampede); a failed render is not
kept. Per worker process: N workers render each view N times as often.

A view that takes long to render (the overview of a 17 M-device city: ~0.4 s on two cores) would
keep a core busy re-rendering itself every half second. With ``render_share`` a view's renders
take at most that share of the time: one whose last render took longer than
``render_share * max_age_s`` is shared for ``render time / render_share`` instead (with 0.1, a
0.4 s render is served for 4 s). On a busy machine renders slow down and are spaced out in turn.

The latest reading of one device is shared the same way (``api.latest_max_age_ms``), keyed by
device and bounded by ``max_entries`` (``api.latest_cache_devices``).
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass

# Default bound: keys of the shared views are (view, parameters) from a closed set (views x
# districts); this bounds memory anyway.
_MAX_ENTRIES = 256


@dataclass(frozen=True, slots=True)
class RenderedView:
    """A view's JSON body and its entity tag."""

    body: bytes
    etag: str


@dataclass(slots=True)
class _Entry:
    started_at: float
    task: asyncio.Task[RenderedView]
    render: Callable[[], Awaitable[RenderedView]]
    # The next render, started once this one is half its allowed age (None until then).
    refresh: _Entry | None = None

    def usable(self, now: float, max_age_s: float) -> bool:
        failed = self.task.done() and (self.task.cancelled() or self.task.exception() is not None)
        return not failed and now - self.started_at < max_age_s


class ViewCache:
    """Rendered views by key, each served for ``max_age_s`` after its render started (0: never).

    Once an answer is half that old, the next request starts its successor in the background and
    is still served the current one: under steady polling nobody waits for a render, and nothing
    served is older than ``max_age_s``.
    """

    def __init__(
        self,
        max_age_s: float,
        clock: Callable[[], float] = time.monotonic,
        max_entries: int = _MAX_ENTRIES,
        keep_warm_s: float = 0.0,
        render_share: float = 0.0,
    ) -> None:
        if max_age_s < 0:
            raise ValueError("max_age_s must not be negative")
        if not 0 <= render_share <= 1:
            raise ValueError("render_share must be between 0 and 1")
        self.max_age_s = max_age_s
        self._render_share = render_share
        # Per key: how long its last successful render took (seconds of the clock).
        self._render_s: dict[Hashable, float] = {}
        self._clock = clock
        self._max_entries = max_entries
        self._keep_warm_s = keep_warm_s
        self._entries: dict[Hashable, _Entry] = {}
        self._asked_at: dict[Hashable, float] = {}

    async def get(self, key: Hashable, render: Callable[[], Awaitable[RenderedView]]) -> RenderedView:
        """The view under ``key``: cached when fresh enough, else rendered by ``render`` (once).

        ``render`` runs in its own task and should take its own database connection: a request
        that goes away does not cancel a render others wait for.
        """
        if self.max_age_s == 0:
            return await render()
        now = self._clock()
        self._asked_at[key] = now
        age_s = self.age_s(key)
        entry = self._entries.get(key)
        if entry is not None and not entry.usable(now, age_s):
            successor = entry.refresh
            entry = successor if successor is not None and successor.usable(now, age_s) else None
            if entry is not None:
                self._entries[key] = entry
        if entry is None:
            if len(self._entries) >= self._max_entries:
                self._prune(now)
            entry = self._entries[key] = self._start(key, now, render)
        elif entry.refresh is None and entry.task.done() and now - entry.started_at >= age_s / 2:
            entry.refresh = self._start(key, now, render, replaces=entry)
        # shield: one waiter cancelled (client gone) must not cancel the others' shared result.
        return await asyncio.shield(entry.task)

    def _start(
        self,
        key: Hashable,
        now: float,
        render: Callable[[], Awaitable[RenderedView]],
        replaces: _Entry | None = None,
    ) -> _Entry:
        entry = _Entry(now, asyncio.ensure_future(render()), render)
        entry.task.add_done_callback(functools.partial(self._settle, key, entry, replaces))
        if self._keep_warm_s > 0:
            asyncio.get_running_loop().call_later(self.age_s(key) / 2, self._render_ahead, key, entry)
        return entry

    def age_s(self, key: Hashable) -> float:
        """How long an answer of ``key`` is served: ``max_age_s``, or longer for a view whose
        last render took over ``render_share`` of that."""
        if self._render_share == 0:
            return self.max_age_s
        return max(self.max_age_s, self._render_s.get(key, 0.0) / self._render_share)

    def _render_ahead(self, key: Hashable, entry: _Entry) -> None:
        """Half-way through ``entry``'s age: start its successor if the view is still asked for."""
        now = self._clock()
        if self._entries.get(key) is not entry or entry.refresh is not None or not entry.task.done():
            return
        if now - self._asked_at.get(key, float("-inf")) <= self._keep_warm_s:
            entry.refresh = self._start(key, now, entry.render, replaces=entry)
        else:
            self._asked_at.pop(key, None)

    def _settle(
        self, key: Hashable, entry: _Entry, replaces: _Entry | None, task: asyncio.Task[RenderedView]
    ) -> None:
        # Reading the exception also keeps asyncio from warning when no one waited for it.
        failed = task.cancelled() or task.exception() is not None
        current = self._entries.get(key)
        if not failed:
            self._render_s[key] = self._clock() - entry.started_at
        if failed:
            # A failure (database down) is not cached: the next request tries again.
            if current is entry:
                del self._entries[key]
        elif replaces is not None and current is replaces:
            self._entries[key] = entry

    def _prune(self, now: float) -> None:
        stale = [k for k, e in self._entries.items() if not e.usable(now, self.age_s(k))]
        for key in stale:
            del self._entries[key]
            self._asked_at.pop(key, None)
            self._render_s.pop(key, None)
        if len(self._entries) >= self._max_entries:
            self._entries.clear()
            self._asked_at.clear()
            self._render_s.clear()


class FingerprintCache:
    """JSON fragments kept with the fingerprint of the data they were made from.

    For views with a cheap exact fingerprint (``/latest``: count and sums over the latest readings):
    a poll whose fingerprint matches the stored one reuses the fragment instead of fetching and
    serialising the rows again. Never stale: any change moves the fingerprint.
    """

    def __init__(self, max_entries: int = _MAX_ENTRIES) -> None:
        self._max_entries = max_entries
        self._entries: dict[Hashable, tuple[str, bytes]] = {}

    def get(self, key: Hashable, fingerprint: str) -> bytes | None:
        found = self._entries.get(key)
        return found[1] if found is not None and found[0] == fingerprint else None

    def put(self, key: Hashable, fingerprint: str, fragment: bytes) -> None:
        if key not in self._entries and len(self._entries) >= self._max_entries:
            self._entries.clear()
        self._entries[key] = (fingerprint, fragment)
