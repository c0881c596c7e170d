"""Waiting for something another process does: the broker, ingest, the simulator."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def eventually(probe: Callable[[], T], done: Callable[[T], bool], timeout_s: float = 10.0) -> T:
    """``probe()`` until ``done`` says yes or ``timeout_s`` passed; the last value either way,
    for the caller to assert on (its failure then shows what was seen)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if done(value) or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


def wait_until(predicate: Callable[[], Any], timeout_s: float, what: str) -> Any:
    """The first truthy ``predicate()``; AssertionError naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
