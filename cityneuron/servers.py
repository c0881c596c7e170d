"""Local Mosquitto and PostgreSQL servers, started from the machine's binaries.

Used by ``cityneuron up`` and by the test fixtures alike, so both run the same way. Each server
is a context manager that owns one data folder and one child process.
"""

from __future__ import annotations

import functools
import logging
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

from cityneuron.errors import ConfigError

log = logging.getLogger("cityneuron.servers")

_PG_BIN_DIRS = (
    "/usr/lib/postgresql/{v}/bin",
    "/usr/pgsql-{v}/bin",
    "/opt/homebrew/opt/postgresql@{v}/bin",
)
_PG_VERSIONS = (18, 17, 16, 15)
_POSTGRES_USER = "postgres"
_MOSQUITTO_USER = "mosquitto"


def broker_conf_dir() -> Path:
    """The shared Mosquitto settings folder (broker/conf.d), in a checkout or an installed wheel."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "broker" / "conf.d", here / "_broker" / "conf.d"):
        if candidate.is_dir():
            return candidate
    raise ConfigError("broker/conf.d not found: reinstall cityneuron")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def check_port_free(port: int, what: str) -> None:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            raise ConfigError(
                f"port {port} for {what} is busy: stop what uses it or choose another port"
            ) from None


def wait_for_port(port: int, timeout_s: float, process: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise ConfigError(f"server exited with status {process.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise ConfigError(f"nothing listens on port {port} after {timeout_s:.0f} s")


def _stop_process(process: subprocess.Popen[bytes] | None, sig: int, timeout_s: float) -> None:
    if process is None or process.poll() is not None:
        return
    process.send_signal(sig)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _find_mosquitto(explicit: Path | None) -> Path:
    if explicit is not None:
        if os.access(explicit, os.X_OK):
            return explicit
        raise ConfigError(f"mosquitto not found at {explicit} (CITYNEURON_STACK__MOSQUITTO_BIN)")
    for candidate in (shutil.which("mosquitto"), "/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"):
        if candidate and os.access(candidate, os.X_OK):
            return Path(candidate)
    raise ConfigError(
        "mosquitto not found: install Mosquitto 2.0.12 or newer"
        " (Debian 12: from bookworm-backports, as scripts/bootstrap.sh does)"
    )


# Mosquitto before 2.0.12 does not restore the $share subscriptions of persistent sessions when it
# restarts (its ChangeLog, 2.0.12: "Fix $share subscriptions not being recovered for durable
# clients that reconnect"): it acknowledges, then drops, every reading that arrives before ingest
# has subscribed again, so the no-loss promise cannot hold on it.
MIN_MOSQUITTO_VERSION = (2, 0, 12)
_VERSION_RE = re.compile(r"mosquitto version (\d+)\.(\d+)\.(\d+)")


def parse_mosquitto_version(help_text: str) -> tuple[int, int, int] | None:
    """The version in the output of ``mosquitto -h`` ("mosquitto version 2.0.21"), or None."""
    match = _VERSION_RE.search(help_text)
    if match is None:
        return None
    major, minor, patch = (int(g) for g in match.groups())
    return major, minor, patch


def mosquitto_version_problem(binary: Path, help_text: str) -> str | None:
    """Why this Mosquitto cannot be used (one line), or None when it is recent enough."""
    version = parse_mosquitto_version(help_text)
    minimum = ".".join(map(str, MIN_MOSQUITTO_VERSION))
    fix = (
        f"install Mosquitto {minimum} or newer (Debian 12: from bookworm-backports, as"
        " scripts/bootstrap.sh does; Ubuntu 24.04 ships 2.0.18) or point CITYNEURON_STACK__MOSQUITTO_BIN at one"
    )
    if version is None:
        first = help_text.strip().splitlines()[0][:80] if help_text.strip() else "no output"
        return f"cannot tell the version of {binary} (`mosquitto -h` said: {first!r}): {fix}"
    if version >= MIN_MOSQUITTO_VERSION:
        return None
    found = ".".join(map(str, version))
    return (
        f"{binary} is Mosquitto {found}, older than {minimum}: it does not restore the $share"
        " subscriptions of persistent sessions after a restart, so readings it acknowledged while"
        f" ingest reconnects are lost; {fix}"
    )


@functools.lru_cache(maxsize=8)
def _help_text(binary: str, mtime_ns: int) -> str:
    # `mosquitto -h` prints its version and usage and exits with status 3: the status means nothing.
    try:
        result = subprocess.run([binary, "-h"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ConfigError(f"cannot run {binary} -h: {exc}") from exc
    return result.stdout + result.stderr


def find_mosquitto(explicit: Path | None = None) -> Path:
    """The Mosquitto binary to run: ``explicit``, PATH or the usual folders; ConfigError (one
    line) when there is none or it is older than MIN_MOSQUITTO_VERSION."""
    binary = _find_mosquitto(explicit)
    problem = mosquitto_version_problem(binary, _help_text(str(binary), binary.stat().st_mtime_ns))
    if problem is not None:
        raise ConfigError(problem)
    return binary


def find_postgres_bin_dir(explicit: Path | None = None) -> Path:
    """Folder holding initdb and postgres: the explicit one, PATH, or the usual install folders."""
    candidates: list[Path] = [explicit] if explicit else []
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    candidates += [Path(d.format(v=v)) for v in _PG_VERSIONS for d in _PG_BIN_DIRS]
    for candidate in candidates:
        if (candidate / "initdb").exists() and (candidate / "postgres").exists():
            return candidate
    raise ConfigError(
        "PostgreSQL server binaries (initdb, postgres) not found: install them"
        " (Debian/Ubuntu: apt-get install postgresql) or set CITYNEURON_STACK__POSTGRES_BIN_DIR"
    )


def _unprivileged_user() -> pwd.struct_passwd | None:
    """As root, the account to run PostgreSQL under (initdb and postgres refuse root)."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(_POSTGRES_USER)
    except KeyError:
        raise ConfigError(
            "running as root but there is no 'postgres' user to run PostgreSQL:"
            " install the postgresql package (it creates the user) or run as a normal user"
        ) from None


