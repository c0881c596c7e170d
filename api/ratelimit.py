"""Token-bucket rate limiting per caller (an API key, or the client address when anonymous).

In process: every API worker keeps its own buckets, so N workers together admit up to N times
the configured rate. That bounds what one caller can cost a worker, which is the point here; a
global quota would need a shared store.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

# Above this many callers, idle buckets (full again, so indistinguishable from new ones) are
# dropped; keeps memory bounded when many addresses pass by.
_PRUNE_ABOVE_CALLERS = 10_000


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated_at: float


class RateLimiter:
    """``rate_per_s`` requests per second per caller on average, bursts of up to ``burst``."""

    def __init__(self, rate_per_s: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        if rate_per_s <= 0 or burst < 1:
            raise ValueError("rate_per_s must be positive and burst at least 1")
        self._rate_per_s = rate_per_s
        self._burst = float(burst)
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def acquire(self, caller: str) -> float:
        """Take one token for ``caller``: 0.0 when admitted, else the seconds until one is free."""
        now = self._clock()
        bucket = self._buckets.get(caller)
        if bucket is None:
            if len(self._buckets) >= _PRUNE_ABOVE_CALLERS:
                self._prune(now)
            bucket = self._buckets[caller] = _Bucket(tokens=self._burst, updated_at=now)
        else:
            elapsed = max(0.0, now - bucket.updated_at)
            bucket.tokens = min(self._burst, bucket.tokens + elapsed * self._rate_per_s)
            bucket.updated_at = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / self._rate_per_s

    def _prune(self, now: float) -> None:
        full_after_s = self._burst / self._rate_per_s
        idle = [c for c, b in self._buckets.items() if now - b.updated_at >= full_after_s]
        for caller in idle:
            del self._buckets[caller]


def retry_after_header(wait_s: float) -> str:
    """``Retry-After`` as whole delay-seconds (RFC 9110 §10.2.3), rounded up, at least 1."""
    return str(max(1, math.ceil(wait_s)))
