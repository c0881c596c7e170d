"""Reconnect and retry delays shared by every client of the project (ingest, simulator, load)."""

from __future__ import annotations

import random
import threading
import time

# 2**32 times any first delay is beyond every cap; bounding the exponent keeps the float finite.
_MAX_DOUBLINGS = 32


def backoff_delay_s(attempt: int, first_s: float, cap_s: float) -> float:
    """Delay before retry ``attempt`` (0 = the first retry): exponential from ``first_s`` up to
    ``cap_s``, with "equal jitter" (half fixed, half random) so clients that failed together do
    not retry together."""
    delay = min(cap_s, first_s * 2 ** min(attempt, _MAX_DOUBLINGS))
    return delay / 2 + random.uniform(0, delay / 2)


def wait_unless_set(delay_s: float, *events: threading.Event, tick_s: float = 0.1) -> bool:
    """Sleep ``delay_s``, waking early once any of ``events`` is set; True if one was.

    A back-off between reconnect attempts must end as soon as the client closes *or* its owner
    asks everything to stop: a stopping process must not keep dialing a broker that is gone.
    """
    deadline = time.monotonic() + delay_s
    first, others = events[0], events[1:]
    while True:
        if any(event.is_set() for event in others):
            return True
        left = deadline - time.monotonic()
        if left <= 0:
            return first.is_set()
        if first.wait(min(left, tick_s)):
            return True
