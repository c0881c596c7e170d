"""Several publishing processes for one load, merged into one result.

One Python process tops out near 10 k messages/s (paho's per-message cost), so a higher
target needs more processes. Process k of N (``multiprocessing`` spawn: no shared GIL) takes
the load's devices k, k + N, ... and the messages k, k + N, ... of the one open-loop schedule
(each about rate / N with the same shape), so together they send exactly the single-process
schedule. They connect, wait at a common start line, publish, and send back their counts,
latency histograms (merged exactly: same buckets) and expected readings; the parent adds
them up and reconciles once against the database.
"""

from __future__ import annotations

import copy
import logging
import multiprocessing
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from multiprocessing.synchronize import Event as ProcessEvent
from typing import Any

import numpy as np
from numpy.typing import NDArray

from cityneuron.settings import MqttSettings
from simulator.errors import PublishError, SimulatorError
from simulator.load.latency import LatencyHistogram
from simulator.load.namespace import load_city
from simulator.load.payloads import LoadDevices, Style
from simulator.load.publish import Injections, Progress, PublishResult, StormSetup, publish_load
from simulator.load.shapes import LoadProfile
from simulator.load.storm import StormPlan, district_devices

log = logging.getLogger("cityneuron.load")

_POLL_S = 0.2
_JOIN_S = 10.0


class LoadProcessError(SimulatorError):
    """A publishing process failed or died."""


@dataclass(frozen=True, slots=True)
class LoadJob:
    """Everything a publishing process needs (picklable: sent to spawned processes)."""

    mqtt: MqttSettings
    preset: str
    scale: float
    seed: int
    device_limit: int | None
    profile: LoadProfile
    qos: int
    style: Style
    readings_per_message: int
    connections: int
    injections: Injections
    storm: StormPlan | None
    processes: int
    id_prefix: str = ""  # the load's own devices (simulator/load/namespace.py)


def devices_share(devices: LoadDevices, part: int, parts: int) -> tuple[LoadDevices, NDArray[np.int64]]:
    """Devices ``part``, ``part + parts``, ... and their indices in ``devices``."""
    indices = np.arange(part, len(devices), parts, dtype=np.int64)
    mine = copy.copy(devices)
    n = len(devices)
    # Every per-device column, whatever LoadDevices holds (lists and arrays of length n).
    for name, value in vars(devices).items():
        if isinstance(value, np.ndarray) and value.shape[:1] == (n,):
            setattr(mine, name, value[indices].copy())
        elif isinstance(value, list) and len(value) == n:
            setattr(mine, name, [value[i] for i in indices.tolist()])
    return mine, indices


def publish_in_processes(
    job: LoadJob, devices: LoadDevices, on_progress: Callable[[Progress], None] | None = None
) -> PublishResult:
    """Run ``job`` in ``job.processes`` processes; ``devices`` is the whole load (parent's copy)."""
    ctx = multiprocessing.get_context("spawn")
    events: Any = ctx.Queue()
    go, stop = ctx.Event(), ctx.Event()
    workers = [
        ctx.Process(target=_worker, args=(job, k, events, go, stop), name=f"cityneuron-load-{k}", daemon=True)
        for k in range(job.processes)
    ]
    for worker in workers:
        worker.start()
    outcomes: dict[int, dict[str, Any]] = {}
    try:
        _collect(job.processes, workers, events, go, outcomes, on_progress)
    except BaseException:
        stop.set()
        raise
    finally:
        for worker in workers:
            worker.join(_JOIN_S)
            if worker.is_alive():
                worker.terminate()
                worker.join(_JOIN_S)
    return _merge([outcomes[k] for k in range(job.processes)], devices)


def _collect(
    parts: int,
    workers: list[Any],
    events: Any,
    go: ProcessEvent,
    outcomes: dict[int, dict[str, Any]],
    on_progress: Callable[[Progress], None] | None,
) -> None:
    """Start everyone together, relay their progress, and gather their results."""
    ready: set[int] = set()
    latest: dict[int, Progress] = {}
    next_progress = 0.0
    while len(outcomes) < parts:
        try:
            kind, part, payload = events.get(timeout=_POLL_S)
        except queue.Empty:
            dead = [k for k, w in enumerate(workers) if not w.is_alive() and k not in outcomes]
            if dead:
                raise LoadProcessError(
                    f"publishing process {dead[0]} died (exit code {workers[dead[0]].exitcode})"
                ) from None
            continue
        if kind == "unreachable":
            raise PublishError(f"publishing process {part}: {payload}")
        if kind == "error":
            raise LoadProcessError(f"publishing process {part} failed: {payload}")
        if kind == "ready":
            ready.add(part)
            if len(ready) == parts:
                log.info("%d publishing processes connected: start", parts)
                go.set()
        elif kind == "progress":
            latest[part] = payload
            now = time.monotonic()
            if on_progress is not None and now >= next_progress:
                next_progress = now + 1.0
                on_progress(_sum_progress(list(latest.values())))
        elif kind == "done":
            outcomes[part] = payload


