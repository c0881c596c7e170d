"""``cityneuron up``: the whole testbed on this machine, without Docker.

Starts PostgreSQL and Mosquitto from the machine's binaries with their data under one folder,
initialises the schema, then runs ingest, API and simulator as child processes, prints the URLs
and stops everything cleanly on Ctrl-C (or when one of the services dies).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import ExitStack

from cityneuron.errors import ConfigError
from cityneuron.schema import init_schema
from cityneuron.servers import MosquittoBroker, PostgresServer, check_port_free
from cityneuron.settings import Settings

log = logging.getLogger("cityneuron.stack")

_READY_TIMEOUT_S = 60.0


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
            "CITYNEURON_SIMULATOR__PRESET": settings.simulator.preset,
            "CITYNEURON_SIMULATOR__SCALE": str(settings.simulator.scale),
            "CITYNEURON_SIMULATOR__SPEED": str(settings.simulator.speed),
            "CITYNEURON_SIMULATOR__SEED": str(settings.simulator.seed),
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def _wait_http_ok(url: str, process: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + _READY_TIMEOUT_S
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
    raise ConfigError(f"{what} not ready at {url} after {_READY_TIMEOUT_S:.0f} s")


class _Children:
    """The service processes, stopped in reverse start order."""

    def __init__(self, env: dict[str, str]) -> None:
        self._env = env
        self.processes: list[tuple[str, subprocess.Popen[bytes]]] = []

    def spawn(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        process = subprocess.Popen([sys.executable, "-m", "cityneuron", *args], env=self._env)
        self.processes.append((name, process))
        return process

    def first_dead(self) -> tuple[str, int] | None:
        for name, process in self.processes:
            if process.poll() is not None:
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


def run_stack(settings: Settings) -> int:
    """Run the local stack until Ctrl-C; returns the process exit status."""
    home = settings.stack.home.resolve()
    home.mkdir(parents=True, exist_ok=True)
    # PostgreSQL and Mosquitto run as their own users when we are root: let them enter.
    home.chmod(0o711)
    check_port_free(settings.api.port, "the API")
    check_port_free(settings.ingest.http_port, "ingest metrics")
    stop_requested = False

    def _request_stop(signum: int, _frame: object) -> None:
        nonlocal stop_requested
        stop_requested = True

    with ExitStack() as stack:
        postgres = stack.enter_context(
            PostgresServer(
                home / "postgres", settings.stack.postgres_port, bin_dir=settings.stack.postgres_bin_dir
            )
        )
        stack.enter_context(
            MosquittoBroker(home / "mosquitto", settings.mqtt.port, binary=settings.stack.mosquitto_bin)
        )
        settings = settings.model_copy(
            update={"database": settings.database.model_copy(update={"url": postgres.url})}
        )
        info = init_schema(settings.database)
        children = _Children(_child_env(settings))
        stack.callback(children.stop)
        ingest = children.spawn("ingest", "ingest")
        _wait_http_ok(
            f"http://{settings.ingest.http_host}:{settings.ingest.http_port}/ready", ingest, "ingest"
        )
        api = children.spawn("api", "api")
        api_url = f"http://{settings.api.host}:{settings.api.port}"
        _wait_http_ok(f"{api_url}/health", api, "api")
        if settings.stack.run_simulator:
            children.spawn("simulator", "sim")
        print(
            "\nCityNeuron is up\n"
            f"  API        {api_url}  (docs: {api_url}/docs)\n"
            f"  MQTT       mqtt://127.0.0.1:{settings.mqtt.port}  (topics city/#)\n"
            f"  PostgreSQL {postgres.url.split('@')[0].rsplit(':', 1)[0]}:***@127.0.0.1:"
            f"{settings.stack.postgres_port}/{PostgresServer.DATABASE}"
            f"  (password in {postgres.password_file}; TimescaleDB {info.timescaledb or 'absent'})\n"
            f"  Ingest     http://{settings.ingest.http_host}:{settings.ingest.http_port}/metrics\n"
            f"  Data       {home}\n"
            "Press Ctrl-C to stop.\n",
            flush=True,
        )
        signal.signal(signal.SIGINT, _request_stop)
        signal.signal(signal.SIGTERM, _request_stop)
        while not stop_requested:
            dead = children.first_dead()
            if dead is not None:
                log.error("%s exited with status %d: stopping the stack", *dead)
                return 1
            time.sleep(0.5)
        log.info("stopping the stack")
    return 0
