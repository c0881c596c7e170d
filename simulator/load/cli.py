"""``cityneuron load``: options, the live progress line, and the exit status."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import psycopg

from cityneuron.catalog import DISTRICTS
from cityneuron.credentials import read_device_key
from cityneuron.errors import ConfigError
from cityneuron.settings import MqttSettings, Settings
from simulator.city import City
from simulator.errors import PublishError
from simulator.load import ingest_metrics, namespace
from simulator.load.namespace import LOAD_ID_PREFIX, load_city
from simulator.load.parallel import LoadJob, publish_in_processes
from simulator.load.payloads import LoadDevices, Style
from simulator.load.publish import Injections, Progress, PublishResult, StormSetup, publish_load
from simulator.load.reconcile import ReconcileError, duplicates_snapshot, reconcile
from simulator.load.report import LoadReport
from simulator.load.shapes import LoadProfile, Shape
from simulator.load.storm import StormPlan, busiest_district, delayed_latency

# Exit statuses (docs/load.md): 0 passed; 1 another error (a message says which); 2 invalid
# options; 3 the run failed a gate (rate, loss, errors, storm); 4 the broker or the database
# could not be reached (nothing was measured).
EXIT_FAILED = 3
EXIT_UNREACHABLE = 4


def add_parser(commands: Any) -> None:
    load = commands.add_parser(
        "load",
        help="publish synthetic readings at a target rate and reconcile with the database",
        description="Open-loop load test: latency counts from each message's intended send time.",
    )
    load.add_argument("--rate", type=float, default=1000.0, help="target messages per second")
    load.add_argument("--duration", type=float, default=30.0, help="seconds of load")
    load.add_argument("--shape", choices=[s.value for s in Shape], default="steady")
    load.add_argument("--ramp", type=float, default=0.0, help="seconds of linear ramp-up")
    load.add_argument("--spike-factor", type=float, default=10.0)
    load.add_argument("--spike-seconds", type=float, default=10.0)
    load.add_argument("--qos", type=int, choices=[0, 1], default=1)
    load.add_argument("--style", choices=[s.value for s in Style], default="single")
    load.add_argument(
        "--readings-per-message",
        type=int,
        default=1,
        help="array style: readings per message; batch style: devices per gateway batch",
    )
    load.add_argument("--connections", type=int, default=2, help="gateway connections")
    load.add_argument(
        "--storm-district", help="reconnect-storm: the district to drop (default: most load devices)"
    )
    load.add_argument(
        "--storm-at", type=float, help="reconnect-storm: seconds into the run (default: middle)"
    )
    load.add_argument(
        "--storm-offline",
        type=float,
        default=0.0,
        help="reconnect-storm: seconds the links stay down at least",
    )
    load.add_argument(
        "--device-key",
        type=Path,
        help="device key file: per-device passwords (default: simulator.device_key_file)",
    )
    load.add_argument(
        "--processes", type=int, default=1, help="publishing processes (about 10 k msg/s each at most)"
    )
    load.add_argument(
        "--ingest-metrics",
        action="append",
        default=[],
        metavar="URL",
        help="ingest /metrics URL (repeat per ingest process): add the ingest's own lag histogram",
    )
    load.add_argument("--devices", type=int, help="use only this many of the city's devices")
    load.add_argument(
        "--id-prefix",
        default=LOAD_ID_PREFIX,
        help="the load's own device ids: this prefix + a city device's id ('' reuses the city's ids:"
        " only against a platform without the simulator running)",
    )
    load.add_argument(
        "--keep-devices",
        action="store_true",
        help="keep the load's devices and their rows after the run (default: removed once reconciled)",
    )
    load.add_argument("--preset", dest="simulator__preset", choices=["small", "district"])
    load.add_argument("--seed", dest="simulator__seed", type=int)
    load.add_argument("--mqtt-url", help="mqtt://user:pass@host:port or mqtts://... (TLS)")
    load.add_argument("--tls-ca", type=str, help="CA file to verify the broker (mqtts)")
    load.add_argument("--database-url", dest="database__url", help="postgresql:// URL to reconcile against")
    load.add_argument("--no-reconcile", action="store_true", help="stop at the broker (no database check)")
    load.add_argument(
        "--settle-timeout",
        type=float,
        default=60.0,
        help="after publishing, wait up to this many seconds for the ingest to store everything",
    )
    load.add_argument(
        "--min-rate-fraction", type=float, default=0.95, help="fail below this fraction of the target rate"
    )
    load.add_argument("--inject-drop-every", type=int, default=0, help="self-test: skip every n-th message")
    load.add_argument("--inject-duplicate-every", type=int, default=0, help="self-test: resend every n-th")
    load.add_argument("--inject-malformed-every", type=int, default=0, help="self-test: corrupt every n-th")
    load.add_argument("--json", action="store_true", help="print the report as JSON")
    load.add_argument(
        "--home", dest="stack__home", type=Path, help="local stack's folder (default ./.cityneuron)"
    )
    # Without --mqtt-url / --database-url it uses the local stack's (cityneuron/localstack.py).
    load.set_defaults(handler=run_command, local_stack=True)


def mqtt_from_url(url: str, base: MqttSettings, tls_ca: str | None) -> MqttSettings:
    """Broker settings from ``mqtt[s]://user:password@host:port``."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise ConfigError(
            f"--mqtt-url must look like mqtt://user:pass@host:1883, got scheme {parts.scheme!r}"
        )
    tls = parts.scheme == "mqtts"
    if tls and not tls_ca and base.tls_ca_file is None:
        raise ConfigError("mqtts:// needs --tls-ca (the CA that signed the broker's certificate)")
    update: dict[str, Any] = {"host": parts.hostname, "port": parts.port or (8883 if tls else 1883)}
    if parts.username is not None:
        update["username"] = unquote(parts.username)
        update["password"] = unquote(parts.password or "")
    if tls_ca:
        update["tls_ca_file"] = tls_ca
    return MqttSettings.model_validate({**base.model_dump(), **update})