def _sum_progress(shares: list[Progress]) -> Progress:
    return Progress(
        elapsed_s=max(p.elapsed_s for p in shares),
        target_rate=sum(p.target_rate for p in shares),
        achieved_rate=sum(p.achieved_rate for p in shares),
        sent=sum(p.sent for p in shares),
        in_flight=sum(p.in_flight for p in shares),
        errors=sum(p.errors for p in shares),
        lag_ms=max(p.lag_ms for p in shares),
    )


def _worker(job: LoadJob, part: int, events: Any, go: ProcessEvent, stop: ProcessEvent) -> None:
    """One publishing process: its share of the devices and of the schedule."""
    logging.basicConfig(level=logging.WARNING, format=f"%(asctime)s load[{part}] %(levelname)s %(message)s")
    try:
        city = load_city(job.preset, job.scale, job.seed, job.id_prefix)
        devices, indices = devices_share(LoadDevices(city, job.device_limit), part, job.processes)
        storm = None
        if job.storm is not None and district_devices(devices, job.storm.district):
            storm = StormSetup(job.storm, city)
        local_stop = threading.Event()
        threading.Thread(target=_mirror, args=(stop, local_stop), daemon=True).start()

        def ready() -> None:
            events.put(("ready", part, None))
            while not go.wait(_POLL_S):
                if local_stop.is_set():
                    raise LoadProcessError("stopped before the start")

        result = publish_load(
            job.mqtt,
            devices,
            job.profile,
            qos=job.qos,
            style=job.style,
            readings_per_message=job.readings_per_message,
            connections=job.connections,
            injections=job.injections,
            stop=local_stop,
            on_progress=lambda p: events.put(("progress", part, p)),
            storm=storm,
            share=(part, job.processes),
            ready=ready,
        )
        events.put(("done", part, _outcome(result, indices)))
    except PublishError as exc:  # the broker cannot be reached: the parent exits with its status
        events.put(("unreachable", part, str(exc)))
    except BaseException as exc:  # reported to the parent, which fails the run
        events.put(("error", part, f"{type(exc).__name__}: {exc}"))


def _mirror(source: ProcessEvent, target: threading.Event) -> None:
    # Poll, never sleep in source.wait(): this daemon thread dies wherever it is when its
    # process exits, and a process that dies inside a multiprocessing Event's wait() leaves the
    # Event counting a sleeper that never wakes, so the parent's stop.set() (after one process
    # failed, say the broker refused it) waited for it forever.
    while not source.is_set():
        time.sleep(_POLL_S)
    target.set()


def _outcome(result: PublishResult, indices: NDArray[np.int64]) -> dict[str, Any]:
    """The result's fields with device numbers of the whole load (not of this share)."""
    out = {f.name: getattr(result, f.name) for f in fields(result) if f.name != "devices"}
    out["expected_keys"] = [_to_global(k, indices) for k in result.expected_keys]
    if result.storm is not None:
        result.storm.delayed_keys = _to_global(result.storm.delayed_keys, indices)
    return out


def _to_global(keys: NDArray[np.int64], indices: NDArray[np.int64]) -> NDArray[np.int64]:
    mapped = keys.copy()
    mapped[:, 0] = indices[keys[:, 0]]
    return mapped


def _merge(outcomes: list[dict[str, Any]], devices: LoadDevices) -> PublishResult:
    send_lag = LatencyHistogram()
    for o in outcomes:
        send_lag.merge(o["send_lag"])
    storms = [o["storm"] for o in outcomes if o["storm"] is not None]
    storm = storms[0] if storms else None
    for other in storms[1:]:
        assert storm is not None
        storm.merge(other)

    def total(name: str) -> int:
        return sum(int(o[name]) for o in outcomes)

    return PublishResult(
        started_ms=min(o["started_ms"] for o in outcomes),
        finished_ms=max(o["finished_ms"] for o in outcomes),
        duration_s=max(o["duration_s"] for o in outcomes),
        scheduled=total("scheduled"),
        messages_sent=total("messages_sent"),
        readings_expected=total("readings_expected"),
        dropped=total("dropped"),
        duplicated=total("duplicated"),
        malformed=total("malformed"),
        unacked=total("unacked"),
        errors=total("errors"),
        send_lag=send_lag,
        expected_keys=[np.concatenate([k for o in outcomes for k in o["expected_keys"]])],
        devices=devices,
        storm=storm,
        processes=len(outcomes),
    )
