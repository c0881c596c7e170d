"""``cityneuron load``: options, the live progress line, and the exit status."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any
from urllib.parse import unquote, urlsplit

from cityneuron.errors import ConfigError
from cityneuron.settings import MqttSettings, Settings
from simulator.city import build_city
from simulator.load.payloads import LoadDevices, Style
from simulator.load.publish import Injections, Progress, publish_load
from simulator.load.reconcile import duplicates_snapshot, reconcile
from simulator.load.report import LoadReport
from simulator.load.shapes import LoadProfile, Shape

EXIT_FAILED = 3


def add_parser(commands: Any) -> None:
    load = commands.add_parser(
        "load",
        help="publish synthetic readings at a target rate and reconcile with the database",
        description="Open-loop load test: latency counts from each message's intended send time.",
    )
    load.add_argument("--rate", type=float, default=1000.0, help="target messages per second")
    load.add_argument("--duration", type=float, default=30.0, help="seconds of load")
    load.add_argument(
        "--shape", choices=[s.value for s in Shape if s is not Shape.RECONNECT_STORM], default="steady"
    )
    load.add_argument("--ramp", type=float, default=0.0, help="seconds of linear ramp-up")
    load.add_argument("--spike-factor", type=float, default=10.0)
    load.add_argument("--spike-seconds", type=float, default=10.0)
    load.add_argument("--qos", type=int, choices=[0, 1], default=1)
    load.add_argument("--style", choices=[s.value for s in Style], default="single")
    load.add_argument("--readings-per-message", type=int, default=1, help="array style: readings per message")
    load.add_argument("--connections", type=int, default=2, help="gateway connections")
    load.add_argument("--devices", type=int, help="use only this many of the city's devices")
    load.add_argument("--preset", dest="simulator__preset", choices=["small", "district"])
    load.add_argument("--seed", dest="simulator__seed", type=int)
    load.add_argument("--mqtt-url", help="mqtt://user:pass@host:port or mqtts://... (TLS)")
    load.add_argument("--tls-ca", type=str, help="CA file to verify the broker (mqtts)")
    load.add_argument("--database-url", dest="database__url", help="postgresql:// URL to reconcile against")
    load.add_argument("--no-reconcile", action="store_true", help="stop at the broker (no database check)")
    load.add_argument("--settle-timeout", type=float, default=60.0, help="seconds to wait for the ingest")
    load.add_argument(
        "--min-rate-fraction", type=float, default=0.95, help="fail below this fraction of the target rate"
    )
    load.add_argument("--inject-drop-every", type=int, default=0, help="self-test: skip every n-th message")
    load.add_argument("--inject-duplicate-every", type=int, default=0, help="self-test: resend every n-th")
    load.add_argument("--inject-malformed-every", type=int, default=0, help="self-test: corrupt every n-th")
    load.add_argument("--json", action="store_true", help="print the report as JSON")
    load.set_defaults(handler=run_command)


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
    if args.rate <= 0 or args.duration <= 0 or args.connections < 1:
        raise ConfigError("--rate, --duration and --connections must be positive")
    mqtt = mqtt_from_url(args.mqtt_url, settings.mqtt, args.tls_ca) if args.mqtt_url else settings.mqtt
    style = Style(args.style)
    width = args.readings_per_message if style is Style.ARRAY else 1
    try:
        profile = LoadProfile(
            Shape(args.shape), args.rate, args.duration, args.ramp, args.spike_factor, args.spike_seconds
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    options = settings.simulator
    devices = LoadDevices(build_city(options.preset, options.scale, options.seed), args.devices)
    reconcile_db = not args.no_reconcile
    duplicates_before = duplicates_snapshot(settings.database.url, devices) if reconcile_db else 0
    published = publish_load(
        mqtt,
        devices,
        profile,
        qos=args.qos,
        style=style,
        readings_per_message=width,
        connections=args.connections,
        injections=Injections(
            args.inject_drop_every, args.inject_duplicate_every, args.inject_malformed_every
        ),
        on_progress=None if args.json else _progress_printer(args.rate),
    )
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
    report = LoadReport(profile, args.qos, published, reconciliation, args.min_rate_fraction)
    print(json.dumps(report.as_dict(), indent=2) if args.json else report.table())
    return 0 if report.passed else EXIT_FAILED
