"""Writer lanes (ingest.writer, ingest.lane): a batch split by device over several database
connections, acked in received order once every lane committed its part."""

from __future__ import annotations

import time
from collections.abc import Iterable

import orjson
from test_ingest import _await_count, _publish, _rows, _running, _with_ingest

from cityneuron.contract import batch_topic, device_topic, encode_reading, now_ms
from cityneuron.decode import Limits, Message, decode_message, expand
from cityneuron.servers import MosquittoBroker
from cityneuron.settings import IngestSettings, Settings
from ingest.writer import _AckInOrder, lane_of, split

LIMITS = Limits.from_settings(IngestSettings())
POLES = [f"p-{i}" for i in range(40)]


def _message(topic: str, payload: bytes, mid: int) -> Message:
    return Message(topic, payload, mid=mid, qos=1, received_at=time.time(), generation=0)


def test_lane_of_a_device_is_stable_and_spreads_devices() -> None:
    lanes = [lane_of(device, 2) for device in POLES]
    assert lanes == [lane_of(device, 2) for device in POLES]  # no per-process salt (unlike hash())
    assert 10 < sum(lanes) < 30  # both lanes get devices
    assert {lane_of(device, 1) for device in POLES} == {0}


def test_split_keeps_each_device_in_one_lane_in_received_order() -> None:
    ts = now_ms()
    decoded = [
        decode_message(
            _message(device_topic("futian", "smart_pole", d), encode_reading(ts + n, {"lamp_level": 5.0}), n),
            LIMITS,
            ts,
        )
        for n, d in enumerate(POLES * 2)
    ]
    decoded.append(decode_message(_message("not/a/city/topic", b"{}", 999), LIMITS, ts))
    parts = split(decoded, 2)
    assert sum(map(len, parts)) == len(decoded)
    for index, part in enumerate(parts):
        devices = [d.topic.device_id for d in part if d.topic is not None]
        assert {lane_of(device, 2) for device in devices} == {index}
        # Each device's two messages, in the order received.
        for device in set(devices):
            mids = [d.message.mid for d in part if d.topic is not None and d.topic.device_id == device]
            assert mids == sorted(mids) and len(mids) == 2
    assert decoded[-1] in parts[0]  # no topic: only dead-lettered, by lane 0
    assert split(decoded, 1) == [decoded]


def test_split_spreads_a_gateway_batch_by_device_and_keeps_its_own_dead_letters_once() -> None:
    ts = now_ms()
    items = [{"id": d, "ts": ts, "m": {"lamp_level": 1.0}} for d in POLES[:10]]
    payload = orjson.dumps({"readings": [*items, {"ts": ts, "m": {}}]})  # the last names no device
    decoded = decode_message(_message(batch_topic("futian", "smart_pole"), payload, 7), LIMITS, ts)
    assert len(decoded.parts) == 10 and decoded.dead_letters  # the batch's own dead letter
    parts = split([decoded], 2)
    routed = sorted(
        (p.topic.device_id, index)
        for index, part in enumerate(parts)
        for p in part
        if p.topic and not p.topic.is_batch
    )
    assert routed == sorted((d, lane_of(d, 2)) for d in POLES[:10])
    own = [p for part in parts for p in part if p.topic is not None and p.topic.is_batch]
    assert len(own) == 1 and own[0] in parts[0]
    assert own[0].parts == [] and own[0].dead_letters == decoded.dead_letters
    assert expand(own) == own  # written as its dead letters only, never its parts again


class _Acks:
    def __init__(self) -> None:
        self.sent: list[list[int]] = []

    def __call__(self, messages: Iterable[Message]) -> int:
        mids = [m.mid for m in messages]
        self.sent.append(mids)
        return len(mids)


def test_batches_are_acked_in_received_order_once_every_part_committed() -> None:
    acks = _Acks()
    order = _AckInOrder(acks)
    batches = {n: [_message("t", b"", n * 10 + i) for i in range(2)] for n in range(3)}
    order.expect(0, batches[0], 2)
    order.expect(1, batches[1], 1)
    order.expect(2, batches[2], 2)
    order.committed(1)  # batch 1 is done before batch 0: held back
    order.committed(2)
    assert acks.sent == []
    order.committed(0)
    assert acks.sent == []  # one part of batch 0 is still being written
    order.committed(0)
    assert acks.sent == [[0, 1], [10, 11]]  # 0, then 1; batch 2 waits for its second part
    order.committed(2)
    assert acks.sent == [[0, 1], [10, 11], [20, 21]]


def test_several_lanes_store_every_device_and_count_each_in_order(
    settings: Settings, broker: MosquittoBroker
) -> None:
    """Three lanes, 40 devices, five readings each in one burst: every reading stored once, and
    each device's counters say its readings arrived in order (no gap, nothing reordered)."""
    ingest_settings = _with_ingest(settings, writers=3)
    t0 = now_ms() - 60_000
    messages = [
        (device_topic("futian", "smart_pole", d), encode_reading(t0 + n * 1000, {"lamp_level": 5.0}, n))
        for n in range(5)
        for d in POLES
    ]
    with _running(ingest_settings):
        _publish(broker, *messages)
        _await_count(settings, "SELECT count(*) FROM reading_smart_pole", len(messages))
    counters = _rows(
        settings,
        "SELECT count(*), min(messages), max(messages), max(seq_gaps), max(seq_reordered) FROM device_activity",
    )
    assert counters == [(len(POLES), 5, 5, 0, 0)]
