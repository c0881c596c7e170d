"""``cityneuron up``: the whole testbed on this machine, without Docker.

Starts PostgreSQL and Mosquitto from the machine's binaries with their data under one folder,
initialises the schema, then runs ingest, API and simulator as child processes, prints the URLs
and stops everything cleanly on Ctrl-C (or when one of the services dies).

The broker is secure by default: every device of the simulated city and every service gets its
own credentials (cityneuron.provision), a development CA signs the broker's TLS certificate
(cityneuron.tls), and each child receives only its own password.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

from cityneuron import localstack, pgmemory
from cityneuron.errors import ConfigError
from cityneuron.homedir import prepare_home
from cityneuron.provision import (
    API_USER,
    CITY_GATEWAY,
    DASHBOARD_USER,
    DEVICE_KEY_FILE,
    INGEST_USER,
    SERVICE_USERS,
    Layout,
    Provisioned,
    provision,
)
from cityneuron.schema import init_schema
from cityneuron.servers import (
    BrokerSecurity,
    MosquittoBroker,
    PostgresServer,
    broker_owner,
    check_port_free,
    find_mosquitto,
)
from cityneuron.settings import Settings
from cityneuron.tls import CA_CERT, ensure_dev_pki, install_broker_tls

log = logging.getLogger("cityneuron.stack")

_READY_TIMEOUT_S = 60.0
# The simulator's start and the ingest registering every device (seconds for the small city).
_CITY_TIMEOUT_S = 180.0
# Until StackSettings has ports of their own, the client-certificate and WebSocket listeners sit
# next to the TLS one (8883 -> 8884 and 8885).
CERT_PORT_OFFSET = 1
WEBSOCKETS_PORT_OFFSET = 2
_STAMP_FILE = "provisioned.json"
_REGISTRY_POLL_S = 1.0


def local_broker_security(settings: Settings) -> BrokerSecurity:
    """The listeners and auth files of the local stack's broker (see Layout)."""
    layout = Layout(settings.stack.home.resolve())
    tls_port = settings.stack.mqtt_tls_port
    return BrokerSecurity(
        password_file=layout.broker_dir / "passwd",
        acl_file=layout.broker_dir / "acl",
        tls_dir=layout.broker_dir,
        tls_port=tls_port,
        cert_port=tls_port + CERT_PORT_OFFSET,
        websockets_port=tls_port + WEBSOCKETS_PORT_OFFSET,
    )


def city_device_ids(settings: Settings) -> Iterator[str]:
    """Every device id of the simulated city of ``settings.simulator`` (preset, scale, seed)."""
    from simulator.city import build_city

    options = settings.simulator
    for table in build_city(options.preset, options.scale, options.seed):
        yield from table.device_ids()


def _fingerprint(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns]


def city_size(settings: Settings) -> int:
    """Devices of the simulated city (whole city, whatever the shard), without building it."""
    from simulator.city import kind_counts

    options = settings.simulator
    return sum(kind_counts(options.preset, options.scale).values())


def check_per_device_mode(settings: Settings) -> None:
    """Per-device mode hashes a password and holds a connection per device: refuse a city that
    cannot start in time (docs/scale.md, "Per-device mode")."""
    devices = city_size(settings)
    limit = settings.stack.per_device_max_devices
    if settings.simulator.mode == "device" and devices > limit:
        raise ConfigError(
            f"per-device mode is for cities of up to {limit:,} devices"
            f" ({devices:,} asked): use gateway mode (the default) for this city"
        )


