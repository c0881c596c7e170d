"""The writer stage: drain the inbox in batches, decode, hand each lane its devices, ack in order.

A batch is split by device over ``ingest.writers`` lanes (:mod:`ingest.lane`), each with its own
database connection, so PostgreSQL works on several transactions at once while one process keeps
the single MQTT subscription that survives a broker restart. A device always goes to the same
lane: its readings, counters, status and alerts are written in the order they arrived. The
batch is acked once every lane committed its part, and batches are acked in the order they
were received (MQTT 5, 4.6: PUBACKs in the order of the PUBLISH packets).
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Sequence

from cityneuron.contract import now_ms
from cityneuron.decode import Decoded, Message
from cityneuron.settings import IngestSettings
from ingest.fastdecode import decode_batch
from ingest.lane import DONE, Lane, Part

log = logging.getLogger("cityneuron.ingest")

_GET_POLL_S = 0.2
# How long the writer waits for a lane to end once the decoder stopped.
_DRAIN_JOIN_S = 5.0


def effective_batch_size(ingest: IngestSettings) -> int:
    """Batch size bounded by the receive window: the broker never has more unacked messages in
    flight to us than ``receive_maximum``, so a larger batch could only fill on the timer."""
    if ingest.batch_max_messages > ingest.receive_maximum:
        log.warning(
            "batch_max_messages=%d exceeds receive_maximum=%d: batches are capped at %d",
            ingest.batch_max_messages,
            ingest.receive_maximum,
            ingest.receive_maximum,
        )
        return ingest.receive_maximum
    return ingest.batch_max_messages


def lane_of(device_id: str, lanes: int) -> int:
    """The lane of a device: stable across processes and restarts (unlike ``hash``)."""
    return zlib.crc32(device_id.encode()) % lanes if lanes > 1 else 0


def split(decoded: Sequence[Decoded], lanes: int) -> list[list[Decoded]]:
    """The batch's messages per lane, each in received order. A gateway batch is split into its
    devices' parts (its own dead letters go to lane 0, as does a message without a topic)."""
    if lanes == 1:
        return [list(decoded)]
    parts: list[list[Decoded]] = [[] for _ in range(lanes)]
    for d in decoded:
        topic = d.topic
        if topic is None:
            parts[0].append(d)
        elif not topic.is_batch:
            parts[lane_of(topic.device_id, lanes)].append(d)
        else:
            for part in d.parts:
                assert part.topic is not None  # a part names its device
                parts[lane_of(part.topic.device_id, lanes)].append(part)
            if d.dead_letters:
                parts[0].append(dataclasses.replace(d, parts=[]))
    return parts


class _AckInOrder:
    """Acks each batch once all its parts are committed, and never before an earlier batch."""

    def __init__(self, ack: Callable[[Iterable[Message]], int]) -> None:
        self._ack = ack
        self._lock = threading.Lock()
        self._next = 0
        self._open: dict[int, tuple[list[Message], int]] = {}  # batch -> (messages, parts left)

    def expect(self, batch: int, messages: list[Message], parts: int) -> None:
        with self._lock:
            self._open[batch] = (messages, parts)

    def committed(self, batch: int) -> None:
        with self._lock:
            messages, left = self._open[batch]
            self._open[batch] = (messages, left - 1)
            while self._next in self._open and self._open[self._next][1] == 0:
                self._ack(self._open.pop(self._next)[0])
                self._next += 1


class BatchWriter:
    """Collects and decodes batches on the thread that calls :meth:`run`; the lanes write them."""

    def __init__(
        self,
        ingest: IngestSettings,
        inbox: queue.Queue[Message],
        ack: Callable[[Iterable[Message]], int],
        make_lane: Callable[[int, Callable[[int], None], int], Lane],
    ) -> None:
        """``make_lane(index, committed, batch_max)`` builds lane ``index`` of ``ingest.writers``."""
        self._inbox = inbox
        self._batch_max = effective_batch_size(ingest)
        self._flush_interval_s = ingest.flush_interval_ms / 1000
        self._acks = _AckInOrder(ack)
        self._lanes = [make_lane(i, self._acks.committed, self._batch_max) for i in range(ingest.writers)]
        self._draining = threading.Event()
        self._abort = threading.Event()
        self._failure: BaseException | None = None

    @property
    def db_connected(self) -> bool:
        return all(lane.db_connected for lane in self._lanes)

    @property
    def failure(self) -> BaseException | None:
        return self._failure or next((lane.failure for lane in self._lanes if lane.failure), None)

    def drain(self) -> None:
        """Finish what is in the inbox, then return from :meth:`run`."""
        self._draining.set()
        for lane in self._lanes:
            lane.drain()

    def abort(self) -> None:
        """Return from :meth:`run` as soon as possible, leaving the current batches unacked."""
        self._draining.set()
        self._abort.set()
        for lane in self._lanes:
            lane.abort()

    def run(self) -> None:
        """Decode batch after batch and hand the parts to the lanes, until drained or aborted.

        Each lane holds one part waiting while it writes the previous one, so decoding runs ahead
        of the database (the GIL is released while PostgreSQL works); what is unacked in ingest is
        bounded by the receive window (``ingest.receive_maximum``), as the broker sends no more.
        """
        threads = [
            threading.Thread(target=lane.run, name=f"ingest-writer-{lane.name}", daemon=True)
            for lane in self._lanes
        ]
        for thread in threads:
            thread.start()
        try:
            self._decode_loop()
        except BaseException as exc:
            log.exception("ingest decoder stopped")
            self._failure = exc
            self.abort()
        finally:
            for thread in threads:
                # Draining, a lane finishes its parts; once aborted, it is given a few seconds.
                while thread.is_alive() and not self._abort.is_set():
                    thread.join(_GET_POLL_S)
                thread.join(_DRAIN_JOIN_S)

    def _decode_loop(self) -> None:
        batch_number = 0
        while not self._stopping():
            batch = self._collect()
            if not batch:
                if self._draining.is_set():
                    self._hand_over([(lane, DONE) for lane in self._lanes])
                    return
                continue
            decoded = decode_batch(batch, self._lanes[0].limits, now_ms())
            parts = split(decoded, len(self._lanes))
            handed = [
                (lane, Part(batch_number, len(batch), part))
                for lane, part in zip(self._lanes, parts, strict=True)
                if part
            ]
            self._acks.expect(batch_number, batch, len(handed))
            self._hand_over(handed)
            batch_number += 1

    def _stopping(self) -> bool:
        """Aborted, or a lane failed (then the others stop too)."""
        if not self._abort.is_set() and any(lane.failure for lane in self._lanes):
            self.abort()
        return self._abort.is_set()

    def _hand_over(self, parts: list[tuple[Lane, Part]]) -> None:
        for lane, part in parts:
            while not self._stopping() and not lane.finished.is_set():
                try:
                    lane.parts.put(part, timeout=_GET_POLL_S)
                    break
                except queue.Full:
                    continue

    def _collect(self) -> list[Message]:
        try:
            first = self._inbox.get(timeout=_GET_POLL_S)
        except queue.Empty:
            return []
        batch = [first]
        deadline = time.monotonic() + self._flush_interval_s
        while len(batch) < self._batch_max:
            try:
                batch.append(self._inbox.get_nowait())
                continue
            except queue.Empty:
                pass
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                batch.append(self._inbox.get(timeout=remaining))
            except queue.Empty:
                break
        return batch
