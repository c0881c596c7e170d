"""Per-device mode at scale: N device connections from one process, each publishing on its interval.

    python bench/sim_devices.py [--devices 10000] [--minutes 10] [--qos 0|1] [--no-auth]
                                [--connect-rate 1000] [--json]

Starts its own Mosquitto in a temporary folder (password file with one entry per device and the
project's ACL unless --no-auth), raises the open-file limit for itself and the broker, and runs
a ``simulator.fleet.DeviceFleet`` of ``--devices`` smart poles (one report every 60 s each,
catalog interval) with command subscriptions, for ``--minutes``. An observer subscribed to every
pole's telemetry and status checks that each report arrived exactly once and that no device's
will fired. Prints the machine, connections held, messages sent/acknowledged/received, drops
and CPU; exits 1 when anything was dropped.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import secrets
import shutil
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from types import MappingProxyType
from typing import Any

import paho.mqtt.client as paho
from _common import machine, pid_with_argument, process_cpu_s, scratch_dir
from paho.mqtt.enums import CallbackAPIVersion

from cityneuron.contract import decode_reading, decode_status, decode_telemetry, now_ms, parse_topic
from cityneuron.credentials import new_device_key
from cityneuron.provision import acl_text, write_password_file
from cityneuron.servers import BrokerSecurity, MosquittoBroker, broker_owner, free_port
from cityneuron.settings import MqttSettings
from simulator.city import City, build_city
from simulator.commands import CommandBook
from simulator.drivers import Drivers
from simulator.fleet import FD_HEADROOM, DeviceFleet, ensure_fd_limit
from simulator.kinds import MODELS
from simulator.messages import status_messages, telemetry_messages
from simulator.schedule import KindSchedule

log = logging.getLogger("bench.sim_devices")

_KIND = "smart_pole"
_SMALL_POLES = 600  # smart poles in the "small" preset (simulator/city.py)
_OBSERVER = "bench.observer"
_TICK_S = 0.1
_DRAIN_S = 60.0


def _pole_city(devices: int, seed: int) -> City:
    """``devices`` smart poles placed like the presets place them (ids pole-<district>-NNNNN)."""
    full = build_city("small", devices / _SMALL_POLES, seed)
    return City("bench", full.scale, seed, MappingProxyType({_KIND: full.tables[_KIND]}))


def _secure_broker(root: Path, city: City, key: bytes, observer_password: str) -> BrokerSecurity:
    """Password file (one PBKDF2 hash per device, as `cityneuron broker provision`) and the ACL."""
    auth = root / "auth"
    auth.mkdir(mode=0o700)
    owner = broker_owner()
    ids = city.tables[_KIND].device_ids()
    write_password_file(auth / "passwd", key, ids, {_OBSERVER: observer_password}, owner=owner)
    acl = auth / "acl"
    acl.write_text(acl_text([]) + f"\n# The benchmark's observer.\nuser {_OBSERVER}\ntopic read city/#\n")
    if owner is not None:
        for path in (auth, acl):
            shutil.chown(path, *owner)
    return BrokerSecurity(password_file=auth / "passwd", acl_file=acl)


class _Observer:
    """Counts every telemetry report per (device, seq) and every offline status (a will)."""

    def __init__(self, settings: MqttSettings, password: str | None) -> None:
        self.reports: Counter[tuple[str, int]] = Counter()
        self.wills: Counter[str] = Counter()
        self.messages = 0
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=f"bench-observer-{secrets.token_hex(4)}"
        )
        self._client.max_inflight_messages_set(1000)
        if password is not None:
            self._client.username_pw_set(_OBSERVER, password)
        self._client.on_connect = lambda c, u, f, rc, p: c.subscribe(
            [(f"city/+/{_KIND}/+/telemetry", 1), (f"city/+/{_KIND}/+/status", 1)]
        )
        self._client.on_subscribe = lambda *a: self._ready.set()
        self._client.on_message = self._on_message
        self._client.connect(settings.host, settings.port)
        self._client.loop_start()
        if not self._ready.wait(10):
            raise SystemExit("observer could not subscribe")

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        topic = parse_topic(message.topic)
        with self._lock:
            self.messages += 1
            if topic.channel == "telemetry":
                for item in decode_telemetry(message.payload):
                    reading = decode_reading(item)
                    self.reports[(topic.device_id, reading.seq or 0)] += 1
            # A will is the bare {"online": false}; the goodbye at a clean close carries a ts.
            elif not decode_status(message.payload).online and b'"ts"' not in message.payload:
                self.wills[topic.device_id] += 1

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


def _run(args: argparse.Namespace) -> dict[str, Any]:
    # Mosquitto inherits the limit, and it holds one socket per device too.
    fd_limit = ensure_fd_limit(args.devices + FD_HEADROOM)
    city = _pole_city(args.devices, args.seed)
    devices = city.devices
    root = scratch_dir("cityneuron-bench-devices-")
    key = new_device_key()
    observer_password = secrets.token_urlsafe(16) if args.auth else None
    security = _secure_broker(root, city, key, observer_password or "") if args.auth else None
    result: dict[str, Any] = {
        "machine": {
            k: v for k, v in machine("n/a", None).items() if k not in ("postgresql", "timescaledb", "psycopg")
        },
        "nofile_limit": fd_limit,
        "devices": devices,
        "minutes": args.minutes,
        "qos": args.qos,
        "auth": args.auth,
        "connect_rate_per_s": args.connect_rate,
    }
    broker = MosquittoBroker(root / "mosquitto", free_port(), security=security, anonymous=not args.auth)
    try:
        with broker:
            broker_pid = pid_with_argument(str(root / "mosquitto" / "mosquitto.conf"))
            settings = MqttSettings(port=broker.port, keepalive_s=60, connect_timeout_s=30)
            observer = _Observer(settings, observer_password)
            model = MODELS[_KIND](city.tables[_KIND], Drivers(city.seed), city.seed)
            schedule = KindSchedule(city.tables[_KIND])
            commands = CommandBook(city, now_ms)
            fleet = DeviceFleet(
                settings,
                city,
                device_key=key if args.auth else None,
                commands=commands,
                connect_rate_per_s=args.connect_rate,
                drain_timeout_s=_DRAIN_S,
            )
            cpu0 = _self_cpu_s()
            t0 = time.monotonic()
            telemetry_sent = 0
            held: list[int] = []
            with fleet:
                ramp_s = time.monotonic() - t0
                cpu_ramp = _self_cpu_s() - cpu0
                log.info("%d devices connected in %.1f s", fleet.connected, ramp_s)
                start_ms = now_ms()
                for message in status_messages(city.tables[_KIND], start_ms):
                    fleet.gateway_for(message.row).publish(message.topic, message.payload, 1, retain=True)
                steady_cpu0, steady_broker0, steady_t0 = (
                    _self_cpu_s(),
                    process_cpu_s(broker_pid),
                    time.monotonic(),
                )
                done = start_ms - schedule.interval_ms  # the first minute: every pole reports once
                end = time.monotonic() + args.minutes * 60.0
                next_sample = time.monotonic()
                while time.monotonic() < end:
                    target = now_ms()
                    due = schedule.due(done, target)
                    for message in telemetry_messages(model, schedule, due):
                        fleet.gateway_for(message.row).publish(message.topic, message.payload, args.qos)
                        telemetry_sent += 1
                    done = target
                    if time.monotonic() >= next_sample:
                        next_sample += 1.0
                        held.append(fleet.connected)
                        if len(held) % 60 == 0:
                            log.info(
                                "%d s: %d connected, %d telemetry sent, %d acked, %d received",
                                len(held),
                                fleet.connected,
                                telemetry_sent,
                                fleet.acked,
                                observer.messages,
                            )
                    time.sleep(_TICK_S)
                steady_s = time.monotonic() - steady_t0
                cpu_steady = _self_cpu_s() - steady_cpu0
                broker_steady = process_cpu_s(broker_pid) - steady_broker0
            # Everything acknowledged has reached the broker; give the observer a moment to read it.
            deadline = time.monotonic() + 30.0
            while len(observer.reports) < telemetry_sent and time.monotonic() < deadline:
                time.sleep(0.2)
            time.sleep(1.0)
            observer.close()
            received = len(observer.reports)
            duplicates = sum(n - 1 for n in observer.reports.values() if n > 1)
            result.update(
                {
                    "ramp_s": round(ramp_s, 1),
                    "connections_held_min": min(held) if held else 0,
                    "connections_held_max": max(held) if held else 0,
                    "disconnects": fleet.disconnects,
                    "connects": fleet.connects,
                    "refused": fleet.refused,
                    "messages_sent": fleet.sent,
                    "messages_acked": fleet.acked,
                    "messages_failed": fleet.failed,
                    "messages_unacked": fleet.unacked,
                    "telemetry_sent": telemetry_sent,
                    "telemetry_received": received,
                    "telemetry_missing": max(0, telemetry_sent - received),
                    "telemetry_duplicates": duplicates,
                    "wills_fired": sum(observer.wills.values()),
                    "steady_msgs_per_s": round(telemetry_sent / steady_s, 1) if steady_s else 0.0,
                    "cpu_s_ramp": round(cpu_ramp, 2),
                    "cpu_share_steady": round(cpu_steady / steady_s, 3) if steady_s else 0.0,
                    "broker_cpu_share_steady": round(broker_steady / steady_s, 3) if steady_s else 0.0,
                    "max_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                }
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    result["message_drops"] = (
        result.get("telemetry_missing", 0)
        + result.get("messages_failed", 0)
        + result.get("messages_unacked", 0)
    )
    result["connection_drops"] = result.get("disconnects", 0) + result.get("wills_fired", 0)
    return result


def _self_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--qos", type=int, choices=[0, 1], default=1)
    parser.add_argument("--no-auth", dest="auth", action="store_false", help="anonymous broker")
    parser.add_argument("--connect-rate", type=float, default=1000.0, help="new connections per second")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--json", action="store_true", help="print the result as JSON only")
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.WARNING if args.json else logging.INFO, format="%(asctime)s %(message)s"
    )
    result = _run(args)
    if args.json:
        print(json.dumps(result))
    else:
        for name, value in result.items():
            if isinstance(value, dict):
                print(f"{name}:")
                for k, v in value.items():
                    print(f"  {k}: {v}")
            else:
                print(f"{name}: {value}")
    return 1 if result["message_drops"] or result["connection_drops"] else 0


if __name__ == "__main__":
    sys.exit(main())
