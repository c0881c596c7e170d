"""A direct load refuses what the ingest refuses, with the ingest's own decoder.

Readings COPYed straight into the database (simulator.direct) never pass the ingest, so a fault
that pushes a value outside its catalog range (a spike of pole humidity to 790 %) or a firmware
rollout's unknown metric would be stored where the broker path dead-letters it. Here a
vectorised pre-screen with the catalog's bounds picks the few reports that may hold such a
reading; each of those is rendered exactly as it goes on the wire (simulator.messages) and
decoded by the ingest itself (``cityneuron.decode.decode_message``: catalog ranges, unknown
metrics, non-finite values, the dead letters' reason, detail and payload). So both paths agree
by construction: the valid metrics of a reading are stored, the refused ones become the same
dead letters, and a reading with nothing valid is not stored at all.

Age checks are made against the report's simulated arrival (its slot), as for a live run: a
backfill of history is not "too old" for having been loaded late.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from cityneuron.contract import encode_reading, encode_readings
from cityneuron.decode import DeadLetter, Limits, Message, decode_message
from cityneuron.settings import IngestSettings
from simulator.kinds import KindModel, Values
from simulator.messages import telemetry_topic, wire_columns, wire_metrics

BoolArray = NDArray[np.bool_]


@dataclass(frozen=True, slots=True)
class Screened:
    """``keep``: readings with at least one valid metric (the rest is not stored);
    ``dead_letters``: what the ingest would have written for the refused ones."""

    keep: BoolArray
    dead_letters: list[DeadLetter]


def _suspects(model: KindModel, values: Values, rounded: dict[str, NDArray[np.float64]]) -> BoolArray:
    """Readings the ingest might refuse: a catalog metric outside its range (or not finite) or a
    metric the catalog does not know. A superset: the ingest's decoder has the last word."""
    n = len(next(iter(rounded.values()))) if rounded else 0
    suspect = np.zeros(n, dtype=np.bool_)
    for metric in model.kind.metrics:
        column = rounded[metric.name]
        # NaN: the device has no such sensor and the wire leaves the metric out.
        with np.errstate(invalid="ignore"):
            suspect |= ~np.isnan(column) & ~((column >= metric.low) & (column <= metric.high))
    for name, column in values.items():
        if name not in model.kind.metric_by_name:
            suspect |= ~np.isnan(np.asarray(column, dtype=np.float64))
    return suspect


def screen(
    model: KindModel,
    ingest: IngestSettings,
    rows: NDArray[np.int64],
    times: NDArray[np.int64],
    received: NDArray[np.int64],
    seq: NDArray[np.int64],
    values: Values,
    rounded: dict[str, NDArray[np.float64]],
    width: int,
) -> Screened:
    """Check readings (``rows`` at ``times``, in reports of ``width`` consecutive readings that
    arrived at ``received``) as the ingest checks them; refused metrics become NaN in ``rounded``
    (in place), which the load stores as NULL."""
    keep = np.ones(len(rows), dtype=np.bool_)
    suspects = np.flatnonzero(_suspects(model, values, rounded))
    if not len(suspects):
        return Screened(keep, [])
    limits = Limits.from_settings(ingest)
    letters: list[DeadLetter] = []
    # Whole reports: a meter's frozen readings travel (and are refused) as one message.
    for report in np.unique(suspects // width).tolist():
        at = slice(report * width, (report + 1) * width)
        subset = {name: np.asarray(column)[at] for name, column in values.items()}
        items = wire_metrics(wire_columns(model, subset), width)
        ts, seqs = times[at].tolist(), seq[at].tolist()
        if width == 1:
            payload = encode_reading(ts[0], items[0], seqs[0])
        else:
            payload = encode_readings(list(zip(ts, items, seqs, strict=True)))
        row = int(rows[at.start])
        arrival_ms = int(received[at.start])
        message = Message(telemetry_topic(model.table, row), payload, 0, 1, arrival_ms / 1000.0, 0)
        decoded = decode_message(message, limits, arrival_ms)
        letters += decoded.dead_letters
        accepted = {r.ts_ms: r.values for r in decoded.rows}
        for offset, t in enumerate(ts):
            i = at.start + offset
            good = accepted.get(t)
            if good is None:
                keep[i] = False
                continue
            for name, column in rounded.items():
                if name not in good:
                    column[i] = np.nan
    return Screened(keep, letters)
