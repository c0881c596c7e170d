"""The ``cityneuron`` command: up, db init, ingest, api, sim, and the commands of ``_COMMAND_MODULES``.

Options whose ``dest`` is ``section__field`` override that setting; any other option is an
argument of the command itself.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from cityneuron import __version__
from cityneuron.errors import CityNeuronError
from cityneuron.localstack import fill_from_stack
from cityneuron.settings import Settings

if TYPE_CHECKING:
    from datetime import datetime

    from cityneuron.table_retention import Pruned

log = logging.getLogger("cityneuron.cli")

# Each module defines ``add_parser(commands)``, which adds its subcommand and sets the defaults
# ``handler=<function(args, settings) -> exit status>``.
_COMMAND_MODULES: tuple[str, ...] = ("simulator.load.cli", "api.keys_cli", "cityneuron.broker_cli")
# Options that are settings but not ``section__field`` shaped.
_TOP_LEVEL_SETTINGS = frozenset({"log_level"})


def _add_mqtt_db_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mqtt-host", dest="mqtt__host", help="broker host")
    parser.add_argument("--mqtt-port", dest="mqtt__port", type=int, help="broker port")
    parser.add_argument("--database-url", dest="database__url", help="postgresql:// URL")


def _add_sim_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", dest="simulator__preset", choices=["small", "district", "shenzhen"])
    parser.add_argument("--scale", dest="simulator__scale", type=float, help="multiply the preset's counts")
    parser.add_argument("--seed", dest="simulator__seed", type=int)
    parser.add_argument("--speed", dest="simulator__speed", type=float, help="simulated seconds per second")
    parser.add_argument(
        "--start",
        dest="simulator__start",
        help="simulated start time, RFC 3339 (default: now; 24 h ago when --speed > 1)",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cityneuron", description="CityNeuron city sensor-network testbed")
    parser.add_argument("--version", action="version", version=f"cityneuron {__version__}")
    parser.add_argument("--log-level", dest="log_level", help="DEBUG, INFO, WARNING, ERROR")
    commands = parser.add_subparsers(dest="command", required=True)

    up = commands.add_parser("up", help="run the whole stack locally (no Docker)")
    up.add_argument("--home", dest="stack__home", type=Path, help="data folder (default ./.cityneuron)")
    up.add_argument("--mqtt-port", dest="mqtt__port", type=int)
    up.add_argument("--postgres-port", dest="stack__postgres_port", type=int)
    up.add_argument("--api-port", dest="api__port", type=int)
    up.add_argument("--ingest-http-port", dest="ingest__http_port", type=int)
    up.add_argument("--no-sim", dest="stack__run_simulator", action="store_false", default=None)
    up.add_argument(
        "--mode",
        dest="simulator__mode",
        choices=["gateway", "device"],
        help="gateway (default, any city) or one connection per device (small cities)",
    )
    up.add_argument(
        "--retention-hours",
        type=float,
        help="drop readings older than this (whole partitions: daily from 4 days, hourly from 4 hours, else 15 or 5 minutes)",
    )
    _add_sim_options(up)

    db = commands.add_parser("db", help="database tasks")
    db_commands = db.add_subparsers(dest="db_command", required=True)
    db_init = db_commands.add_parser("init", help="create or migrate the schema (idempotent)")
    db_init.add_argument("--database-url", dest="database__url")
    db_maintain = db_commands.add_parser(
        "maintain",
        help="make partitions ahead and apply the retentions now (pg_partman, dead letters, closed alerts; for cron)",
    )
    db_maintain.add_argument("--database-url", dest="database__url")

    ingest = commands.add_parser("ingest", help="run the ingest service")
    _add_mqtt_db_options(ingest)

    api = commands.add_parser("api", help="run the HTTP API")
    api.add_argument("--host", dest="api__host")
    api.add_argument("--port", dest="api__port", type=int)
    api.add_argument("--workers", dest="api__workers", type=int, help="uvicorn worker processes")
    _add_mqtt_db_options(api)

    sim = commands.add_parser("sim", help="run the city simulator")
    _add_sim_options(sim)
    sim.add_argument("--mqtt-host", dest="mqtt__host")
    sim.add_argument("--mqtt-port", dest="mqtt__port", type=int)
    sim.add_argument("--connections", dest="simulator__connections", type=int, help="gateway connections")
    sim.add_argument("--qos", dest="simulator__qos", type=int, choices=[0, 1])
    sim.add_argument("--mode", dest="simulator__mode", choices=["gateway", "device"])
    sim.add_argument("--shard", dest="simulator__shard", help="i/N: simulate shard i (0-based) of N")
    sim.add_argument(
        "--scenario", dest="simulator__scenario_file", type=Path, help="scenario timeline (TOML)"
    )
    sim.add_argument("--faults", dest="simulator__faults_file", type=Path, help="fault rates per kind (TOML)")
    sim.add_argument("--fault-log", dest="simulator__fault_log", type=Path, help="write injected faults here")
    sim.add_argument("--duration", type=float, help="stop after this many seconds")
    sim.add_argument("--once", action="store_true", help="publish one report per device, then exit")
    sim.add_argument("--json", action="store_true", help="print the summary as JSON")
    sim.add_argument("--database-url", dest="database__url", help="postgresql:// URL (for --direct)")
    sim.add_argument("--backfill-from", help="publish history from this time (RFC 3339 or date)")
    sim.add_argument("--backfill-to", help="end of the backfill, exclusive (default: now)")
    sim.add_argument("--then-live", action="store_true", help="after the backfill, go on in real time")
    sim.add_argument(
        "--direct",
        action="store_true",
        help="COPY straight into the database: the backfill range (with the registry), or the registry alone",
    )
    sim.add_argument(
        "--registry",
        choices=["status", "direct", "none"],
        default="status",
        help="how devices are registered: retained statuses (default), COPY into the database, or not at all",
    )
    for module_name in _COMMAND_MODULES:
        importlib.import_module(module_name).add_parser(commands)
    return parser


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The settings given on the command line: ``{section: {field: value}}`` (or a top-level value)."""
    overrides: dict[str, Any] = {}
    for key, value in vars(args).items():
        if value is None or ("__" not in key and key not in _TOP_LEVEL_SETTINGS):
            continue
        section, _, field = key.partition("__")
        if field:
            overrides.setdefault(section, {})[field] = value
        else:
            overrides[section] = value
    return overrides


