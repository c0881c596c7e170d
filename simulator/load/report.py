"""The load test's verdict: a table for people, JSON for machines, and the exit status.

Three latency measurements can appear, each labelled with what it measures: ``send_lag_ms``
(the generator: intended send time to handing the message to the MQTT client), the
reconciliation's ``latency_ms`` (intended send time to the ingest's receive time, exact per
reading, from the database), and optionally ``ingest_lag`` (the ingest's own histogram of
device time to commit, at its bucket resolution, scraped from its /metrics).
"""

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
    ingest_lag: dict[str, Any] | None = None  # simulator/load/ingest_metrics.py run_delta()

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
    def failed_gates(self) -> dict[str, str]:
        """Each gate the run failed (rate, loss, errors, storm) and why; empty when it passed."""
        failed: dict[str, str] = {}
        if self.achieved_fraction < self.min_rate_fraction:
            failed["rate"] = (
                f"{self.achieved_fraction:.1%} of the schedule sent, below {self.min_rate_fraction:.0%}"
            )
        if self.lost:
            r = self.reconciliation
            assert r is not None  # lost > 0 only with a reconciliation
            failed["loss"] = f"{r.missing} readings missing, {r.dead_lettered} dead-lettered"
        if self.published.errors:
            failed["errors"] = f"{self.published.errors} publish errors"
        storm = self.published.storm
        if storm is not None and storm.reconnected != storm.dropped:
            failed["storm"] = (
                f"{storm.dropped - storm.reconnected} of {storm.dropped} dropped devices not back"
            )
        return failed

    @property
    def passed(self) -> bool:
        return not self.failed_gates

    @property
    def verdict(self) -> str:
        """``PASS``, or ``FAIL`` with each failed gate: ``FAIL (rate: ...; loss: ...)``."""
        failed = self.failed_gates
        if not failed:
            return "PASS"
        return "FAIL (" + "; ".join(f"{gate}: {why}" for gate, why in failed.items()) + ")"

    def as_dict(self) -> dict[str, Any]:
        p = self.published
        r = self.reconciliation
        return {
            "passed": self.passed,
            "verdict": self.verdict,
            "failed_gates": self.failed_gates,
            "profile": {
                "shape": str(self.profile.shape),
                "rate_per_s": self.profile.rate_per_s,
                "duration_s": self.profile.duration_s,
                "ramp_s": self.profile.ramp_s,
            },
            "qos": self.qos,
            "processes": self.published.processes,
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
                "send_lag_source": "intended send time to handing the message to the MQTT client"
                " (the generator's own delay)",
                "send_lag_ms": p.send_lag.summary_ms(),
            },
            "storm": None if p.storm is None else p.storm.as_dict(),
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
            "ingest_lag": None
            if self.ingest_lag is None
            else {
                "source": "the ingest's own Prometheus histograms (its /metrics before and after the"
                " run; every reading it committed meanwhile), percentiles at its bucket bounds",
                **self.ingest_lag,
            },
        }

    def table(self) -> str:
        d = self.as_dict()
        pub = d["publish"]
        rows = [
            ("verdict", self.verdict),
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
        if d["processes"] > 1:
            rows.append(("publishing processes", str(d["processes"])))
        rows += _storm_rows(d["storm"])
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
        rows += _ingest_rows(d["ingest_lag"])
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def _pcts(values: dict[str, Any]) -> str:
    return "/".join("-" if values.get(k) is None else f"{values[k]:.1f}" for k in ("p50", "p99", "max"))


def _storm_rows(storm: dict[str, Any] | None) -> list[tuple[str, str]]:
    if storm is None:
        return []
    back = storm["reconnect_s"]
    rows = [
        (
            "storm",
            f"{storm['district']} at {storm['at_s']:g} s: {storm['dropped']} of {storm['devices']} device"
            f" links dropped, {storm['reconnected']} back ({storm['reconnects_counted_by_fleet']} reconnects)",
        ),
        (
            "storm reconnect s p50/max",
            "-" if back["p50"] is None else f"{back['p50']:.2f}/{back['max']:.2f}",
        ),
        ("storm delayed messages", f"{storm['delayed_messages']} ({storm['delayed_readings']} readings)"),
    ]
    if storm["delayed_latency_ms"] is not None:
        rows.append(("delayed send->ingest ms p50/p99/max", _pcts(storm["delayed_latency_ms"])))
    return rows


def _ingest_rows(lag: dict[str, Any] | None) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    for name, label in (
        ("cityneuron_ingest_lag_seconds", "ingest's lag to commit ms p50/p99 <="),
        ("cityneuron_ingest_commit_seconds", "ingest's batch commit ms p50/p99 <="),
    ):
        h = None if lag is None else lag.get(name)
        if h is not None:
            rows.append((label, f"{h['p50_at_most_ms']}/{h['p99_at_most_ms']} ({h['count']} observed)"))
    return rows
