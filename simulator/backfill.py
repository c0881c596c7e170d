"""History over a date range, and the ``cityneuron sim`` command that chooses how to run.

Through the broker, a backfill is a live run whose clock starts at ``--backfill-from`` and
runs as fast as the pipeline takes it (the gateways' QoS 1 backpressure sets the pace) until
``--backfill-to``; with ``--then-live`` it simply goes on in real time once it has caught up.
``--direct`` writes the same range straight into the database instead (simulator.direct).
Both cover the reports whose slot is in [from, to): running two consecutive ranges stores
every reading once.
"""

from __future__ import annotations

import argparse
import json
import logging
from datetime import UTC, datetime

from cityneuron.contract import now_ms
from cityneuron.settings import Settings
from simulator.city import build_city
from simulator.direct import DirectSummary, backfill_direct, load_registry
from simulator.errors import SimulatorError
from simulator.progress import format_summary
from simulator.runner import SimSummary, run

log = logging.getLogger("cityneuron.simulator")

# Simulated seconds per wall second during a backfill: in effect unlimited, so the publishers'
# backpressure alone sets the pace (the clock still never runs ahead of the wall clock).
BACKFILL_SPEED = 1e9
REGISTRY_CHOICES = ("status", "direct", "none")


def parse_time_ms(text: str) -> int:
    """Epoch ms of an RFC 3339 time or a date (UTC midnight); naive times are UTC."""
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise SimulatorError(f"not an RFC 3339 time or date: {text!r}") from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return int(value.timestamp() * 1000)


def backfill_broker(
    settings: Settings,
    from_ms: int,
    to_ms: int | None,
    *,
    then_live: bool = False,
    announce: bool = True,
    json_progress: bool = False,
) -> SimSummary:
    """Publish every report with a slot in [from_ms, to_ms) through the broker, then return
    (``then_live``: keep running in real time instead; ``to_ms`` is then ignored)."""
    end = None if then_live else (now_ms() if to_ms is None else to_ms)
    if end is not None and end <= from_ms:
        raise SimulatorError("the backfill range is empty: --backfill-to must be after --backfill-from")
    if from_ms > now_ms():
        raise SimulatorError("--backfill-from is in the future")
    fast = settings.model_copy(
        update={"simulator": settings.simulator.model_copy(update={"speed": BACKFILL_SPEED, "start": None})}
    )
    # The loop publishes slots in (start, until]: one millisecond back gives [from, to).
    return run(
        fast,
        start_ms=from_ms - 1,
        until_ms=None if end is None else end - 1,
        announce=announce,
        json_progress=json_progress,
    )


def _print(summary: SimSummary | DirectSummary, as_json: bool) -> None:
    if as_json:
        print(json.dumps(summary.as_dict()))
    else:
        print(format_summary(summary.as_dict()))


def sim_command(args: argparse.Namespace, settings: Settings) -> int:
    """``cityneuron sim``: live, backfill through the broker, or straight into the database."""
    options = settings.simulator
    registry = getattr(args, "registry", "status") or "status"
    as_json = bool(args.json)
    from_ms = parse_time_ms(args.backfill_from) if args.backfill_from else None
    to_ms = parse_time_ms(args.backfill_to) if args.backfill_to else None
    if to_ms is not None and from_ms is None:
        raise SimulatorError("--backfill-to needs --backfill-from")
    summary: SimSummary | DirectSummary
    if args.direct:
        if from_ms is None:
            # The registry alone: every device known to the platform before any telemetry.
            city = build_city(options.preset, options.scale, options.seed, options.shard_index_count())
            registered = load_registry(settings.database, city, now_ms())
            result = {"devices": city.devices, "registered": registered}
            print(
                json.dumps(result) if as_json else f"registry: {registered:,} new of {city.devices:,} devices"
            )
            return 0
        summary = backfill_direct(
            settings, from_ms, now_ms() if to_ms is None else to_ms, json_progress=as_json
        )
        _print(summary, as_json)
        return 0
    if registry == "direct":
        # Built inline so this copy of the city is freed before run() builds its own.
        load_registry(
            settings.database,
            build_city(options.preset, options.scale, options.seed, options.shard_index_count()),
            now_ms() if from_ms is None else from_ms,
            running=from_ms is None,
        )
    announce = registry == "status"
    if from_ms is not None:
        summary = backfill_broker(
            settings, from_ms, to_ms, then_live=args.then_live, announce=announce, json_progress=as_json
        )
    else:
        summary = run(
            settings, duration_s=args.duration, once=args.once, announce=announce, json_progress=as_json
        )
    _print(summary, as_json)
    return 0