def build_settings(args: argparse.Namespace) -> Settings:
    """Settings from the environment, overridden by the command line options given; a command
    that runs next to a local stack (``local_stack`` default) takes what is still unset from it."""
    overrides = _overrides(args)
    base = Settings()
    merged = base.model_dump()
    for section, values in overrides.items():
        if isinstance(values, dict):
            merged[section].update(values)
        else:
            merged[section] = values
    settings = Settings.model_validate(merged)
    if getattr(args, "local_stack", False):
        given = {k: v for k, v in overrides.items() if isinstance(v, dict)}
        if getattr(args, "mqtt_url", None):  # `cityneuron load --mqtt-url` names its broker itself
            given.setdefault("mqtt", {})["url"] = args.mqtt_url
        settings = fill_from_stack(settings, given)
    return settings


# Partition (TimescaleDB: chunk) widths for a retention, widest first: the retention spans at
# least _PARTITIONS_PER_RETENTION of them, so dropping the oldest frees a small share of the disk.
_PARTITION_WIDTHS_H: tuple[tuple[float, str], ...] = (
    (24.0, "1 day"),
    (1.0, "1 hour"),
    (0.25, "15 minutes"),
    (5 / 60, "5 minutes"),
)
_PARTITIONS_PER_RETENTION = 4


def partition_width(retention_hours: float) -> str:
    """The widest partition that fits the retention ``_PARTITIONS_PER_RETENTION`` times (never
    under 5 minutes: pg_partman's maintenance runs every minute)."""
    for width_h, width in _PARTITION_WIDTHS_H:
        if retention_hours >= width_h * _PARTITIONS_PER_RETENTION:
            return width
    return _PARTITION_WIDTHS_H[-1][1]


def with_retention_hours(settings: Settings, hours: float | None) -> Settings:
    """``--retention-hours``: the database retention, with partitions narrow enough that the
    retention drops a small part at a time (:func:`partition_width`): daily from 4 days, hourly
    from 4 hours, then 15 and 5 minutes, so a short retention can be watched at work."""
    if hours is None:
        return settings
    if hours <= 0:
        raise CityNeuronError("--retention-hours must be positive")
    update: dict[str, Any] = {
        "retention": f"{hours * 3600:.0f} seconds",
        "chunk_interval": partition_width(hours),
    }
    return settings.model_copy(update={"database": settings.database.model_copy(update=update)})


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _pruned_text(pruned: Pruned) -> str:
    """``db maintain``'s report of the dead letters and closed alerts it removed."""
    if not pruned.ran:
        return "dead letters and closed alerts: another session is removing them, skipped"

    def one(what: str, count: int, event: str, cutoff: datetime | None) -> str:
        if cutoff is None:
            return f"{what}: kept (no retention)"
        return f"{what}: {count} removed ({event} before {cutoff.isoformat(timespec='seconds')})"

    return "; ".join(
        (
            one("dead letters", pruned.dead_letters, "received", pruned.dead_letter_cutoff),
            one("closed alerts", pruned.closed_alerts, "closed", pruned.closed_alert_cutoff),
        )
    )


def _run(args: argparse.Namespace, settings: Settings) -> int:
    handler = getattr(args, "handler", None)
    if handler is not None:
        return int(handler(args, settings))
    if args.command == "up":
        from cityneuron.stack import run_stack

        return run_stack(with_retention_hours(settings, getattr(args, "retention_hours", None)))
    if args.command == "db" and args.db_command == "maintain":
        from cityneuron.partitions import maintain

        pruned = maintain(settings.database)
        print(_pruned_text(pruned))
        return 0
    if args.command == "db":
        from cityneuron.schema import init_schema

        info = init_schema(settings.database)
        print(f"schema ready (PostgreSQL {info.server_version}, TimescaleDB {info.timescaledb or 'absent'})")
        return 0
    if args.command == "ingest":
        from ingest.service import run as run_ingest

        run_ingest(settings)
        return 0
    if args.command == "api":
        from api.main import run as run_api

        run_api(settings)
        return 0
    if args.command == "sim":
        from simulator.backfill import sim_command

        return sim_command(args, settings)
    raise AssertionError(f"unhandled command {args.command}")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``cityneuron`` console script."""
    args = _parser().parse_args(argv)
    try:
        settings = build_settings(args)
    except ValidationError as exc:
        print(f"cityneuron: invalid settings: {exc}", file=sys.stderr)
        return 2
    _configure_logging(settings.log_level)
    try:
        return _run(args, settings)
    except CityNeuronError as exc:
        print(f"cityneuron: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
