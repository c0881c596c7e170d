"""Latency percentiles from a log-bucketed histogram (bounded memory, 1 % resolution)."""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike

# Buckets grow by 1 % from 10 us to ~1.2 h: percentiles are reported within 1 %.
_MIN_S = 1e-5
_GROWTH = 1.01
_BUCKETS = int(math.log(3600 * 1.2 / _MIN_S) / math.log(_GROWTH)) + 2


class LatencyHistogram:
    """Latencies in seconds; negative values (clock skew) land in the first bucket."""

    def __init__(self) -> None:
        self._counts = np.zeros(_BUCKETS, dtype=np.int64)
        self.count = 0
        self.max_s = 0.0

    def record(self, latencies_s: ArrayLike) -> None:
        values = np.asarray(latencies_s, dtype=np.float64).ravel()
        if not len(values):
            return
        clipped = np.maximum(values, _MIN_S)
        index = np.minimum((np.log(clipped / _MIN_S) / math.log(_GROWTH)).astype(np.int64), _BUCKETS - 1)
        np.add.at(self._counts, index, 1)
        self.count += len(values)
        self.max_s = max(self.max_s, float(values.max()))

    def merge(self, other: LatencyHistogram) -> None:
        self._counts += other._counts
        self.count += other.count
        self.max_s = max(self.max_s, other.max_s)

    def percentile(self, q: float) -> float | None:
        """The q-th percentile (0 < q <= 100) in seconds: the upper edge of its bucket."""
        if not 0 < q <= 100:
            raise ValueError(f"percentile must be in (0, 100], got {q}")
        if self.count == 0:
            return None
        rank = math.ceil(self.count * q / 100.0)
        bucket = int(np.searchsorted(np.cumsum(self._counts), rank))
        return min(_MIN_S * _GROWTH ** (bucket + 1), self.max_s)

    def summary_ms(self) -> dict[str, float | None]:
        """p50/p90/p99/p99.9/max in milliseconds."""
        out: dict[str, float | None] = {}
        for name, q in (("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p999", 99.9)):
            value = self.percentile(q)
            out[name] = None if value is None else round(value * 1000, 3)
        out["max"] = round(self.max_s * 1000, 3) if self.count else None
        return out