def _progress_printer(target_rate: float) -> Any:
    tty = sys.stderr.isatty()

    def show(p: Progress) -> None:
        line = (
            f"t={p.elapsed_s:6.1f}s  target {target_rate:,.0f}/s  achieved {p.achieved_rate:,.0f}/s"
            f"  sent {p.sent:,}  in-flight {p.in_flight:,}  errors {p.errors}  lag {p.lag_ms:,.0f} ms"
        )
        if tty:
            print("\r" + line, end="", file=sys.stderr, flush=True)
        else:
            print(line, file=sys.stderr, flush=True)

    return show


def run_command(args: argparse.Namespace, settings: Settings) -> int:
    """Run the load, reconcile, print the report; exit 0 only when nothing was lost and the rate held."""
    try:
        return _run(args, settings)
    except (PublishError, ReconcileError, namespace.NamespaceError) as exc:
        if not isinstance(exc, PublishError) and not isinstance(exc.__cause__, psycopg.OperationalError):
            raise  # a database that answers but refuses (no schema, ...): status 1 with its message
        # One line, whatever the driver's message looked like (psycopg's span several).
        print(f"cityneuron load: cannot connect: {' '.join(str(exc).split())}", file=sys.stderr)
        return EXIT_UNREACHABLE


def _run(args: argparse.Namespace, settings: Settings) -> int:
    if args.rate <= 0 or args.duration <= 0 or args.connections < 1 or args.processes < 1:
        raise ConfigError("--rate, --duration, --connections and --processes must be positive")
    mqtt = mqtt_from_url(args.mqtt_url, settings.mqtt, args.tls_ca) if args.mqtt_url else settings.mqtt
    style = Style(args.style)
    if style is Style.BATCH and args.shape == Shape.RECONNECT_STORM:
        # The storm drops devices' own links; a gateway batch is published by a gateway.
        raise ConfigError("--style batch cannot be combined with --shape reconnect-storm")
    width = args.readings_per_message if style in (Style.ARRAY, Style.BATCH) else 1
    try:
        profile = LoadProfile(
            Shape(args.shape), args.rate, args.duration, args.ramp, args.spike_factor, args.spike_seconds
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    options = settings.simulator
    city = load_city(options.preset, options.scale, options.seed, args.id_prefix)
    devices = LoadDevices(city, args.devices)
    storm = _storm_plan(args, settings, devices, profile) if profile.shape is Shape.RECONNECT_STORM else None
    reconcile_db = not args.no_reconcile
    # The city's own ids ('' prefix) are the city's: never registered or removed by the load.
    own_devices = reconcile_db and bool(args.id_prefix)
    if own_devices:
        namespace.register(settings.database.url, devices)
    duplicates_before = duplicates_snapshot(settings.database.url, devices) if reconcile_db else 0
    lag_before = ingest_metrics.scrape(args.ingest_metrics) if args.ingest_metrics else {}
    job = LoadJob(
        mqtt,
        options.preset,
        options.scale,
        options.seed,
        args.devices,
        profile,
        args.qos,
        style,
        width,
        args.connections,
        Injections(args.inject_drop_every, args.inject_duplicate_every, args.inject_malformed_every),
        storm,
        args.processes,
        args.id_prefix,
    )
    published = _publish(job, city, devices, None if args.json else _progress_printer(args.rate))
    if not args.json and sys.stderr.isatty():
        print(file=sys.stderr)
    reconciliation = None
    if reconcile_db:
        reconciliation = reconcile(
            settings.database.url,
            devices,
            published.expected_keys[0],
            started_ms=published.started_ms,
            duplicates_before=duplicates_before,
            settle_timeout_s=args.settle_timeout,
        )
        if published.storm is not None:
            published.storm.delayed_latency_ms = delayed_latency(
                settings.database.url, devices, published.storm.delayed_keys
            )
    ingest_lag = None
    if args.ingest_metrics:
        ingest_lag = ingest_metrics.run_delta(lag_before, ingest_metrics.scrape(args.ingest_metrics))
    report = LoadReport(profile, args.qos, published, reconciliation, args.min_rate_fraction, ingest_lag)
    print(json.dumps(report.as_dict(), indent=2) if args.json else report.table(), flush=True)
    if own_devices and not args.keep_devices:
        namespace.remove(settings.database.url, devices)
    return 0 if report.passed else EXIT_FAILED


def _storm_plan(
    args: argparse.Namespace, settings: Settings, devices: LoadDevices, profile: LoadProfile
) -> StormPlan:
    """The reconnect storm asked for: district, instant, and the devices' key (if any)."""
    district = args.storm_district or busiest_district(devices)
    if district not in {d.slug for d in DISTRICTS}:
        raise ConfigError(f"--storm-district: unknown district {district!r}")
    at_s = profile.duration_s / 2 if args.storm_at is None else args.storm_at
    if not 0 <= at_s < profile.duration_s or args.storm_offline < 0:
        raise ConfigError("--storm-at must fall within the run and --storm-offline must be >= 0")
    key_file = args.device_key or settings.simulator.device_key_file
    key = read_device_key(key_file) if key_file is not None else None
    return StormPlan(district, at_s, args.storm_offline, key)


def _publish(job: LoadJob, city: City, devices: LoadDevices, on_progress: Any) -> PublishResult:
    """One publishing process here, or several (simulator/load/parallel.py)."""
    if job.processes > 1:
        return publish_in_processes(job, devices, on_progress)
    return publish_load(
        job.mqtt,
        devices,
        job.profile,
        qos=job.qos,
        style=job.style,
        readings_per_message=job.readings_per_message,
        connections=job.connections,
        injections=job.injections,
        on_progress=on_progress,
        storm=None if job.storm is None else StormSetup(job.storm, city),
    )
