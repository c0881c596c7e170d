"""``cityneuron broker``: provision credentials and the ACL, create TLS certificates, print the config.

Without folder options every subcommand works on the local stack's home (``--home``, the same
folders ``cityneuron up`` uses); docker compose passes explicit folders (docs/security.md).
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from cityneuron.credentials import device_password, read_device_key
from cityneuron.errors import ConfigError
from cityneuron.passwd import checked_ids
from cityneuron.provision import DEVICE_KEY_FILE, PASSWORD_FILE, GatewayScope, Layout, add_devices, provision
from cityneuron.servers import (
    BROKER_LOG_FILE,
    broker_owner,
    mosquitto_config,
    prepare_broker_data_dir,
    reload_broker,
)
from cityneuron.settings import Settings
from cityneuron.stack import city_device_ids, local_broker_security
from cityneuron.tls import (
    CA_CERT,
    DEFAULT_SERVER_NAMES,
    TlsFiles,
    create_client_cert,
    ensure_dev_pki,
    install_broker_tls,
)


def _owner(value: str) -> tuple[int, int]:
    """``UID:GID`` as given to chown."""
    uid, sep, gid = value.partition(":")
    if not (sep and uid.isdigit() and gid.isdigit()):
        raise argparse.ArgumentTypeError(f"expected UID:GID, got {value!r}")
    return int(uid), int(gid)


def add_parser(commands: Any) -> None:
    """Add ``cityneuron broker`` and its subcommands."""
    broker = commands.add_parser("broker", help="broker security: credentials, ACL, TLS, config")
    sub = broker.add_subparsers(dest="broker_command", required=True)

    prov = sub.add_parser(
        "provision", help="device key, per-device password file, ACL and service user secrets"
    )
    prov.add_argument(
        "--home", dest="stack__home", type=Path, help="stack data folder (default ./.cityneuron)"
    )
    prov.add_argument("--broker-dir", type=Path, help="password file, ACL and broker TLS files go here")
    prov.add_argument("--secrets-dir", type=Path, help="client passwords, device key and CA certificate")
    prov.add_argument("--pki-dir", type=Path, help="development CA and server certificate (with --tls)")
    prov.add_argument("--preset", dest="simulator__preset", choices=["small", "district", "shenzhen"])
    prov.add_argument("--scale", dest="simulator__scale", type=float)
    prov.add_argument("--seed", dest="simulator__seed", type=int)
    prov.add_argument(
        "--devices-file",
        type=Path,
        help="add the device ids in this file (one a line) to the devices already provisioned",
    )
    prov.add_argument(
        "--gateway",
        action="append",
        metavar="NAME[:DISTRICT,...]",
        help="a gateway account, optionally scoped to districts (repeatable; default: gw.city)",
    )
    prov.add_argument("--workers", type=int, default=0, help="hashing processes (default: one per CPU)")
    prov.add_argument("--broker-owner", type=_owner, help="UID:GID the broker runs as (default: detected)")
    prov.add_argument("--secrets-owner", type=_owner, help="UID:GID of the services reading the secrets")
    prov.add_argument(
        "--no-tls", dest="tls", action="store_false", help="skip the CA and the broker's TLS files"
    )
    prov.add_argument("--server-name", action="append", help="host names/IPs of the broker certificate")
    prov.set_defaults(handler=_provision)

    certs = sub.add_parser("certs", help="development CA, server certificate and device certificates")
    certs.add_argument("--home", dest="stack__home", type=Path)
    certs.add_argument("--pki-dir", type=Path, help="where the CA and certificates live")
    certs.add_argument(
        "--server-name",
        action="append",
        help=f"host name or IP of the broker (repeatable; default: {', '.join(DEFAULT_SERVER_NAMES)})",
    )
    certs.add_argument(
        "--client", action="append", metavar="DEVICE_ID", help="also issue a client certificate for a device"
    )
    certs.set_defaults(handler=_certs)

    config = sub.add_parser("config", help="print or write the Mosquitto config of the local stack")
    config.add_argument("--home", dest="stack__home", type=Path)
    config.add_argument("--mqtt-port", dest="mqtt__port", type=int)
    config.add_argument("--tls-port", dest="stack__mqtt_tls_port", type=int)
    config.add_argument("--out", type=Path, help="write here instead of printing")
    config.set_defaults(handler=_config)

    add = sub.add_parser(
        "add-device",
        help="add devices of your own next to the city: password file, then reload the running broker",
    )
    add.add_argument("device_ids", nargs="+", metavar="DEVICE_ID", help="[a-z0-9][a-z0-9-]{0,63}")
    add.add_argument("--home", dest="stack__home", type=Path)
    add.add_argument("--no-reload", dest="reload", action="store_false", help="do not signal the broker")
    add.set_defaults(handler=_add_device)

    password = sub.add_parser("password", help="print a device's MQTT password")
    password.add_argument("device_id", metavar="DEVICE_ID")
    password.add_argument("--home", dest="stack__home", type=Path)
    password.add_argument("--secrets-dir", type=Path, help="folder holding device.key (default: the home's)")
    password.set_defaults(handler=_password)

    reload = sub.add_parser(
        "reload", help="make the running broker re-read its password file and ACL (SIGHUP)"
    )
    reload.add_argument("--home", dest="stack__home", type=Path)
    reload.set_defaults(handler=_reload)


def _device_ids(args: argparse.Namespace, settings: Settings) -> Iterable[str]:
    if args.devices_file is None:
        return city_device_ids(settings)
    try:
        lines = args.devices_file.read_text().split()
    except OSError as exc:
        raise ConfigError(f"cannot read {args.devices_file}: {exc}") from exc
    return lines


def _provision(args: argparse.Namespace, settings: Settings) -> int:
    layout = Layout(settings.stack.home.resolve())
    broker_dir = args.broker_dir or layout.broker_dir
    secrets_dir = args.secrets_dir or layout.secrets_dir
    owner = args.broker_owner or broker_owner()
    gateways = [GatewayScope.parse(g) for g in args.gateway] if args.gateway else None
    started = time.monotonic()
    result = provision(
        broker_dir,
        secrets_dir,
        _device_ids(args, settings),
        **({"gateways": gateways} if gateways else {}),
        broker_owner=owner,
        secrets_owner=args.secrets_owner,
        workers=args.workers or os.cpu_count() or 1,
        # A devices file adds to what is there: the city's devices must keep working.
        mode="replace" if args.devices_file is None else "add",
    )
    elapsed = time.monotonic() - started
    print(
        f"provisioned {result.devices} devices in {elapsed:.1f} s"
        f" ({result.devices / max(elapsed, 1e-6):.0f} password lines/s)\n"
        f"  password file {result.password_file}\n  ACL           {result.acl_file}\n"
        f"  secrets       {secrets_dir} (users: {', '.join(result.users)}; device key {result.device_key_file.name})"
    )
    if args.tls:
        pki = ensure_dev_pki(args.pki_dir or layout.pki_dir, args.server_name or DEFAULT_SERVER_NAMES)
        install_broker_tls(pki, broker_dir, owner=owner)
        shutil.copyfile(pki.ca_cert, secrets_dir / CA_CERT)
        if args.secrets_owner is not None:
            os.chown(secrets_dir / CA_CERT, *args.secrets_owner)
        print(f"  TLS           server certificate and CA in {broker_dir}; CA key stays in {pki.directory}")
    return 0


def _certs(args: argparse.Namespace, settings: Settings) -> int:
    pki_dir = args.pki_dir or Layout(settings.stack.home.resolve()).pki_dir
    files = ensure_dev_pki(pki_dir, args.server_name or DEFAULT_SERVER_NAMES)
    print(f"CA {files.ca_cert}\nserver {files.server_cert} (key {files.server_key})")
    for device_id in args.client or ():
        create_client_cert(files, device_id)
        print(f"client {TlsFiles(pki_dir).client_cert(device_id)} (key {files.client_key(device_id)})")
    return 0


def _config(args: argparse.Namespace, settings: Settings) -> int:
    security = local_broker_security(settings)
    data_dir = Layout(settings.stack.home.resolve()).broker_data_dir
    # Whoever runs this config (root included) gets a broker that can write its log, pid and
    # persistence file, as under `cityneuron up`.
    stay_root = prepare_broker_data_dir(data_dir)
    text = mosquitto_config(
        port=settings.mqtt.port,
        data_dir=data_dir,
        log_file=data_dir / BROKER_LOG_FILE,
        security=security,
        run_as_root=stay_root,
    )
    if args.out is None:
        print(text, end="")
    else:
        args.out.write_text(text)
        print(f"wrote {args.out}")
    return 0


def _add_device(args: argparse.Namespace, settings: Settings) -> int:
    layout = Layout(settings.stack.home.resolve())
    added = add_devices(layout.broker_dir, layout.secrets_dir, args.device_ids, broker_owner=broker_owner())
    print(f"added {added} new device(s) to {layout.broker_dir / PASSWORD_FILE}")
    key = read_device_key(layout.secrets_dir / DEVICE_KEY_FILE)
    for device_id in args.device_ids:
        print(f"  {device_id}  password {device_password(key, device_id)}")
    if args.reload:
        try:
            pid = reload_broker(layout.broker_data_dir)
        except ConfigError as exc:
            print(f"broker not reloaded ({exc}): it reads the new devices when it starts")
        else:
            print(f"broker (pid {pid}) reloaded: the devices may connect now")
    return 0


def _password(args: argparse.Namespace, settings: Settings) -> int:
    secrets_dir = args.secrets_dir or Layout(settings.stack.home.resolve()).secrets_dir
    (device_id,) = checked_ids([args.device_id])
    print(device_password(read_device_key(secrets_dir / DEVICE_KEY_FILE), device_id))
    return 0


def _reload(args: argparse.Namespace, settings: Settings) -> int:
    pid = reload_broker(Layout(settings.stack.home.resolve()).broker_data_dir)
    print(f"sent SIGHUP to mosquitto (pid {pid}): it re-reads its password file and ACL")
    return 0
