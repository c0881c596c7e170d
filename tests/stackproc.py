"""`cityneuron up` in a child process on free ports, for browser tests, the screen benchmark and
the README screenshots (bench/screen.py and scripts/screenshots.py import it too)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cityneuron.servers import free_port
from cityneuron.stack import CERT_PORT_OFFSET, WEBSOCKETS_PORT_OFFSET

BANNER_END = "Press Ctrl-C to stop"


@dataclass(frozen=True)
class Stack:
    api: str
    home: Path
    banner: str
    postgres_port: int

    @property
    def admin_token(self) -> str:
        return (self.home / "secrets" / "api-admin.token").read_text().strip()

    @property
    def database_url(self) -> str:
        password = (self.home / "postgres" / "cityneuron.password").read_text().strip()
        return f"postgresql://cityneuron:{password}@127.0.0.1:{self.postgres_port}/cityneuron"


def _free_run(count: int) -> int:
    """A port p with p .. p+count-1 free (the TLS, client-certificate and WebSocket listeners)."""
    while True:
        base = free_port()
        try:
            for port in range(base, base + count):
                with socket.socket() as sock:
                    sock.bind(("0.0.0.0", port))
        except OSError:
            continue
        return base


@contextmanager
def running_stack(*extra: str, timeout_s: float = 180) -> Iterator[Stack]:
    """Run ``cityneuron up <extra>`` until the banner; stop it with SIGINT on exit."""
    root = Path(tempfile.mkdtemp(prefix="cityneuron-screen-"))
    root.chmod(0o711)
    home = root / "home"
    ports = {name: free_port() for name in ("mqtt", "postgres", "api", "ingest")}
    tls = _free_run(max(CERT_PORT_OFFSET, WEBSOCKETS_PORT_OFFSET) + 1)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "CITYNEURON_STACK__MQTT_TLS_PORT": str(tls)}
    command = [
        sys.executable, "-m", "cityneuron", "up", "--home", str(home),
        "--mqtt-port", str(ports["mqtt"]), "--postgres-port", str(ports["postgres"]),
        "--api-port", str(ports["api"]), "--ingest-http-port", str(ports["ingest"]), *extra,
    ]  # fmt: skip
    log = (root / "up.log").open("w+")
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        assert process.stdout is not None
        lines: list[str] = []
        # The banner comes within timeout_s or the stack failed; readline blocks, so the child's
        # own startup timeouts bound this loop.
        for line in process.stdout:
            lines.append(line)
            if BANNER_END in line:
                break
        banner = "".join(lines)
        if process.poll() is not None:
            raise RuntimeError(f"cityneuron up exited:\n{banner}")
        # Keep draining the output so the child never blocks on a full pipe.
        drain = subprocess.Popen(["cat"], stdin=process.stdout, stdout=log)
        yield Stack(f"http://127.0.0.1:{ports['api']}", home, banner, ports["postgres"])
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if "drain" in locals():
            drain.wait(timeout=10)
        log.close()
        shutil.rmtree(root, ignore_errors=True)
