"""Registry statuses of a large city, published at a bounded rate alongside live telemetry.

Announcing 17 M devices up front (the ``shenzhen`` preset) would hold back live telemetry for
an hour or more and leave the broker millions of retained messages at once. A city larger
than ``ANNOUNCE_AT_ONCE_MAX_DEVICES`` therefore starts publishing telemetry at once and
trickles its retained statuses out at ``STATUS_RAMP_PER_S`` (17 M in about 2.4 h); ingest
registers a device from its first telemetry (auto-registration) and the status adds its facts
later. Where the simulator can reach the database, ``cityneuron sim --registry direct`` loads
the registry with COPY instead (``simulator.direct.load_registry``) and publishes no statuses.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator

from simulator.city import City
from simulator.messages import Message, status_messages

# The "district" preset (about 100 k devices) is still announced in one go: ~15 s at QoS 1.
ANNOUNCE_AT_ONCE_MAX_DEVICES = 200_000
STATUS_RAMP_PER_S = 2_000.0
# Never more than this many statuses in one pass, so a stalled pass does not burst later.
_MAX_PER_PASS = 5_000


def _statuses(city: City, ts_ms: int) -> Iterator[tuple[str, Message]]:
    for name, table in city.tables.items():
        for message in status_messages(table, ts_ms):
            yield name, message


class StatusRamp:
    """Every device's retained status, handed out at most ``rate_per_s`` a second."""

    def __init__(
        self,
        city: City,
        ts_ms: int,
        rate_per_s: float = STATUS_RAMP_PER_S,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate_per_s = float(rate_per_s)
        self.total = city.devices
        self.sent = 0
        self._clock = clock
        self._started = clock()
        self._pending = _statuses(city, ts_ms)

    @property
    def done(self) -> bool:
        return self.sent >= self.total

    def take(self) -> dict[str, list[Message]]:
        """The statuses allowed now, by kind."""
        behind = int((self._clock() - self._started) * self.rate_per_s) + 1 - self.sent
        count = min(behind, _MAX_PER_PASS, self.total - self.sent)
        batch: dict[str, list[Message]] = {}
        for name, message in itertools.islice(self._pending, max(0, count)):
            batch.setdefault(name, []).append(message)
        self.sent += sum(len(m) for m in batch.values())
        if behind > _MAX_PER_PASS:
            # A stalled loop does not earn a burst later: the budget restarts from what was sent.
            self._started = self._clock() - self.sent / self.rate_per_s
        return batch