def provision_local_broker(settings: Settings, *, workers: int | None = None) -> Provisioned:
    """Credentials for the city's devices and the services, the ACL and the TLS files.

    In gateway mode (the default) devices never connect themselves, so a city larger than
    ``stack.per_device_max_devices`` gives only the services and the city gateway a broker
    identity: nothing to hash per device. Otherwise hashing a password per device is the slow
    part, so the password file is rewritten only
    when the city (preset, scale, seed) changed since the last run. When the file changed since
    it was written (a device added, or replaced by hand), the city devices missing from it are
    put back and every other device in it is kept.
    """
    layout = Layout(settings.stack.home.resolve())
    owner = broker_owner()
    options = settings.simulator
    # Devices get their own broker identity in per-device mode, and in gateway mode too while the
    # city hashes in seconds (so a user can publish as any city device: README, docs/security.md);
    # a city above stack.per_device_max_devices (the 1:1 city) starts without hashing anything.
    per_device = options.mode == "device" or city_size(settings) <= settings.stack.per_device_max_devices
    city = {
        "preset": options.preset,
        "scale": options.scale,
        "seed": options.seed,
        "mode": options.mode,
        "device_identities": per_device,
    }
    stamp = layout.broker_dir / _STAMP_FILE
    passwd = layout.broker_dir / "passwd"
    users = (*SERVICE_USERS, CITY_GATEWAY)
    last = json.loads(stamp.read_text()) if stamp.exists() else {}
    same_city = (
        last.get("city") == city
        and passwd.exists()
        and (layout.secrets_dir / DEVICE_KEY_FILE).exists()
        and all((layout.secrets_dir / f"{u}.password").exists() for u in users)
    )
    if same_city and last.get("passwd") == _fingerprint(passwd):
        provisioned = Provisioned(layout.broker_dir, layout.secrets_dir, last["devices"], users)
    else:
        if same_city:
            log.info("%s changed since it was provisioned: putting back missing city devices", passwd)
        provisioned = provision(
            layout.broker_dir,
            layout.secrets_dir,
            city_device_ids(settings) if per_device else (),
            broker_owner=owner,
            workers=workers or os.cpu_count() or 1,
            mode="complete" if same_city else "replace",
        )
        stamp.write_text(
            json.dumps({"city": city, "devices": provisioned.devices, "passwd": _fingerprint(passwd)}) + "\n"
        )
    pki = ensure_dev_pki(layout.pki_dir)
    install_broker_tls(pki, layout.broker_dir, owner=owner)
    shutil.copyfile(pki.ca_cert, layout.secrets_dir / CA_CERT)
    return provisioned


def _child_env(settings: Settings) -> dict[str, str]:
    """Environment handing the stack's settings to a child service (nested delimiter ``__``)."""
    env = dict(os.environ)
    env.update(
        {
            "CITYNEURON_LOG_LEVEL": settings.log_level,
            "CITYNEURON_MQTT__HOST": settings.mqtt.host,
            "CITYNEURON_MQTT__PORT": str(settings.mqtt.port),
            "CITYNEURON_DATABASE__URL": settings.database.url,
            "CITYNEURON_INGEST__HTTP_HOST": settings.ingest.http_host,
            "CITYNEURON_INGEST__HTTP_PORT": str(settings.ingest.http_port),
            "CITYNEURON_API__HOST": settings.api.host,
            "CITYNEURON_API__PORT": str(settings.api.port),
            "CITYNEURON_API__WORKERS": str(settings.api.workers),
            "CITYNEURON_SIMULATOR__PRESET": settings.simulator.preset,
            "CITYNEURON_SIMULATOR__SCALE": str(settings.simulator.scale),
            "CITYNEURON_SIMULATOR__SPEED": str(settings.simulator.speed),
            "CITYNEURON_SIMULATOR__SEED": str(settings.simulator.seed),
            "CITYNEURON_SIMULATOR__MODE": settings.simulator.mode,
            "PYTHONUNBUFFERED": "1",
        }
    )
    # `up --start` must reach the simulator (it used to be dropped here).
    if settings.simulator.start is not None:
        env["CITYNEURON_SIMULATOR__START"] = settings.simulator.start.isoformat()
    # Every child that runs `db init` (ingest, the simulator's registry load) applies the same
    # partitions and retention; ingest refuses readings older than the retention.
    env["CITYNEURON_DATABASE__CHUNK_INTERVAL"] = settings.database.chunk_interval
    if settings.database.retention:
        env["CITYNEURON_DATABASE__RETENTION"] = settings.database.retention
    return env


