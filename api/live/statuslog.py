"""Device states as versioned changes, so a map polls with ``since=`` and gets only what changed.

The database keeps a device's current state (api.queries.liveness), not its history. This log keeps
the set of devices that are not online, taken at most once per ``min_interval_s`` and shared by
every client, and the changes between successive sets, each under a version (milliseconds, always
increasing). A version moves only when something changed, so an unchanged poll names the same
version and gets the same answer (and its ETag, a 304).

A client that asks with a version older than the log keeps (or from another worker process, or
from before a restart) gets a reset: every device not online. A version this log never issued still
works when it lies inside the kept range: changes are applied as "current state of these ids",
which is idempotent, so a superset of the changes is as good as the exact ones.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class StatusAnswer:
    version: int
    reset: bool
    registry: str
    devices: int
    changes: dict[str, str]


Snapshot = tuple[dict[str, str], int, str]  # not-online states, devices, registry tag


class StatusLog:
    def __init__(self, keep: int = 256, clock: Callable[[], float] = time.time) -> None:
        self._keep = keep
        self._clock = clock
        self._current: dict[str, str] = {}
        self._devices = 0
        self._registry = ""
        self._version = 0
        # Changes of versions after _oldest are all in _changes.
        self._oldest = 0
        self._changes: deque[tuple[int, dict[str, str]]] = deque()
        self._taken_at = float("-inf")
        self._lock = asyncio.Lock()

    async def refresh(self, take: Callable[[], Awaitable[Snapshot]], min_interval_s: float) -> None:
        """Take a new snapshot with ``take`` unless one was taken less than ``min_interval_s`` ago."""
        if self._clock() - self._taken_at < min_interval_s:
            return
        async with self._lock:
            if self._clock() - self._taken_at < min_interval_s:
                return
            snapshot = await take()
            self.record(*snapshot)

    def record(self, states: dict[str, str], devices: int, registry: str) -> None:
        """A new snapshot: the states of the devices not online."""
        now = self._clock()
        self._taken_at = now
        if self._version == 0:
            self._version = self._oldest = int(now * 1000)
            self._current, self._devices, self._registry = states, devices, registry
            return
        changed = {d: "online" for d in self._current.keys() - states.keys()}
        changed.update({d: s for d, s in states.items() if self._current.get(d) != s})
        if not changed and registry == self._registry:
            return
        self._version = max(self._version + 1, int(now * 1000))
        self._changes.append((self._version, changed))
        while len(self._changes) > self._keep:
            self._oldest = self._changes.popleft()[0]
        self._current, self._devices, self._registry = states, devices, registry

    def since(self, version: int | None) -> StatusAnswer:
        """What changed after ``version``; a reset when the log cannot tell."""
        if version is None or not self._oldest <= version <= self._version:
            return StatusAnswer(self._version, True, self._registry, self._devices, dict(self._current))
        merged: dict[str, str] = {}
        for at, changed in self._changes:
            if at > version:
                merged.update(changed)
        return StatusAnswer(self._version, False, self._registry, self._devices, merged)
