"""The fast path of decoding: a whole batch of telemetry in one compiled pass per message
(msgspec) and vectorised checks per kind, into columns.

For each kind a typed msgspec decoder parses a telemetry payload (one reading or an array) and
validates while decoding: the shape, ``seq`` a non-negative int64, every metric known to the kind
(unknown names refused), a number (``true`` and ``null`` refused) within the catalog's range.
The batch's readings of a kind then become columns with one pass each, and the timestamp window
and "at least one metric" are checked with one vectorised comparison per column.

The fast path never writes a dead letter: a message it does not accept whole (anything wrong,
an RFC 3339 ``ts``, a status, a gateway batch) goes through the exact path,
:func:`cityneuron.decode.decode_message`, which stores what is valid and dead-letters the rest with
its reason. So it changes the cost of valid messages, never what is stored or refused.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from itertools import chain
from operator import attrgetter
from typing import Annotated, Any

import msgspec
import numpy as np

from cityneuron import contract
from cityneuron.catalog import KIND_BY_NAME, KINDS, Kind
from cityneuron.decode import NO_SEQ, Block, Decoded, Limits, Message, decode_message
from cityneuron.errors import ContractError

log = logging.getLogger("cityneuron.ingest")

# contract.parse_ts: epoch ms in [2000-01-01, 2100-01-01).
_MIN_TS_MS = 946_684_800_000
_MAX_TS_MS = 4_102_444_800_000
_SEQ_MAX = 2**63 - 1
# Parsed topics are kept (a city has a bounded set of devices); beyond this the cache starts over.
_TOPIC_CACHE_MAX = 200_000


def _decoder(kind: Kind) -> msgspec.json.Decoder[Any]:
    # A metric absent from a reading decodes to NaN (not None: JSON null must stay refused).
    metrics = msgspec.defstruct(
        f"{kind.name}_metrics",
        [(m.name, Annotated[float, msgspec.Meta(ge=m.low, le=m.high)], math.nan) for m in kind.metrics],
        forbid_unknown_fields=True,
        gc=False,
    )
    reading = msgspec.defstruct(
        f"{kind.name}_reading",
        [
            ("ts", int | str),
            ("m", metrics),
            ("seq", Annotated[int, msgspec.Meta(ge=0, le=_SEQ_MAX)] | None, None),
        ],
        gc=False,
    )
    return msgspec.json.Decoder(reading | list[reading])  # type: ignore[valid-type]


_DECODERS = {kind.name: _decoder(kind) for kind in KINDS}
_metrics_of = attrgetter("m")
_ts_seq_of = attrgetter("ts", "seq")
_astuple = msgspec.structs.astuple
_topics: dict[str, contract.DeviceTopic] = {}


def _parse_topic(topic: str) -> contract.DeviceTopic:
    parsed = _topics.get(topic)
    if parsed is None:
        parsed = contract.parse_topic(topic)
        if len(_topics) >= _TOPIC_CACHE_MAX:
            _topics.clear()
        _topics[topic] = parsed
    return parsed


def _fast_candidate(message: Message, limits: Limits) -> tuple[contract.DeviceTopic, list[Any]] | None:
    """The topic and typed readings of a telemetry message the decoder accepts; else None."""
    if len(message.payload) > limits.max_payload_bytes:
        return None
    try:
        topic = _parse_topic(message.topic)
    except ContractError:
        return None
    if topic.is_batch or topic.channel != contract.TELEMETRY:
        return None
    try:
        body = _DECODERS[topic.kind].decode(message.payload)
    except msgspec.MsgspecError:
        return None
    items = body if isinstance(body, list) else [body]
    return (topic, items) if items else None


def _columns(items: list[Any], metrics: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ts, seq and values of typed readings; a ts that is not an integer epoch ms in range becomes
    -1, which fails the window check and sends its message to the exact path."""
    n = len(items)
    values = np.fromiter(chain.from_iterable(map(_astuple, map(_metrics_of, items))), np.float64, n * metrics)
    pairs = list(map(_ts_seq_of, items))
    try:
        ts_seq = np.fromiter(chain.from_iterable(pairs), np.int64, 2 * n).reshape(n, 2)
        ts, seq = ts_seq[:, 0], ts_seq[:, 1]
    except (TypeError, ValueError, OverflowError):  # a seq left out (None), an RFC 3339 ts, beyond int64
        ts = np.fromiter(
            (t if type(t) is int and _MIN_TS_MS <= t < _MAX_TS_MS else -1 for t, _ in pairs), np.int64, n
        )
        seq = np.fromiter((NO_SEQ if s is None else s for _, s in pairs), np.int64, n)
    return ts, seq, values.reshape(n, metrics)


def _decode_group(
    kind: Kind,
    group: list[tuple[int, contract.DeviceTopic, list[Any]]],
    messages: Sequence[Message],
    decoded: list[Decoded | None],
    oldest_ms: int,
    newest_ms: int,
) -> None:
    """Columns for one kind's fast candidates; the messages accepted whole get their Decoded
    (the others stay None, for the exact path)."""
    counts = np.fromiter((len(items) for _, _, items in group), np.int64, len(group))
    ts, seq, values = _columns([item for _, _, items in group for item in items], len(kind.metrics))
    ends = np.cumsum(counts)
    starts = ends - counts
    row_ok = (ts >= oldest_ms) & (ts <= newest_ms) & ~np.isnan(values).all(axis=1)
    ok = np.logical_and.reduceat(row_ok, starts)
    for (index, topic, _), good, start, end in zip(
        group, ok.tolist(), starts.tolist(), ends.tolist(), strict=True
    ):
        if good:
            block = Block(ts[start:end], seq[start:end], values[start:end])
            decoded[index] = Decoded(messages[index], topic, block=block)


def decode_batch(messages: Sequence[Message], limits: Limits, now_ms: int) -> list[Decoded]:
    """Decode and validate a batch; valid telemetry in bulk, everything else exactly."""
    decoded: list[Decoded | None] = [None] * len(messages)
    by_kind: dict[str, list[tuple[int, contract.DeviceTopic, list[Any]]]] = {}
    for index, message in enumerate(messages):
        try:
            candidate = _fast_candidate(message, limits)
        except Exception:  # e.g. RecursionError on absurd nesting: the exact path decides
            candidate = None
        if candidate is not None:
            by_kind.setdefault(candidate[0].kind, []).append((index, *candidate))
    oldest_ms = max(_MIN_TS_MS, now_ms - limits.max_age_ms)
    newest_ms = min(_MAX_TS_MS - 1, now_ms + limits.future_tolerance_ms)
    for kind_name, group in by_kind.items():
        try:
            _decode_group(KIND_BY_NAME[kind_name], group, messages, decoded, oldest_ms, newest_ms)
        except Exception:
            # Bad input must never stop ingest: a fast-path failure nobody foresaw sends the group
            # to the exact path (the reference), and says so.
            log.warning(
                "fast decode of %d %s messages failed: exact path", len(group), kind_name, exc_info=True
            )
            for index, _, _ in group:
                decoded[index] = None
    for index, message in enumerate(messages):
        if decoded[index] is None:
            decoded[index] = decode_message(message, limits, now_ms)
    return [d for d in decoded if d is not None]
