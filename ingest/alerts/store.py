"""The ``alerts`` table: open and close alerts, load open ones at start, and the silence check.

The unique partial index ``alerts_one_open`` (one open alert per device and rule) makes opening
idempotent: an alert another ingest process (or an earlier run) already opened is not opened
again, and only the process whose statement changed the table publishes the transition.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import psycopg
from psycopg import sql

from cityneuron.catalog import KIND_BY_NAME, KINDS
from cityneuron.contract import ms_to_datetime
from cityneuron.device_counts import prune, status_counts_sql
from ingest.alerts.engine import AlertEngine, Plan, Transition
from ingest.alerts.rules import RuleSet, SilentRule

_OPEN = (
    "INSERT INTO alerts (device_id, kind, district, rule, severity, opened_at, value, peak_value, detail)"
    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
    " ON CONFLICT (device_id, rule) WHERE closed_at IS NULL DO NOTHING RETURNING id"
)
_CLOSE = (
    "UPDATE alerts SET closed_at = greatest(opened_at, %s), close_value = %s,"
    " peak_value = CASE WHEN %s::float8 IS NULL THEN peak_value WHEN %s::bool"
    " THEN greatest(peak_value, %s::float8) ELSE least(peak_value, %s::float8) END"
    " WHERE device_id = %s AND rule = %s AND closed_at IS NULL RETURNING id"
)


def load_open_alerts(conn: psycopg.Connection, engine: AlertEngine) -> int:
    """Hand the table's open alerts to the engine; return how many there are."""
    rows = conn.execute(
        "SELECT rule, device_id, (extract(epoch FROM opened_at) * 1000)::bigint, peak_value"
        " FROM alerts WHERE closed_at IS NULL"
    ).fetchall()
    engine.load_open([(r[0], r[1], int(r[2]), r[3]) for r in rows])
    return len(rows)


def load_windows(conn: psycopg.Connection, engine: AlertEngine) -> int:
    """Refill the sum/mean windows from the readings of the last window (device time)."""
    loaded = 0
    for rule in engine.rules.thresholds:
        if not rule.window_s:
            continue
        for kind in rule.kinds:
            query = sql.SQL(
                "SELECT device_id, (extract(epoch FROM time) * 1000)::bigint, {metric} FROM {table}"
                " WHERE time > now() - %s * interval '1 second' AND {metric} IS NOT NULL"
                " ORDER BY device_id, time"
            ).format(metric=sql.Identifier(rule.metric), table=sql.Identifier(KIND_BY_NAME[kind].table))
            rows = conn.execute(query, (rule.window_s,)).fetchall()
            for device_id, ts_ms, value in rows:
                engine.load_window(rule.name, device_id, int(ts_ms), float(value))
            loaded += len(rows)
    return loaded


def apply_plan(conn: psycopg.Connection, engine: AlertEngine, plan: Plan) -> list[Transition]:
    """Write a plan's transitions and peaks; return the transitions that changed the table."""
    applied: list[Transition] = []
    directions = {r.name: r.direction == "above" for r in engine.rules.thresholds}
    with conn.cursor() as cur:
        for t in plan.transitions:
            if t.state == "open":
                cur.execute(
                    _OPEN,
                    (
                        *(t.device_id, t.kind, t.district, t.rule, t.severity),
                        *(ms_to_datetime(t.ts_ms), t.value, t.value, t.detail),
                    ),
                )
            else:
                above = directions[t.rule]
                cur.execute(
                    _CLOSE,
                    (ms_to_datetime(t.ts_ms), t.value, t.peak, above, t.peak, t.peak, t.device_id, t.rule),
                )
            if cur.fetchone() is not None:
                applied.append(t)
        if plan.peaks:
            keys = list(plan.peaks)
            cur.execute(
                "UPDATE alerts AS a SET peak_value = CASE WHEN u.above"
                " THEN greatest(a.peak_value, u.peak) ELSE least(a.peak_value, u.peak) END"
                " FROM unnest(%s::text[], %s::text[], %s::float8[], %s::bool[]) AS u(rule, device_id, peak, above)"
                " WHERE a.device_id = u.device_id AND a.rule = u.rule AND a.closed_at IS NULL",
                (
                    [rule for rule, _ in keys],
                    [device_id for _, device_id in keys],
                    [plan.peaks[k] for k in keys],
                    [directions[rule] for rule, _ in keys],
                ),
            )
    return applied


@dataclass(frozen=True, slots=True)
class SilenceReport:
    silent_by_kind: dict[str, int]
    transitions: list[Transition]
    # Per kind, the silence threshold of this check: the next one looks only above it.
    checked_to: dict[str, datetime] = field(default_factory=dict)


