"""Fan-out of live events to stream clients through bounded per-client queues.

Publishing never waits: a client whose queue is full loses its oldest events and is told how
many it missed with its next batch, so one slow dashboard cannot hold up the others or the
broker link. Everything here runs on the event loop.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from api.live.events import LiveEvent

# Events a client may have queued before the oldest are dropped (a few seconds of a busy district).
DEFAULT_QUEUE_EVENTS = 1000


@dataclass(frozen=True, slots=True)
class StreamFilter:
    """What a client wants; None in a field means "any"."""

    types: frozenset[str] | None = None
    districts: frozenset[str] | None = None
    kinds: frozenset[str] | None = None
    devices: frozenset[str] | None = None
    metrics: frozenset[str] | None = None

    def matches(self, event: LiveEvent) -> bool:
        if self.types is not None and event.type not in self.types:
            return False
        if self.districts is not None and event.district not in self.districts:
            return False
        if self.kinds is not None and event.kind not in self.kinds:
            return False
        if self.devices is not None and event.device_id not in self.devices:
            return False
        # Alerts carry no metrics: the metric filter narrows readings only.
        return not (event.type == "reading" and self.metrics is not None and not event.metrics & self.metrics)

    def shape(self, event: LiveEvent) -> dict[str, Any]:
        """The body sent to this client: a reading keeps only the metrics asked for."""
        if event.type != "reading" or self.metrics is None:
            return event.body
        metrics = event.body["metrics"]
        return {**event.body, "metrics": {m: v for m, v in metrics.items() if m in self.metrics}}

    def describe(self) -> dict[str, list[str] | None]:
        return {
            name: sorted(value) if value is not None else None
            for name, value in (
                ("types", self.types),
                ("district", self.districts),
                ("kind", self.kinds),
                ("device", self.devices),
                ("metric", self.metrics),
            )
        }


@dataclass(frozen=True, slots=True)
class Batch:
    events: list[dict[str, Any]]
    # Events dropped for this client (queue full) since its previous batch.
    missed: int


class Subscriber:
    """One client's queue; the hub offers, the client's stream takes."""

    def __init__(self, stream_filter: StreamFilter, max_queued: int) -> None:
        self.filter = stream_filter
        self._queue: deque[LiveEvent] = deque(maxlen=max_queued)
        self._missed = 0
        self._ready = asyncio.Event()

    def offer(self, event: LiveEvent) -> None:
        if not self.filter.matches(event):
            return
        if len(self._queue) == self._queue.maxlen:
            self._missed += 1  # the append below pushes the oldest out
        self._queue.append(event)
        self._ready.set()

    def refilter(self, stream_filter: StreamFilter) -> None:
        """Replace the filter; queued events that no longer match are dropped."""
        self.filter = stream_filter
        kept = [e for e in self._queue if stream_filter.matches(e)]
        self._queue.clear()
        self._queue.extend(kept)

    async def next_batch(self, timeout_s: float) -> Batch:
        """Whatever is queued, waiting up to ``timeout_s`` for something; empty on timeout."""
        if not self._queue and not self._missed:
            self._ready.clear()
            try:
                await asyncio.wait_for(self._ready.wait(), timeout_s)
            except TimeoutError:
                return Batch([], 0)
        events = [self.filter.shape(e) for e in self._queue]
        self._queue.clear()
        missed, self._missed = self._missed, 0
        return Batch(events, missed)


class Hub:
    """The set of subscribers and the fan-out to them."""

    def __init__(self, max_queued: int = DEFAULT_QUEUE_EVENTS) -> None:
        self._max_queued = max_queued
        self._subscribers: set[Subscriber] = set()
        self.published = 0
        self._on_demand: Callable[[bool], None] | None = None

    def on_demand(self, listener: Callable[[bool], None]) -> None:
        """Call ``listener(True)`` when the first client subscribes, ``listener(False)`` when the
        last one leaves: the broker link receives telemetry only while someone listens."""
        self._on_demand = listener

    @property
    def has_subscribers(self) -> bool:
        # Read from paho's thread to skip decoding when nobody listens; a stale answer costs
        # at most one message decoded for nothing or one event for a client that just joined.
        return bool(self._subscribers)

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    def publish(self, events: list[LiveEvent]) -> None:
        for event in events:
            self.published += 1
            for subscriber in self._subscribers:
                subscriber.offer(event)

    @contextmanager
    def subscribe(self, stream_filter: StreamFilter) -> Iterator[Subscriber]:
        subscriber = Subscriber(stream_filter, self._max_queued)
        first = not self._subscribers
        self._subscribers.add(subscriber)
        if first and self._on_demand is not None:
            self._on_demand(True)
        try:
            yield subscriber
        finally:
            self._subscribers.discard(subscriber)
            if not self._subscribers and self._on_demand is not None:
                self._on_demand(False)
