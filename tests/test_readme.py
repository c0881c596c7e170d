"""The README's examples, run as written against a real `cityneuron up`: if one stops working,
this fails.

Every ```sh block preceded by ``<!-- readme-example: NAME -->`` is extracted, one command a line
(``\\`` continues a line), and run by bash from a folder laid out like a checkout after
``./scripts/run.sh``: ``.venv`` (this test's virtualenv) and the stack's default home
``.cityneuron``, with the virtualenv's bin folder *not* on PATH and no ``CITYNEURON_*`` variable
set, as in a new user's shell. Only the stack's ports are substituted (8000, 1883, 8885: the
test stack runs on free ones). Each command must exit 0 and print what it promises; a streaming
one (``curl -sN``, ``mosquitto_sub``) must print a reading within ``_STREAM_WITHIN_S``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from test_stack import _ports

README = Path(__file__).resolve().parent.parent / "README.md"
_BLOCK = re.compile(r"<!-- readme-example: ([a-z-]+) -->\n```sh\n(.*?)```", re.S)
# The city's poles report every minute: a pole's first reading may take that long after `up`.
_CITY_LIVE_WITHIN_S = 120.0
_STREAM_WITHIN_S = 30.0
_COMMAND_TIMEOUT_S = 240.0


def readme_examples(text: str) -> dict[str, list[str]]:
    """``{block name: [command, ...]}`` of the marked blocks of ``text``."""
    blocks: dict[str, list[str]] = {}
    for name, body in _BLOCK.findall(text):
        commands: list[str] = []
        pending = ""
        for line in body.splitlines():
            if pending:
                line = pending + "\n" + line
            if line.rstrip().endswith("\\"):
                pending = line
                continue
            pending = ""
            if line.strip():
                commands.append(line)
        assert not pending, f"block {name}: a command ends with a line continuation"
        blocks[name] = commands
    return blocks


def test_the_extractor_finds_every_marked_block() -> None:
    blocks = readme_examples(README.read_text())
    assert set(blocks) >= {"live", "apikey", "load"}
    assert len(blocks["live"]) >= 8, blocks["live"]
    # A continued command stays one command.
    assert any(c.startswith("mosquitto_sub") and "-t 'city/" in c for c in blocks["live"])


@dataclass
class Checkout:
    """A folder laid out like a checkout running `./scripts/run.sh`, and the stack's ports."""

    root: Path
    ports: dict[str, int]
    env: dict[str, str]

    def substitute(self, command: str) -> str:
        return (
            command.replace("localhost:8000", f"localhost:{self.ports['api']}")
            .replace("-p 1883 ", f"-p {self.ports['mqtt']} ")
            .replace("127.0.0.1:8885", f"127.0.0.1:{self.ports['ws']}")
        )


def _user_env() -> dict[str, str]:
    """A new user's shell: no CITYNEURON_* settings, the virtualenv's bin folder not on PATH."""
    venv_bin = str(Path(sys.prefix) / "bin")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CITYNEURON_")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p != venv_bin)
    env.pop("VIRTUAL_ENV", None)
    return env