# The same rule as the API's liveness (api/queries/liveness.py): a device is silent when it has
# been heard from, has not said it went offline (status or last will), and nothing arrived for
# after_s seconds (its kind's interval times silent_after_intervals). At 17 M devices no check
# scans them all: counts come from device_state_counts (cityneuron.device_counts), new silences
# from device_activity's index on (kind, last_seen_at) above the previous check's threshold, and closings from
# the open silence alerts.
_OPEN_SILENT = (
    "INSERT INTO alerts (device_id, kind, district, rule, severity, opened_at, value, peak_value, detail)"
    " SELECT d.device_id, d.kind, d.district, %(rule)s, %(severity)s,"
    " d.last_seen_at + k.after_s * interval '1 second', k.after_s, k.after_s,"
    " 'nothing received for ' || k.after_s || ' s'"
    " FROM unnest(%(open_kinds)s::text[], %(open_after)s::float8[], %(since)s::timestamptz[])"
    " AS k(kind, after_s, since) JOIN LATERAL (SELECT * FROM device_activity AS d WHERE d.kind = k.kind"
    " AND d.last_seen_at < %(now)s - k.after_s * interval '1 second'"
    " AND (k.since IS NULL OR d.last_seen_at >= k.since) AND d.online IS NOT FALSE) AS d ON true"
    " ON CONFLICT (device_id, rule) WHERE closed_at IS NULL DO NOTHING"
    " RETURNING device_id, kind, district, (extract(epoch FROM opened_at) * 1000)::bigint, value, detail"
)
# Closed when the device spoke again (or said it went offline); the value is how long the
# silence lasted, in seconds.
_CLOSE_SILENT = (
    "WITH ended AS (SELECT a.id, CASE WHEN d.online IS FALSE"
    " THEN coalesce(r.status_changed_at, now()) ELSE coalesce(d.last_seen_at, now()) END AS at"
    " FROM alerts AS a JOIN device_activity AS d USING (device_id) JOIN devices AS r USING (device_id)"
    " JOIN unnest(%(kinds)s::text[], %(after)s::float8[]) AS k(kind, after_s) ON k.kind = d.kind"
    " WHERE a.rule = %(rule)s AND a.closed_at IS NULL"
    " AND (d.last_seen_at < %(now)s - k.after_s * interval '1 second' AND d.online IS NOT FALSE)"
    " IS NOT TRUE)"
    " UPDATE alerts AS a SET closed_at = greatest(a.opened_at, e.at),"
    " close_value = extract(epoch FROM greatest(a.opened_at, e.at) - a.opened_at) + a.value,"
    " peak_value = extract(epoch FROM greatest(a.opened_at, e.at) - a.opened_at) + a.value"
    " FROM ended AS e WHERE a.id = e.id"
    " RETURNING a.device_id, a.kind, a.district, (extract(epoch FROM a.closed_at) * 1000)::bigint,"
    " a.close_value"
)
# A device's last_seen_at can be written a little after its value (commit lag, a registry load):
# each check looks this far below the previous threshold.
_SINCE_MARGIN = timedelta(minutes=5)


def check_silence(
    conn: psycopg.Connection,
    rules: RuleSet,
    silent_after_intervals: float,
    checked_to: Mapping[str, datetime] | None = None,
    heard_since: datetime | None = None,
) -> SilenceReport:
    """Count silent devices per kind, and open/close the silence alerts (when the rule is on).

    ``checked_to``: the previous report's thresholds (None: look at every silent device).
    ``heard_since``: when this ingest began listening. Silence alerts of a kind open only once
    ingest has listened for the kind's whole silence span: after a restart a device's last message
    may still wait in the broker, or the device has not reached its slot yet; at 17 M devices,
    judging them at once would open (and soon close) millions of alerts. Such a kind is left out
    of ``checked_to``, so its first judged check looks at every silent device.
    """
    query, args = status_counts_sql(silent_after_intervals)
    silent_by_kind = {k.name: 0 for k in KINDS}
    for _, kind, status, n in conn.execute(query, args).fetchall():
        if status == "silent":
            silent_by_kind[kind] = silent_by_kind.get(kind, 0) + int(n)
    prune(conn)
    row = conn.execute("SELECT now()").fetchone()
    assert row is not None
    now: datetime = row[0]
    after = [k.interval_s * silent_after_intervals for k in KINDS]
    thresholds = {k.name: now - timedelta(seconds=a) for k, a in zip(KINDS, after, strict=True)}
    rule = rules.silent
    if rule is None:
        return SilenceReport(silent_by_kind, [], thresholds)
    judged = [k for k in KINDS if heard_since is None or heard_since <= thresholds[k.name]]
    opening = {
        "open_kinds": [k.name for k in judged],
        "open_after": [k.interval_s * silent_after_intervals for k in judged],
        "since": [
            checked_to[k.name] - _SINCE_MARGIN if checked_to and k.name in checked_to else None
            for k in judged
        ],
    }
    params = {"kinds": [k.name for k in KINDS], "after": after, "now": now, **opening}
    checked = {k.name: thresholds[k.name] for k in judged}
    return SilenceReport(silent_by_kind, _silence_alerts(conn, rule, params), checked)


def _silence_alerts(
    conn: psycopg.Connection, rule: SilentRule, params: dict[str, object]
) -> list[Transition]:
    params = {**params, "rule": rule.name, "severity": rule.severity}
    opened = conn.execute(_OPEN_SILENT, params).fetchall()
    closed = conn.execute(_CLOSE_SILENT, params).fetchall()
    transitions = [
        Transition("open", rule.name, rule.severity, r[0], r[1], r[2], int(r[3]), float(r[4]), r[5])
        for r in opened
    ]
    transitions += [
        Transition("closed", rule.name, rule.severity, r[0], r[1], r[2], int(r[3]), float(r[4]))
        for r in closed
    ]
    return transitions
