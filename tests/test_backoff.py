"""The shared retry delay: exponential, jittered within the upper half, capped."""

from __future__ import annotations

import threading
import time

from cityneuron.backoff import backoff_delay_s, wait_unless_set


def test_delay_doubles_within_equal_jitter_and_stops_at_the_cap() -> None:
    for attempt, ceiling in [(0, 0.1), (1, 0.2), (2, 0.4), (5, 3.2), (6, 5.0), (500, 5.0)]:
        delays = [backoff_delay_s(attempt, 0.1, 5.0) for _ in range(200)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays), attempt
        # Jittered: retries that failed together spread out.
        assert len(set(delays)) > 100


def test_wait_unless_set_wakes_on_any_event() -> None:
    closing, stop = threading.Event(), threading.Event()
    started = time.monotonic()
    assert wait_unless_set(0.2, closing, stop) is False
    assert time.monotonic() - started >= 0.2
    # The owner's stop event ends a long back-off at once, not only the client's own.
    threading.Timer(0.1, stop.set).start()
    started = time.monotonic()
    assert wait_unless_set(30.0, closing, stop) is True
    assert time.monotonic() - started < 2.0
