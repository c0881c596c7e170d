"""The ingest's own latency measurement, read from its Prometheus ``/metrics`` around a run.

The ingest observes, for every reading it newly stores, commit time minus device time
(``cityneuron_ingest_lag_seconds``), and for every batch the time to write and commit it
(``cityneuron_ingest_commit_seconds``), see ingest/observability.py. Scraping before and after
the run and subtracting gives this run's share of those histograms. Their resolution is the
ingest's bucket bounds, so percentiles are reported as "at most this bound".
"""

from __future__ import annotations

import math
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from simulator.errors import SimulatorError

LAG_METRIC = "cityneuron_ingest_lag_seconds"
COMMIT_METRIC = "cityneuron_ingest_commit_seconds"
_TIMEOUT_S = 10.0


class IngestMetricsError(SimulatorError):
    """The ingest's metrics endpoint could not be read."""


@dataclass(frozen=True, slots=True)
class Histogram:
    """Cumulative bucket counts by upper bound (``inf`` last), as Prometheus exposes them."""

    buckets: tuple[tuple[float, float], ...]
    count: float
    sum: float

    def minus(self, before: Histogram) -> Histogram:
        earlier = dict(before.buckets)
        return Histogram(
            tuple((le, n - earlier.get(le, 0.0)) for le, n in self.buckets),
            self.count - before.count,
            self.sum - before.sum,
        )

    def upper_bound(self, q: float) -> float | None:
        """The smallest bucket bound holding the q-th percentile (None without observations)."""
        if self.count <= 0:
            return None
        rank = self.count * q / 100.0
        return next((le for le, n in self.buckets if n >= rank), math.inf)


def scrape(urls: Sequence[str]) -> dict[str, Histogram]:
    """The lag and commit histograms, added up over every ingest process's endpoint."""
    found: dict[str, Histogram] = {}
    for url in urls:
        for name, histogram in _scrape_one(url).items():
            found[name] = _add(found[name], histogram) if name in found else histogram
    return found


def _scrape_one(url: str) -> dict[str, Histogram]:
    try:
        with urllib.request.urlopen(url, timeout=_TIMEOUT_S) as response:
            text = response.read().decode()
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise IngestMetricsError(f"cannot read the ingest's metrics at {url}: {exc}") from exc
    out: dict[str, Histogram] = {}
    for family in text_string_to_metric_families(text):
        if family.name not in (LAG_METRIC, COMMIT_METRIC):
            continue
        buckets = sorted(
            (float(s.labels["le"]), float(s.value)) for s in family.samples if s.name.endswith("_bucket")
        )
        count = sum(float(s.value) for s in family.samples if s.name.endswith("_count"))
        total = sum(float(s.value) for s in family.samples if s.name.endswith("_sum"))
        out[family.name] = Histogram(tuple(buckets), count, total)
    return out


def _add(a: Histogram, b: Histogram) -> Histogram:
    other = dict(b.buckets)
    return Histogram(
        tuple((le, n + other.get(le, 0.0)) for le, n in a.buckets), a.count + b.count, a.sum + b.sum
    )


def run_delta(before: dict[str, Histogram], after: dict[str, Histogram]) -> dict[str, Any]:
    """This run's share of the ingest's histograms, for the report."""
    out: dict[str, Any] = {}
    for name, label in (
        (LAG_METRIC, "reading device time (= intended send time) to its commit, per reading"),
        (COMMIT_METRIC, "time to write and commit one batch, per batch"),
    ):
        if name not in after:
            out[name] = None
            continue
        delta = after[name].minus(before[name]) if name in before else after[name]
        out[name] = {
            "measures": label,
            "count": int(delta.count),
            "mean_ms": round(delta.sum / delta.count * 1000, 3) if delta.count else None,
            **{
                f"{p}_at_most_ms": _ms(delta.upper_bound(q))
                for p, q in (("p50", 50), ("p90", 90), ("p99", 99))
            },
        }
    return out


def _ms(bound: float | None) -> float | str | None:
    if bound is None:
        return None
    return "inf" if math.isinf(bound) else round(bound * 1000, 3)