def _check_traversable(path: Path, user: pwd.struct_passwd, server: str = "PostgreSQL") -> None:
    for parent in path.resolve().parents:
        st = parent.stat()
        if st.st_uid == user.pw_uid:
            continue
        if not st.st_mode & 0o001:
            raise ConfigError(
                f"{server} runs as user '{user.pw_name}', who cannot enter {parent}:"
                f" put the data elsewhere (e.g. CITYNEURON_STACK__HOME=/var/tmp/cityneuron)"
            )


class _ServerProcess:
    """A child server process that is a context manager: start on enter, stop on exit."""

    _process: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 30.0) -> None:
        raise NotImplementedError

    def stop(self, *, graceful: bool = True) -> None:
        raise NotImplementedError

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def broker_owner() -> tuple[int, int] | None:
    """(uid, gid) Mosquitto switches to when started as root; None when it runs as us."""
    if os.geteuid() != 0:
        return None
    try:
        user = pwd.getpwnam(_MOSQUITTO_USER)
    except KeyError:
        return None
    return user.pw_uid, user.pw_gid


# The files Mosquitto writes into its data folder (mosquitto_config names them).
BROKER_LOG_FILE = "mosquitto.log"
BROKER_PID_FILE = "mosquitto.pid"
BROKER_PERSISTENCE_FILE = "mosquitto.db"  # broker/conf.d/cityneuron.conf: persistence_file


