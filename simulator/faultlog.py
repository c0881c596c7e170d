"""The fault log: one JSON line per injected fault, the ground truth a platform is scored against.

Each line: ``device_id``, ``kind``, ``district``, ``type``, ``start`` and ``end`` (RFC 3339, UTC)
with ``start_ms`` and ``end_ms`` (epoch ms), and ``params``. Scenario events that take devices
offline are logged once per district with ``device_id`` null and a type ``scenario.<event>``.
A fault is logged when it first affects a message, with its planned end.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from simulator.errors import SimulatorError

# Logged episodes remembered to avoid logging them twice; older ones are forgotten once the
# simulated time has passed their end (they cannot affect another message).
_PRUNE_ABOVE = 100_000


def rfc3339(ts_ms: int) -> str:
    """UTC RFC 3339 with milliseconds, e.g. 2025-03-11T04:00:00.000Z."""
    return (
        datetime.fromtimestamp(ts_ms / 1000, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )


@dataclass(frozen=True, slots=True)
class FaultRecord:
    device_id: str | None
    kind: str | None
    district: str
    type: str
    start_ms: int
    end_ms: int
    params: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "device_id": self.device_id,
            "kind": self.kind,
            "district": self.district,
            "type": self.type,
            "start": rfc3339(self.start_ms),
            "end": rfc3339(self.end_ms),
            "start_ms": self.start_ms,
            "end_ms": self.end_ms,
            "params": self.params,
        }


class FaultLog:
    """Collects fault records once each and appends them to ``path`` (JSON lines), if given.

    The file is truncated when the log is created and opened only to append a batch, so a run
    that stops at any moment leaves complete lines behind.
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.records: list[FaultRecord] = []
        self._seen: dict[tuple[Any, ...], int] = {}
        self._pending: list[FaultRecord] = []
        if path is not None:
            try:
                Path(path).write_bytes(b"")
            except OSError as exc:
                raise SimulatorError(f"cannot write the fault log {path}: {exc}") from exc

    def add(self, identity: tuple[Any, ...], record: FaultRecord) -> None:
        """Log ``record`` unless the fault ``identity`` was logged before."""
        if identity in self._seen:
            return
        self._seen[identity] = record.end_ms
        self.records.append(record)
        self._pending.append(record)

    def seen(self, identity: tuple[Any, ...]) -> bool:
        return identity in self._seen

    def flush(self, now_ms: int) -> None:
        """Append pending records to the file and forget faults that ended before ``now_ms``."""
        if self._pending and self.path is not None:
            lines = b"".join(orjson.dumps(r.as_dict()) + b"\n" for r in self._pending)
            try:
                with Path(self.path).open("ab") as out:
                    out.write(lines)
            except OSError as exc:
                raise SimulatorError(f"cannot write the fault log {self.path}: {exc}") from exc
        self._pending.clear()
        if len(self._seen) > _PRUNE_ABOVE:
            self._seen = {k: end for k, end in self._seen.items() if end >= now_ms}
        # The in-memory copy serves tests and summaries; keep it bounded on long runs.
        if len(self.records) > _PRUNE_ABOVE:
            del self.records[: len(self.records) - _PRUNE_ABOVE]


def read_fault_log(path: Path) -> list[dict[str, Any]]:
    """Every record of a fault log file."""
    return [orjson.loads(line) for line in Path(path).read_bytes().splitlines() if line.strip()]
