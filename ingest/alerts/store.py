"""The ``alerts`` table: open and close alerts, load open ones at start, and the silence check.

The unique partial index ``alerts_one_open`` (one open alert per device and rule) makes opening
idempotent: an alert another ingest process (or an earlier run) already opened is not opened
again, and only the process whose statement changed the table publishes the transition.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from psycopg import sql

from cityneuron.catalog import KIND_BY_NAME, KINDS
from cityneuron.contract import ms_to_datetime
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


# The same rule as the API's liveness (api/queries/liveness.py): a device is silent when it has
# been heard from, has not said it went offline (status or last will), and nothing arrived for
# after_s seconds (its kind's interval times silent_after_intervals).
_DEVICES = sql.SQL(
    "SELECT d.device_id, d.kind, d.district, d.last_seen_at AS since, k.after_s, d.online,"
    " d.status_changed_at,"
    " (d.last_seen_at < now() - k.after_s * interval '1 second' AND d.online IS NOT FALSE) AS silent"
    " FROM devices AS d JOIN unnest(%(kinds)s::text[], %(after)s::float8[]) AS k(kind, after_s) USING (kind)"
)
_COUNT_SILENT = sql.SQL("SELECT kind, count(*) FROM ({}) AS s WHERE silent GROUP BY kind").format(_DEVICES)
_OPEN_SILENT = sql.SQL(
    "INSERT INTO alerts (device_id, kind, district, rule, severity, opened_at, value, peak_value, detail)"
    " SELECT device_id, kind, district, %(rule)s, %(severity)s, since + after_s * interval '1 second',"
    " after_s, after_s, 'nothing received for ' || after_s || ' s'"
    " FROM ({}) AS s WHERE silent"
    " ON CONFLICT (device_id, rule) WHERE closed_at IS NULL DO NOTHING"
    " RETURNING device_id, kind, district, (extract(epoch FROM opened_at) * 1000)::bigint, value, detail"
).format(_DEVICES)
# Closed when the device spoke again (or said it went offline); the value is how long the
# silence lasted, in seconds.
_CLOSE_SILENT = sql.SQL(
    "WITH ended AS (SELECT s.device_id, CASE WHEN s.online IS FALSE"
    " THEN coalesce(s.status_changed_at, now()) ELSE coalesce(s.since, now()) END AS at"
    " FROM ({}) AS s WHERE s.silent IS NOT TRUE)"
    " UPDATE alerts AS a SET closed_at = greatest(a.opened_at, e.at),"
    " close_value = extract(epoch FROM greatest(a.opened_at, e.at) - a.opened_at) + a.value,"
    " peak_value = extract(epoch FROM greatest(a.opened_at, e.at) - a.opened_at) + a.value"
    " FROM ended AS e WHERE a.rule = %(rule)s AND a.closed_at IS NULL AND a.device_id = e.device_id"
    " RETURNING a.device_id, a.kind, a.district, (extract(epoch FROM a.closed_at) * 1000)::bigint,"
    " a.close_value"
).format(_DEVICES)


def check_silence(conn: psycopg.Connection, rules: RuleSet, silent_after_intervals: float) -> SilenceReport:
    """Count silent devices per kind, and open/close the silence alerts (when the rule is on)."""
    params = {
        "kinds": [k.name for k in KINDS],
        "after": [k.interval_s * silent_after_intervals for k in KINDS],
    }
    rows = conn.execute(_COUNT_SILENT, params).fetchall()
    silent_by_kind = {k.name: 0 for k in KINDS} | {kind: int(n) for kind, n in rows}
    rule = rules.silent
    if rule is None:
        return SilenceReport(silent_by_kind, [])
    return SilenceReport(silent_by_kind, _silence_alerts(conn, rule, params))


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
