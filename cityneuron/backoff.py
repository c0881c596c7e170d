"""Reconnect and retry delays shared by every client of the project (ingest, simulator, load)."""

from __future__ import annotations

import random

# 2**32 times any first delay is beyond every cap; bounding the exponent keeps the float finite.
_MAX_DOUBLINGS = 32


def backoff_delay_s(attempt: int, first_s: float, cap_s: float) -> float:
    """Delay before retry ``attempt`` (0 = the first retry): exponential from ``first_s`` up to
    ``cap_s``, with "equal jitter" (half fixed, half random) so clients that failed together do
    not retry together."""
    delay = min(cap_s, first_s * 2 ** min(attempt, _MAX_DOUBLINGS))
    return delay / 2 + random.uniform(0, delay / 2)