def prepare_broker_data_dir(data_dir: Path) -> bool:
    """Create the broker's data folder and hand it to the user Mosquitto runs as.

    Started as root, Mosquitto switches to its 'mosquitto' user before it opens its log, pid and
    persistence files (checked with 2.0.21): without this every autosave fails with "Permission
    denied" and the sessions (and the readings queued in them) do not survive a restart. Returns
    True when there is no such user and Mosquitto must be told to stay root (``user root``).
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    owner = broker_owner()
    if owner is None:
        return os.geteuid() == 0
    os.chown(data_dir, *owner)
    for name in (BROKER_LOG_FILE, BROKER_PID_FILE, BROKER_PERSISTENCE_FILE):
        # Left by an earlier run as root (e.g. `mosquitto -c` of an older generated config).
        if (data_dir / name).exists():
            os.chown(data_dir / name, *owner)
    _check_traversable(data_dir, pwd.getpwuid(owner[0]), "Mosquitto")
    return False


def reload_broker(data_dir: Path) -> int:
    """Send SIGHUP to the broker whose pid file is in ``data_dir``: Mosquitto then re-reads its
    password file and ACL (mosquitto(8), SIGNALS). Returns its pid; ConfigError when it does not run."""
    pid_file = data_dir / BROKER_PID_FILE
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        raise ConfigError(f"no broker running with its data in {data_dir} (no readable {pid_file})") from None
    comm = Path(f"/proc/{pid}/comm")
    # A pid file left by a killed broker may name another process by now: check before signalling.
    if comm.exists() and comm.read_text().strip() != "mosquitto":
        raise ConfigError(f"{pid_file} names pid {pid}, which is not mosquitto: is the broker running?")
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        raise ConfigError(f"the broker of {pid_file} (pid {pid}) is not running") from None
    log.info("sent SIGHUP to mosquitto pid %d", pid)
    return pid


@dataclass(frozen=True)
class BrokerSecurity:
    """Authentication, ACL and TLS of a broker, from files written by cityneuron.provision/tls.

    ``tls_dir`` holds ca.crt, server.crt and server.key. The TLS listeners bind ``public_host``;
    the plain listener always binds loopback.
    """

    password_file: Path
    acl_file: Path
    tls_dir: Path | None = None
    tls_port: int | None = None
    # Devices authenticated by a client certificate (common name = device id = username).
    cert_port: int | None = None
    # Browser dashboards (MQTT over WebSockets), loopback only.
    websockets_port: int | None = None
    public_host: str = "0.0.0.0"

    @property
    def ports(self) -> tuple[int, ...]:
        return tuple(p for p in (self.tls_port, self.cert_port, self.websockets_port) if p is not None)


def mosquitto_config(
    *,
    port: int,
    data_dir: Path,
    log_file: Path | None,
    security: BrokerSecurity | None,
    anonymous: bool = False,
    run_as_root: bool = False,
) -> str:
    """The per-instance Mosquitto configuration: listeners, paths and the auth files.

    Everything else comes from the included broker/conf.d folder, which allows no anonymous
    clients; ``anonymous`` turns that off again (test fixtures only).
    """
    if security is None and not anonymous:
        raise ConfigError("a broker needs a password file and ACL (BrokerSecurity) or anonymous=True")
    lines = [
        "# Generated by cityneuron: listeners and paths for this broker; shared settings come from",
        "# the included broker/conf.d folder.",
        f"include_dir {broker_conf_dir()}",
        f"persistence_location {data_dir}/",
        # `cityneuron broker reload` (or kill -HUP) finds the broker here; removed when it stops.
        f"pid_file {data_dir / BROKER_PID_FILE}",
    ]
    if run_as_root:
        lines.append("user root")
    if log_file is None:
        lines.append("log_dest stdout")
    else:
        lines.append(f"log_dest file {log_file}")
    lines += [f"log_type {t}" for t in ("error", "warning", "notice", "information")]
    if anonymous:
        lines += ["# Test fixture: anyone may connect (overrides conf.d).", "allow_anonymous true"]
    if security is not None:
        lines += [f"password_file {security.password_file}", f"acl_file {security.acl_file}"]
    lines += ["", "# Plain MQTT: this machine only.", f"listener {port} 127.0.0.1"]
    if security is not None:
        lines += _secure_listeners(security)
    return "\n".join(lines) + "\n"


def _secure_listeners(security: BrokerSecurity) -> list[str]:
    lines: list[str] = []
    if security.tls_dir is not None:
        tls = [
            f"cafile {security.tls_dir / 'ca.crt'}",
            f"certfile {security.tls_dir / 'server.crt'}",
            f"keyfile {security.tls_dir / 'server.key'}",
            "tls_version tlsv1.2",
        ]
        if security.tls_port is not None:
            lines += [
                "",
                "# MQTT over TLS, username and password.",
                f"listener {security.tls_port} {security.public_host}",
                *tls,
            ]
        if security.cert_port is not None:
            lines += [
                "",
                "# MQTT over TLS with a client certificate: its common name is the username.",
                f"listener {security.cert_port} {security.public_host}",
                *tls,
                "require_certificate true",
                "use_identity_as_username true",
            ]
    elif security.tls_port is not None or security.cert_port is not None:
        raise ConfigError("TLS listeners need tls_dir (ca.crt, server.crt, server.key)")
    if security.websockets_port is not None:
        lines += [
            "",
            "# MQTT over WebSockets for browser dashboards (same users and ACL).",
            f"listener {security.websockets_port} 127.0.0.1",
            "protocol websockets",
        ]
    return lines


class MosquittoBroker(_ServerProcess):
    """A Mosquitto process using broker/conf.d, with its data under ``data_dir``.

    Secure by default: pass ``security`` (password file, ACL, optional TLS and WebSocket
    listeners); ``anonymous=True`` is for test fixtures that do not exercise authentication.
    """

    def __init__(
        self,
        data_dir: Path,
        port: int,
        *,
        binary: Path | None = None,
        security: BrokerSecurity | None = None,
        anonymous: bool = False,
    ) -> None:
        if security is None and not anonymous:
            raise ConfigError("MosquittoBroker needs security=BrokerSecurity(...) or anonymous=True")
        self.data_dir = data_dir
        self.port = port
        self.security = security
        self.anonymous = anonymous
        self._binary = binary
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def log_file(self) -> Path:
        return self.data_dir / BROKER_LOG_FILE

    @property
    def pid(self) -> int | None:
        """The broker's process id while it runs (also in ``data_dir/mosquitto.pid``)."""
        return self._process.pid if self.running and self._process is not None else None

    @property
    def ports(self) -> tuple[int, ...]:
        return (self.port, *(self.security.ports if self.security else ()))

    def _write_config(self) -> Path:
        stay_root = prepare_broker_data_dir(self.data_dir)
        conf = self.data_dir / "mosquitto.conf"
        conf.write_text(
            mosquitto_config(
                port=self.port,
                data_dir=self.data_dir,
                log_file=self.log_file,
                security=self.security,
                anonymous=self.anonymous,
                run_as_root=stay_root,
            )
        )
        return conf

    def start(self, timeout_s: float = 15.0) -> None:
        binary = find_mosquitto(self._binary)
        for port in self.ports:
            check_port_free(port, "mosquitto")
        conf = self._write_config()
        self._process = subprocess.Popen(
            [str(binary), "-c", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            # Not in the caller's process group: a terminal's Ctrl-C would stop the broker at once,
            # before the clients that are still saying goodbye; whoever started it stops it.
            process_group=0,
        )
        try:
            for port in self.ports:
                wait_for_port(port, timeout_s, self._process)
        except ConfigError as exc:
            err = self._process.stderr.read().decode(errors="replace") if self._process.stderr else ""
            log_tail = self.log_file.read_text(errors="replace")[-500:] if self.log_file.exists() else ""
            self.stop()
            raise ConfigError(f"mosquitto did not start: {exc}; {(err or log_tail).strip()[:500]}") from None
        log.info(
            "mosquitto listening on %s (data in %s, %s)",
            ", ".join(str(p) for p in self.ports),
            self.data_dir,
            "anonymous" if self.anonymous else "password + ACL",
        )

    def stop(self, *, graceful: bool = True) -> None:
        """Stop; graceful saves the persistence file, otherwise SIGKILL (a crash)."""
        _stop_process(self._process, signal.SIGTERM if graceful else signal.SIGKILL, 10.0)
        self._process = None


class PostgresServer(_ServerProcess):
    """A PostgreSQL cluster under ``data_dir`` on a loopback port, run as an unprivileged user.

    On first start it runs initdb and creates the ``cityneuron`` role and database with a random
    password kept in ``data_dir/cityneuron.password`` (mode 0600).
    """

    DATABASE = "cityneuron"
    ROLE = "cityneuron"

    def __init__(
        self,
        data_dir: Path,
        port: int,
        *,
        bin_dir: Path | None = None,
        timescaledb: bool | None = None,
        settings: dict[str, str] | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.port = port
        self._bin_dir = bin_dir
        self._want_timescaledb = timescaledb
        # Server settings over the defaults below (cityneuron.pgmemory sizes them for a city).
        self._settings = {"shared_buffers": "256MB", "max_wal_size": "2GB", **(settings or {})}
        self._process: subprocess.Popen[bytes] | None = None
        self._user = _unprivileged_user()
        self.timescaledb_loaded = False

    @property
    def cluster_dir(self) -> Path:
        return self.data_dir / "pgdata"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "postgres.log"

    @property
    def password_file(self) -> Path:
        return self.data_dir / "cityneuron.password"

    @property
    def url(self) -> str:
        password = self.password_file.read_text().strip()
        return f"postgresql://{self.ROLE}:{password}@127.0.0.1:{self.port}/{self.DATABASE}"

    @property
    def _uid(self) -> int | None:
        return None if self._user is None else self._user.pw_uid

    @property
    def _gid(self) -> int | None:
        return None if self._user is None else self._user.pw_gid

    @property
    def _extra_groups(self) -> list[int] | None:
        # Drop root's supplementary groups too, not only its uid and gid.
        return None if self._user is None else []

    def _chown(self, path: Path) -> None:
        if self._user is not None:
            os.chown(path, self._user.pw_uid, self._user.pw_gid)

    def _initdb(self, bin_dir: Path) -> None:
        superuser_pw = self.data_dir / "superuser.password"
        superuser_pw.write_text(secrets.token_urlsafe(24) + "\n")
        superuser_pw.chmod(0o600)
        self._chown(superuser_pw)
        result = subprocess.run(
            [
                str(bin_dir / "initdb"),
                "-D",
                str(self.cluster_dir),
                "-U",
                "postgres",
                "--pwfile",
                str(superuser_pw),
                "--auth-local=peer",
                "--auth-host=scram-sha-256",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
            ],
            capture_output=True,
            check=False,
            user=self._uid,
            group=self._gid,
            extra_groups=self._extra_groups,
        )
        if result.returncode != 0:
            raise ConfigError(f"initdb failed: {result.stderr.decode(errors='replace').strip()[:800]}")

    def _timescaledb_available(self, bin_dir: Path) -> bool:
        libdir = subprocess.run(
            [str(bin_dir / "pg_config"), "--pkglibdir"], capture_output=True, text=True, check=False
        ).stdout.strip()
        return bool(libdir) and any(Path(libdir).glob("timescaledb*.so"))

    def _contrib_available(self, bin_dir: Path, name: str) -> bool:
        libdir = subprocess.run(
            [str(bin_dir / "pg_config"), "--pkglibdir"], capture_output=True, text=True, check=False
        ).stdout.strip()
        return bool(libdir) and (Path(libdir) / f"{name}.so").exists()

    def prewarm(self, name: str, tables: tuple[str, ...]) -> int:
        """Read ``tables`` and their indexes of database ``name`` into shared buffers (pg_prewarm);
        returns the blocks read, 0 when pg_prewarm is not installed."""
        import psycopg

        with psycopg.connect(
            self._superuser_conninfo().replace("dbname=postgres", f"dbname={name}"), autocommit=True
        ) as conn:
            if (
                conn.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'pg_prewarm'").fetchone()
                is None
            ):
                return 0
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_prewarm")
            row = conn.execute(
                "SELECT coalesce(sum(pg_prewarm(c.oid)), 0) FROM pg_class c"
                " WHERE c.oid IN (SELECT to_regclass(t) FROM unnest(%(tables)s::text[]) AS t)"
                " OR c.oid IN (SELECT indexrelid FROM pg_index"
                "              WHERE indrelid IN (SELECT to_regclass(t) FROM unnest(%(tables)s::text[]) AS t))",
                {"tables": list(tables)},
            ).fetchone()
        return int(row[0]) if row else 0

    def _partman_available(self, bin_dir: Path) -> bool:
        sharedir = subprocess.run(
            [str(bin_dir / "pg_config"), "--sharedir"], capture_output=True, text=True, check=False
        ).stdout.strip()
        return bool(sharedir) and (Path(sharedir) / "extension" / "pg_partman.control").exists()

    def start(self, timeout_s: float = 60.0) -> None:
        bin_dir = find_postgres_bin_dir(self._bin_dir)
        check_port_free(self.port, "postgres")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._chown(self.data_dir)
        if self._user is not None:
            _check_traversable(self.data_dir, self._user)
        first_start = not (self.cluster_dir / "PG_VERSION").exists()
        if first_start:
            self._initdb(bin_dir)
        preload = self._want_timescaledb is not False and self._timescaledb_available(bin_dir)
        if self._want_timescaledb and not preload:
            raise ConfigError(
                "TimescaleDB was requested but its library is not installed for this PostgreSQL"
            )
        args = [
            str(bin_dir / "postgres"),
            "-D",
            str(self.cluster_dir),
            "-p",
            str(self.port),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            f"unix_socket_directories={self.data_dir}",
            "-c",
            "max_connections=200",
            "-c",
            "log_min_messages=warning",
        ]
        for name, value in self._settings.items():
            args += ["-c", f"{name}={value}"]
        libraries = ["timescaledb"] if preload else []
        if preload:
            args += ["-c", "timescaledb.telemetry_level=off"]
        if self._partman_available(bin_dir):
            # pg_partman's own scheduler: partitions made ahead and retention applied every minute
            # in the stack's database (cityneuron.partitions).
            libraries.append("pg_partman_bgw")
            args += [
                "-c",
                f"pg_partman_bgw.dbname={self.DATABASE}",
                "-c",
                f"pg_partman_bgw.role={self.ROLE}",
                "-c",
                "pg_partman_bgw.interval=60",
                "-c",
                "pg_partman_bgw.analyze=off",
            ]
        if self._contrib_available(bin_dir, "pg_prewarm"):
            # autoprewarm: the buffers in use are listed every 300 s and read back after a restart,
            # so a restarted 1:1 city does not read its 17 M-device registry page by page.
            libraries.append("pg_prewarm")
        if libraries:
            args += ["-c", f"shared_preload_libraries={','.join(libraries)}"]
        log_handle = self.log_file.open("ab")
        self._chown(self.log_file)
        self._process = subprocess.Popen(
            args,
            stdout=log_handle,
            stderr=subprocess.STDOUT,
            user=self._uid,
            group=self._gid,
            extra_groups=self._extra_groups,
            # Like the broker: stopped by whoever started it, after its clients, not by Ctrl-C.
            process_group=0,
        )
        log_handle.close()
        try:
            wait_for_port(self.port, timeout_s, self._process)
            self._wait_ready(timeout_s)
            self.timescaledb_loaded = preload
            if first_start:
                self._create_role_and_database()
        except ConfigError:
            tail = self.log_file.read_text(errors="replace")[-800:]
            self.stop()
            raise ConfigError(f"postgres did not start; log tail:\n{tail}") from None
        log.info("postgres listening on 127.0.0.1:%d (data in %s)", self.port, self.data_dir)

    def _superuser_conninfo(self) -> str:
        password = (self.data_dir / "superuser.password").read_text().strip()
        return f"host=127.0.0.1 port={self.port} user=postgres password={password} dbname=postgres"

    def _wait_ready(self, timeout_s: float) -> None:
        import psycopg

        deadline = time.monotonic() + timeout_s
        while True:
            try:
                with psycopg.connect(self._superuser_conninfo(), connect_timeout=2):
                    return
            except psycopg.OperationalError as exc:
                if time.monotonic() > deadline:
                    raise ConfigError(f"postgres not accepting connections: {exc}") from None
                time.sleep(0.1)

    def create_database(self, name: str) -> str:
        """Create database ``name`` owned by the cityneuron role (with TimescaleDB when loaded);
        return its URL."""
        import psycopg
        from psycopg import sql

        with psycopg.connect(self._superuser_conninfo(), autocommit=True) as conn:
            conn.execute(
                sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(name), sql.Identifier(self.ROLE))
            )
        if self.timescaledb_loaded:
            # The extension needs a superuser to create; the schema then belongs to the role.
            with psycopg.connect(
                self._superuser_conninfo().replace("dbname=postgres", f"dbname={name}"),
                autocommit=True,
            ) as conn:
                conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
        elif self._partman_available(find_postgres_bin_dir(self._bin_dir)):
            self.install_partman(name)
        return self.url.rsplit("/", 1)[0] + f"/{name}"

    def install_partman(self, name: str) -> None:
        """pg_partman in database ``name``: time partitions on plain PostgreSQL (cityneuron.partitions).

        The extension needs a superuser to create; the role then manages its own partitions
        (pg_partman's non-superuser setup: its schema, tables, functions and procedures).
        """
        import psycopg
        from psycopg import sql

        with psycopg.connect(
            self._superuser_conninfo().replace("dbname=postgres", f"dbname={name}"), autocommit=True
        ) as conn:
            conn.execute("CREATE SCHEMA IF NOT EXISTS partman")
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_partman SCHEMA partman")
            role = sql.Identifier(self.ROLE)
            for statement in (
                "GRANT ALL ON SCHEMA partman TO {}",
                "GRANT ALL ON ALL TABLES IN SCHEMA partman TO {}",
                "GRANT ALL ON ALL SEQUENCES IN SCHEMA partman TO {}",
                "GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA partman TO {}",
                "GRANT EXECUTE ON ALL PROCEDURES IN SCHEMA partman TO {}",
            ):
                conn.execute(sql.SQL(statement).format(role))

    def _create_role_and_database(self) -> None:
        import psycopg
        from psycopg import sql

        password = secrets.token_urlsafe(24)
        with psycopg.connect(self._superuser_conninfo(), autocommit=True) as conn:
            conn.execute(
                sql.SQL("CREATE ROLE {} LOGIN CREATEDB PASSWORD {}").format(
                    sql.Identifier(self.ROLE), sql.Literal(password)
                )
            )
        self.password_file.write_text(password + "\n")
        self.password_file.chmod(0o600)
        self.create_database(self.DATABASE)

    def stop(self, *, graceful: bool = True) -> None:
        """Fast shutdown (SIGINT), or SIGKILL to simulate a crash."""
        _stop_process(self._process, signal.SIGINT if graceful else signal.SIGKILL, 30.0)
        self._process = None