@pytest.fixture(scope="module")
def checkout() -> Iterator[Checkout]:
    root = Path(tempfile.mkdtemp(prefix="cityneuron-readme-"))
    root.chmod(0o711)  # PostgreSQL and Mosquitto run as their own users when we are root
    (root / ".venv").symlink_to(sys.prefix)
    ports = _ports()
    env = _user_env()
    up = subprocess.Popen(
        [
            str(root / ".venv" / "bin" / "cityneuron"),
            "up",
            "--mqtt-port",
            str(ports["mqtt"]),
            "--postgres-port",
            str(ports["postgres"]),
            "--api-port",
            str(ports["api"]),
            "--ingest-http-port",
            str(ports["ingest"]),
        ],
        cwd=root,
        env={**env, "PYTHONUNBUFFERED": "1", "CITYNEURON_STACK__MQTT_TLS_PORT": str(ports["tls"])},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output: list[str] = []
    try:
        assert up.stdout is not None
        for line in up.stdout:
            output.append(line)
            if "Press Ctrl-C to stop" in line:
                break
        assert up.poll() is None, "".join(output)
        # Keep reading its log, or a full pipe would stall the stack.
        threading.Thread(target=lambda: output.extend(up.stdout or []), daemon=True).start()
        yield Checkout(root, ports, env)
    finally:
        up.send_signal(signal.SIGINT)
        try:
            up.wait(timeout=90)
        except subprocess.TimeoutExpired:
            up.kill()
            up.wait()
        shutil.rmtree(root, ignore_errors=True)
    assert up.returncode == 0, "".join(output[-50:])


def _run(
    checkout: Checkout, command: str, timeout_s: float = _COMMAND_TIMEOUT_S
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", checkout.substitute(command)],
        cwd=checkout.root,
        env=checkout.env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


def _first_lines(checkout: Checkout, command: str, wanted: Callable[[str], bool]) -> str:
    """Run a streaming command until it prints a line ``wanted`` accepts; returns that line."""
    process = subprocess.Popen(
        ["bash", "-c", checkout.substitute(command)],
        cwd=checkout.root,
        env=checkout.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # so the whole pipeline stops with it
    )
    found: list[str] = []
    seen: list[str] = []

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            seen.append(line)
            if wanted(line):
                found.append(line)
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(_STREAM_WITHIN_S)
    os.killpg(process.pid, signal.SIGTERM)
    _, err = process.communicate(timeout=10)
    assert found, f"{command!r} printed no reading in {_STREAM_WITHIN_S:.0f} s: {seen[:5]} {err}"
    return found[0]


def _is_sse_reading(line: str) -> bool:
    if not line.startswith("data:"):
        return False
    event = json.loads(line[len("data:") :])
    return isinstance(event, dict) and event.get("type") == "reading"


def _json(result: subprocess.CompletedProcess[str], command: str) -> object:
    """A JSON answer that is not an error (a page such as /docs: any non-empty answer)."""
    assert result.returncode == 0, (command, result.stderr)
    assert result.stdout.strip(), command
    if result.stdout.lstrip()[:1] not in ("{", "["):
        return result.stdout
    body = json.loads(result.stdout)
    assert not (isinstance(body, dict) and "error" in body), (command, body)
    return body


def test_readme_live_examples_work_as_written(checkout: Checkout) -> None:
    commands = readme_examples(README.read_text())["live"]
    # Wait as a user would for the city's first pole reports: the latest example must answer.
    latest = next(c for c in commands if c.endswith("/latest'"))
    deadline = time.monotonic() + _CITY_LIVE_WITHIN_S
    while True:
        result = _run(checkout, latest)
        if result.returncode == 0 and '"metrics"' in result.stdout:
            break
        assert time.monotonic() < deadline, f"{latest!r} never showed a reading: {result.stdout}"
        time.sleep(2)
    for command in commands:
        if command.startswith("curl -sN"):
            # The stream opens with a "ready" event: wait for a reading of the city.
            line = _first_lines(checkout, command, _is_sse_reading)
            reading = json.loads(line[len("data:") :])
            assert reading["district"] == "futian" and reading["kind"] == "smart_pole", reading
        elif command.startswith("mosquitto_sub"):
            line = _first_lines(checkout, command, lambda s: "/telemetry " in s)
            topic, payload = line.split(" ", 1)
            assert re.fullmatch(r"city/futian/smart_pole/[a-z0-9-]+/telemetry", topic), line
            assert json.loads(payload)
        elif not command.startswith("curl"):
            result = _run(checkout, command)
            assert result.returncode == 0, (command, result.stdout, result.stderr)
        else:
            body = _json(_run(checkout, command), command)
            if "?kind=air_station&limit=3" in command:
                assert isinstance(body, dict) and len(body["items"]) == 3, body
            if "/commands" in command:
                assert isinstance(body, dict) and body.get("command_id"), body


def test_readme_apikey_example_finds_the_stack(checkout: Checkout) -> None:
    for command in readme_examples(README.read_text())["apikey"]:
        result = _run(checkout, command)
        assert result.returncode == 0, (command, result.stderr)
        token = result.stdout.strip().splitlines()[-1]
        assert "key_id:" in result.stdout and len(token) >= 20, result.stdout
        # The key it made is the stack's: it may send a command.
        answer = httpx.post(
            f"http://127.0.0.1:{checkout.ports['api']}/devices/pole-futian-00002/commands",
            json={"command": "set_lamp_level", "args": {"level": 30}},
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        )
        assert answer.status_code == 202, answer.text


def test_readme_load_example_leaves_the_city_alone(checkout: Checkout) -> None:
    api = f"http://127.0.0.1:{checkout.ports['api']}"
    pole = "pole-futian-00001"

    def counters() -> dict[str, int]:
        quality = httpx.get(f"{api}/devices/{pole}", timeout=10).json()["quality"]
        return {k: quality[k] for k in ("seq_gaps", "seq_duplicates", "seq_reordered")}

    before = counters()
    for command in readme_examples(README.read_text())["load"]:
        result = _run(checkout, command)
        verdict = next((line for line in result.stdout.splitlines() if line.startswith("verdict")), "")
        # PASS; on a busy CI machine the rate may not hold, but nothing may be lost.
        assert result.returncode == 0 or (result.returncode == 3 and "FAIL (rate:" in verdict), (
            command,
            result.stdout,
            result.stderr,
        )
        assert "loss" not in verdict, result.stdout
    # The city's pole kept its own counters (the load used to write into its id: millions of gaps).
    assert counters() == before
    with httpx.Client(base_url=api, timeout=10) as client:
        listed = client.get("/devices", params={"kind": "smart_pole", "district": "futian", "limit": 1000})
        assert not [d for d in listed.json()["items"] if d["device_id"].startswith("load-")]
