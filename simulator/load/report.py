"""The load test's verdict: a table for people, JSON for machines, and the exit status."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from simulator.load.publish import PublishResult
from simulator.load.reconcile import Reconciliation
from simulator.load.shapes import LoadProfile


@dataclass
class LoadReport:
    profile: LoadProfile
    qos: int
    published: PublishResult
    reconciliation: Reconciliation | None
    min_rate_fraction: float

    @property
    def target_messages(self) -> int:
        return self.published.scheduled

    @property
    def achieved_fraction(self) -> float:
        """Messages actually sent on schedule, as a fraction of the schedule's (time-bound)."""
        expected_by_end = max(1, self.published.scheduled)
        sent_unique = self.published.messages_sent - self.published.duplicated
        # Open loop: a generator that fell behind finishes late; count its rate over its own run.
        late_factor = self.profile.duration_s / max(self.published.duration_s, self.profile.duration_s)
        return (sent_unique + self.published.dropped) / expected_by_end * late_factor

    @property
    def lost(self) -> int:
        if self.reconciliation is None:
            return 0
        return self.reconciliation.missing + self.reconciliation.dead_lettered

    @property
    def passed(self) -> bool:
        rate_ok = self.achieved_fraction >= self.min_rate_fraction
        return rate_ok and self.lost == 0 and self.published.errors == 0

    def as_dict(self) -> dict[str, Any]:
        p = self.published
        r = self.reconciliation
        return {
            "passed": self.passed,
            "profile": {
                "shape": str(self.profile.shape),
                "rate_per_s": self.profile.rate_per_s,
                "duration_s": self.profile.duration_s,
                "ramp_s": self.profile.ramp_s,
            },
            "qos": self.qos,
            "publish": {
                "scheduled_messages": p.scheduled,
                "messages_sent": p.messages_sent,
                "duration_s": round(p.duration_s, 3),
                "achieved_rate_per_s": round((p.messages_sent - p.duplicated) / max(p.duration_s, 1e-9), 1),
                "achieved_fraction": round(self.achieved_fraction, 4),
                "readings_expected": p.readings_expected,
                "injected": {"dropped": p.dropped, "duplicated": p.duplicated, "malformed": p.malformed},
                "unacked": p.unacked,
                "errors": p.errors,
                "send_lag_ms": p.send_lag.summary_ms(),
            },
            "reconciliation": None
            if r is None
            else {
                "expected": r.expected,
                "stored": r.stored,
                "missing": r.missing,
                "missing_by_device": r.missing_by_device,
                "dead_lettered": r.dead_lettered,
                "dead_letters_by_reason": r.dead_letters_by_reason,
                "duplicates_counted_by_ingest": r.duplicates_counted,
                "latency_source": "reading device time (= intended send time) to the ingest's receive"
                " time stored in received_at",
                "latency_ms": r.arrival_latency_ms,
                "settle_s": r.settle_s,
            },
        }

    def table(self) -> str:
        d = self.as_dict()
        pub = d["publish"]
        rows = [
            ("verdict", "PASS" if self.passed else "FAIL"),
            (
                "shape / target",
                f"{d['profile']['shape']} {self.profile.rate_per_s:g} msg/s for {self.profile.duration_s:g} s, QoS {self.qos}",
            ),
            ("scheduled / sent", f"{pub['scheduled_messages']} / {pub['messages_sent']}"),
            (
                "achieved rate",
                f"{pub['achieved_rate_per_s']} msg/s ({pub['achieved_fraction']:.1%} of schedule)",
            ),
            ("send lag ms p50/p99/max", _pcts(pub["send_lag_ms"])),
            ("injected drop/dup/malformed", "{dropped}/{duplicated}/{malformed}".format(**pub["injected"])),
            ("publish errors / unacked", f"{pub['errors']} / {pub['unacked']}"),
        ]
        rec = d["reconciliation"]
        if rec is None:
            rows.append(("reconciliation", "skipped (no database URL)"))
        else:
            rows += [
                ("readings expected / stored", f"{rec['expected']} / {rec['stored']}"),
                ("missing", str(rec["missing"])),
                ("dead-lettered", f"{rec['dead_lettered']} {rec['dead_letters_by_reason'] or ''}".strip()),
                ("duplicates absorbed", str(rec["duplicates_counted_by_ingest"])),
                ("send->ingest ms p50/p99/max", _pcts(rec["latency_ms"])),
            ]
            if rec["missing_by_device"]:
                worst = ", ".join(f"{k}:{v}" for k, v in list(rec["missing_by_device"].items())[:5])
                rows.append(("missing by device (worst)", worst))
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def _pcts(values: dict[str, Any]) -> str:
    return "/".join("-" if values.get(k) is None else f"{values[k]:.1f}" for k in ("p50", "p99", "max"))