def _wait_http_ok(
    url: str, process: subprocess.Popen[bytes], what: str, timeout_s: float = _READY_TIMEOUT_S
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ConfigError(
                f"{what} exited with status {process.returncode} during start-up (see its log above)"
            )
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise ConfigError(f"{what} not ready at {url} after {timeout_s:.0f} s")


def _credentials_env(provisioned: Provisioned | None, user: str) -> dict[str, str]:
    """Username and password of ``user`` for one child (nothing when the broker is anonymous)."""
    if provisioned is None:
        return {}
    return {"CITYNEURON_MQTT__USERNAME": user, "CITYNEURON_MQTT__PASSWORD": provisioned.password(user)}


class _Children:
    """The service processes, stopped in reverse start order."""

    def __init__(self, env: dict[str, str]) -> None:
        # Credentials are per child: none inherited from whoever ran `cityneuron up`.
        self._env = {
            k: v
            for k, v in env.items()
            if k not in ("CITYNEURON_MQTT__USERNAME", "CITYNEURON_MQTT__PASSWORD")
        }
        self.processes: list[tuple[str, subprocess.Popen[bytes]]] = []

    def spawn(self, name: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(
            [sys.executable, "-m", "cityneuron", *args], env={**self._env, **(env or {})}
        )
        self.processes.append((name, process))
        return process

    def first_dead(self) -> tuple[str, int] | None:
        """The first service that exited; a simulator that finished cleanly (its run ended, or a
        benchmark stopped it to reconcile) leaves the rest of the stack serving."""
        for name, process in list(self.processes):
            if process.poll() is None:
                continue
            if name == "simulator" and process.returncode == 0:
                log.info("the simulator finished: the stack stays up")
                self.processes.remove((name, process))
                continue
            return name, process.returncode
        return None

    def stop(self) -> None:
        for _, process in reversed(self.processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for name, process in reversed(self.processes):
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in 15 s: killing it", name)
                process.kill()
                process.wait()


class _StopRequest:
    """Ctrl-C (SIGINT), SIGTERM and a closed terminal (SIGHUP) stop the stack.

    The broker and PostgreSQL run in their own process groups (cityneuron.servers), so a
    terminal's Ctrl-C reaches only the stack and its services, and the stack stops the servers
    after the clients. The first signal during start-up abandons it (KeyboardInterrupt: the
    ExitStack stops what already runs); once up, it asks the main loop to stop. Later signals
    only note the request, so an impatient second Ctrl-C cannot cut the stopping short and
    leave the servers running.
    """

    def __init__(self) -> None:
        self.requested = False
        self.up = False
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, _frame: object) -> None:
        first = not self.requested
        self.requested = True
        if first and not self.up:
            raise KeyboardInterrupt


def _start_broker(settings: Settings, stack: ExitStack) -> tuple[MosquittoBroker, Provisioned | None]:
    home = settings.stack.home.resolve()
    data_dir = Layout(home).broker_data_dir
    binary = settings.stack.mosquitto_bin
    if not settings.stack.secure_broker:
        log.warning("secure_broker is off: the broker accepts anonymous clients on 127.0.0.1")
        broker = MosquittoBroker(data_dir, settings.mqtt.port, binary=binary, anonymous=True)
        return stack.enter_context(broker), None
    security = local_broker_security(settings)
    for port in (settings.mqtt.port, *security.ports):
        check_port_free(port, "mosquitto")
    provisioned = provision_local_broker(settings)
    broker = MosquittoBroker(data_dir, settings.mqtt.port, binary=binary, security=security)
    return stack.enter_context(broker), provisioned


def _broker_banner(settings: Settings, broker: MosquittoBroker, provisioned: Provisioned | None) -> str:
    plain = f"  MQTT       mqtt://127.0.0.1:{settings.mqtt.port}  (topics city/#"
    # docs/security.md: SIGHUP makes the broker re-read its password file and ACL.
    pid = f"             broker pid {broker.pid}  (reload: cityneuron broker reload)\n"
    if provisioned is None or broker.security is None:
        return plain + ", anonymous)\n" + pid
    security = broker.security
    secrets_dir = provisioned.secrets_dir
    return (
        f"{plain}; {provisioned.devices} devices provisioned, every client its own password)\n"
        f"             mqtts://<host>:{security.tls_port}  (CA {secrets_dir / CA_CERT})"
        f"  client certificates: port {security.cert_port}\n"
        f"             ws://127.0.0.1:{security.websockets_port}  (dashboards: user {DASHBOARD_USER},"
        f" password in {provisioned.secret_file(DASHBOARD_USER)})\n"
        f"{pid}"
    )


def _registered_devices(database_url: str) -> int:
    import psycopg

    with psycopg.connect(database_url, connect_timeout=5) as conn:
        # Kept by the database as devices are added (cityneuron.device_counts): no 17 M-row count.
        row = conn.execute("SELECT coalesce(sum(n), 0) FROM device_state_counts").fetchone()
    return int(row[0]) if row else 0


def _start_simulator(
    settings: Settings, children: _Children, provisioned: Provisioned | None
) -> subprocess.Popen[bytes]:
    """Start the simulator; in gateway mode, first have it COPY the registry into the database.

    A city publishes no retained statuses in gateway mode (17 M of them would take the broker
    hours): the simulator loads the registry by COPY, devices as already running (last heard
    at their latest report slot), then publishes telemetry. Returns once the registry is in.
    """
    # Gateway mode uses the gateway account; device mode derives each device's password.
    sim_env = _credentials_env(provisioned, CITY_GATEWAY)
    if provisioned is not None:
        sim_env["CITYNEURON_SIMULATOR__DEVICE_KEY_FILE"] = str(provisioned.device_key_file)
    if settings.simulator.mode == "device":
        # Devices connect themselves and announce their own (retained) status.
        return children.spawn("simulator", "sim", env=sim_env)
    wanted = city_size(settings)
    url = settings.database.url
    registry = "none" if _registered_devices(url) >= wanted else "direct"
    log.info(
        "registry: %s (%d devices)", "already loaded" if registry == "none" else "loading by COPY", wanted
    )
    sim = children.spawn("simulator", "sim", "--registry", registry, env=sim_env)
    while _registered_devices(url) < wanted:
        if sim.poll() is not None:
            raise ConfigError(f"the simulator exited with status {sim.returncode} loading the registry")
        time.sleep(_REGISTRY_POLL_S)
    return sim


def _prewarm(postgres: PostgresServer) -> None:
    """A large registry read into shared buffers before anything writes to it (pgmemory)."""
    started = time.monotonic()
    blocks = postgres.prewarm(PostgresServer.DATABASE, pgmemory.REGISTRY_TABLES)
    log.info("registry read into memory: %d MB in %.1f s", blocks * 8 // 1024, time.monotonic() - started)


def _ensure_admin_key(settings: Settings, home: Path) -> Path:
    """An admin API key for the person running the stack, kept across restarts."""
    from api.keys import Scope, ensure_token_file

    token_file = home / "secrets" / "api-admin.token"
    ensure_token_file(settings.database.url, token_file, "cityneuron-up", [Scope.ADMIN])
    return token_file


def run_stack(settings: Settings) -> int:
    """Run the local stack until Ctrl-C; returns the process exit status."""
    # PostgreSQL and Mosquitto run as their own users when we are root: they must enter it.
    home = prepare_home(settings.stack.home)
    # Before anything starts: a Mosquitto older than 2.0.12 would lose acknowledged readings.
    find_mosquitto(settings.stack.mosquitto_bin)
    check_port_free(settings.api.port, "the API")
    check_port_free(settings.ingest.http_port, "ingest metrics")
    check_per_device_mode(settings)
    stop = _StopRequest()
    with ExitStack() as stack:
        devices = city_size(settings)
        postgres = stack.enter_context(
            PostgresServer(
                home / "postgres",
                settings.stack.postgres_port,
                bin_dir=settings.stack.postgres_bin_dir,
                settings=pgmemory.server_settings(devices, settings.stack.postgres_shared_buffers_mb),
            )
        )
        broker, provisioned = _start_broker(settings, stack)
        settings = settings.model_copy(
            update={"database": settings.database.model_copy(update={"url": postgres.url})}
        )
        info = init_schema(settings.database)
        if devices >= pgmemory.LARGE_CITY_DEVICES:
            _prewarm(postgres)
        admin_token_file = _ensure_admin_key(settings, home)
        children = _Children(_child_env(settings))
        stack.callback(children.stop)
        ingest = children.spawn("ingest", "ingest", env=_credentials_env(provisioned, INGEST_USER))
        _wait_http_ok(
            f"http://{settings.ingest.http_host}:{settings.ingest.http_port}/ready", ingest, "ingest"
        )
        api = children.spawn("api", "api", env=_credentials_env(provisioned, API_USER))
        api_url = f"http://{settings.api.host}:{settings.api.port}"
        _wait_http_ok(f"{api_url}/health", api, "api")
        if settings.stack.run_simulator:
            _start_simulator(settings, children, provisioned)
            # The banner promises a visible city: wait until the API lists all of it.
            city = city_size(settings)
            log.info("waiting until the API lists the city's %d devices", city)
            _wait_http_ok(
                f"{api_url}/health/ready?min_devices={city}", api, "the city's registry", _CITY_TIMEOUT_S
            )
        # Commands run next to the stack (apikey, load) find it through this file.
        localstack.write(localstack.describe(settings, postgres.password_file, provisioned))
        print(
            "\nCityNeuron is up\n"
            f"  Screen     {api_url}/screen/  (the city on one page: open it in a browser)\n"
            f"  API        {api_url}  (docs: {api_url}/docs)\n"
            f"{_broker_banner(settings, broker, provisioned)}"
            f"  PostgreSQL {postgres.url.split('@')[0].rsplit(':', 1)[0]}:***@127.0.0.1:"
            f"{settings.stack.postgres_port}/{PostgresServer.DATABASE}"
            f"  (password in {postgres.password_file}; TimescaleDB {info.timescaledb or 'absent'})\n"
            f"  API key    admin token in {admin_token_file} (writes need it: Authorization: Bearer ...)\n"
            f"  Ingest     http://{settings.ingest.http_host}:{settings.ingest.http_port}/metrics\n"
            f"  Data       {home}\n"
            "Press Ctrl-C to stop.\n",
            flush=True,
        )
        stop.up = True
        while not stop.requested:
            dead = children.first_dead()
            if dead is not None:
                log.error("%s exited with status %d: stopping the stack", *dead)
                return 1
            time.sleep(0.5)
        log.info("stopping the stack")
    return 0
