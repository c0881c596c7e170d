"""The shared retry delay: exponential, jittered within the upper half, capped."""

from __future__ import annotations

from cityneuron.backoff import backoff_delay_s


def test_delay_doubles_within_equal_jitter_and_stops_at_the_cap() -> None:
    for attempt, ceiling in [(0, 0.1), (1, 0.2), (2, 0.4), (5, 3.2), (6, 5.0), (500, 5.0)]:
        delays = [backoff_delay_s(attempt, 0.1, 5.0) for _ in range(200)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays), attempt
        # Jittered: retries that failed together spread out.
        assert len(set(delays)) > 100
