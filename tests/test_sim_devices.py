"""Per-device mode: one MQTT connection per device, each with its own client id, password and last
will, against a Mosquitto that requires passwords (and enforces the project's ACL)."""

from __future__ import annotations

import resource
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson
import pytest
from test_sim_commands import Watcher, exercise_commands

from cityneuron.contract import decode_status, device_topic
from cityneuron.credentials import device_password, new_device_key
from cityneuron.provision import acl_text
from cityneuron.servers import BrokerSecurity, MosquittoBroker, broker_owner, free_port
from cityneuron.settings import MqttSettings, Settings
from cityneuron.tls import ensure_dev_pki, install_broker_tls
from simulator import PublishError, clock
from simulator.city import City, build_city
from simulator.drivers import Drivers
from simulator.effects import Effects, EffectsSpec
from simulator.faultconfig import load_fault_config
from simulator.fleet import DeviceFleet, ensure_fd_limit
from simulator.kinds import build_models
from simulator.links import LinkTracker
from simulator.runner import run
from simulator.schedule import build_schedules

SCALE = 0.1  # 305 devices: a few hundred concurrent connections
OBSERVER = "test.observer"


@pytest.fixture(scope="module")
def city() -> City:
    return build_city("small", SCALE, seed=42)


@dataclass
class SecureBroker:
    broker: MosquittoBroker
    device_key: bytes
    device_key_file: Path
    observer_password: str
    ca_file: Path | None = None

    @property
    def port(self) -> int:
        return self.broker.port

    def watcher(self) -> Watcher:
        return Watcher(self.port, OBSERVER, self.observer_password)


def _scratch_dir() -> Path:
    # Not tmp_path: the broker's own user must be able to enter it (as in conftest.py).
    path = Path(tempfile.mkdtemp(prefix="cityneuron-sim-devices-"))
    path.chmod(0o711)
    return path


@pytest.fixture
def secure_broker(city: City) -> Iterator[Callable[..., SecureBroker]]:
    """Start a Mosquitto with ``allow_anonymous false``, a password file made by mosquitto_passwd
    (every device of ``city``, the password derived from a new device key, except the devices
    in ``wrong``) and the project's ACL plus an observer that may read and command everything."""
    roots: list[Path] = []
    brokers: list[MosquittoBroker] = []

    def start(wrong: frozenset[str] = frozenset(), tls: bool = False) -> SecureBroker:
        root = _scratch_dir()
        roots.append(root)
        key = new_device_key()
        key_file = root / "device.key"
        key_file.write_text(key.hex() + "\n")
        observer_password = uuid.uuid4().hex
        lines = [f"{OBSERVER}:{observer_password}"]
        for table in city:
            for device_id in table.device_ids():
                password = "not-its-password" if device_id in wrong else device_password(key, device_id)
                lines.append(f"{device_id}:{password}")
        passwd, acl = root / "passwd", root / "acl"
        passwd.write_text("\n".join(lines) + "\n")
        subprocess.run(["mosquitto_passwd", "-U", str(passwd)], check=True, capture_output=True)
        acl.write_text(acl_text([]) + f"\nuser {OBSERVER}\ntopic readwrite city/#\n")
        owner = broker_owner()
        for path in (passwd, acl):
            path.chmod(0o600)
            if owner is not None:
                shutil.chown(path, *owner)
        security = BrokerSecurity(passwd, acl)
        ca_file = None
        if tls:
            pki = ensure_dev_pki(root / "pki")
            broker_tls = root / "tls"
            broker_tls.mkdir(mode=0o700)
            if owner is not None:
                shutil.chown(broker_tls, *owner)
            install_broker_tls(pki, broker_tls, owner=owner)
            security = BrokerSecurity(
                passwd, acl, tls_dir=broker_tls, tls_port=free_port(), public_host="127.0.0.1"
            )
            ca_file = pki.ca_cert
        broker = MosquittoBroker(root / "mosquitto", free_port(), security=security)
        broker.start()
        brokers.append(broker)
        return SecureBroker(broker, key, key_file, observer_password, ca_file)

    yield start
    for broker in brokers:
        broker.stop()
    for root in roots:
        shutil.rmtree(root, ignore_errors=True)


def _device_settings(secure: SecureBroker, **simulator: object) -> Settings:
    options = {"mode": "device", "scale": SCALE, "device_key_file": secure.device_key_file, **simulator}
    return Settings(mqtt=MqttSettings(port=secure.port), simulator=options)


def _wait(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_every_device_publishes_on_its_own_authenticated_connection(
    city: City, secure_broker: Callable[..., SecureBroker]
) -> None:
    secure = secure_broker()
    watcher = secure.watcher()
    try:
        summary = run(_device_settings(secure), once=True)
        assert summary.devices == city.devices and summary.errors == 0
        assert summary.messages == 2 * city.devices  # a retained status and a report each
        # A status and a report each, and the goodbye ("offline") of the clean exit.
        _wait(lambda: len(watcher.messages) >= 3 * city.devices, 20, "every device's messages")
    finally:
        watcher.close()
    channels: dict[str, set[str]] = {}
    statuses: dict[str, list[bool]] = {}
    for topic, payload in watcher.messages:
        _, _, _, device_id, channel = topic.split("/", 4)
        channels.setdefault(device_id, set()).add(channel)
        if channel == "status":
            statuses.setdefault(device_id, []).append(decode_status(payload).online)
    ids = [device_id for table in city for device_id in table.device_ids()]
    assert set(channels) == set(ids)
    # The ACL lets a device write only topics named after its username: everything arrived, so
    # every device used its own identity. The broker log names each client id and username.
    assert all(channels[d] == {"status", "telemetry"} for d in ids)
    # Online with its registry facts first; offline (its goodbye) when the run ends cleanly.
    assert all(statuses[d] == [True, False] for d in ids)
    log = secure.broker.log_file.read_text()
    assert all(f" as {d} (" in log and f"u'{d}'" in log for d in ids)


def test_wrong_password_refused_others_held_and_wills_fire(
    city: City, secure_broker: Callable[..., SecureBroker]
) -> None:
    poles = city.tables["smart_pole"]
    victim = poles.device_id(0)  # device number 0: the pole table comes first
    secure = secure_broker(wrong=frozenset({victim}))
    watcher = secure.watcher()
    mqtt = MqttSettings(port=secure.port)
    try:
        fleet = DeviceFleet(mqtt, city, device_key=secure.device_key, drain_timeout_s=5)
        with fleet:
            # Every other device holds its own connection at the same time.
            assert fleet.refused == 1 and fleet.connected == city.devices - 1
            assert fleet.gateway_for(0).device_id == victim
            topic = device_topic(poles.district_slug(0), "smart_pole", victim, "telemetry")
            assert not fleet.gateway_for(0).publish(topic, b"{}", 1)
            assert fleet.errors == 1

            # A device whose link dies without a DISCONNECT: the broker publishes its will, then
            # the device reconnects after its back-off and says it is online again.
            lost = poles.device_id(1)
            status = device_topic(poles.district_slug(1), "smart_pole", lost, "status")
            fleet.drop([1])
            watcher.wait_for(
                lambda t, p: (t == status and p == orjson.dumps({"online": False})) or None, 15, "the will"
            )
            _wait(lambda: fleet.connects == city.devices, 15, "the reconnect")
            watcher.wait_for(
                lambda t, p: (t == status and b'"ts"' in p and decode_status(p).online) or None,
                15,
                "online again",
            )
            assert fleet.disconnects == 1 and fleet.connected == city.devices - 1

        # A clean exit says goodbye: every connected device leaves a retained "offline" with a ts.
        def goodbyes() -> set[str]:
            return {
                t.split("/")[3]
                for t, p in list(watcher.messages)
                if t.endswith("/status") and b'"ts"' in p and not decode_status(p).online
            }

        _wait(lambda: len(goodbyes()) >= city.devices - 1, 15, "every goodbye")
        assert len(goodbyes()) == city.devices - 1 and victim not in goodbyes()
        time.sleep(0.5)
        wills = [t for t, p in list(watcher.messages) if p == orjson.dumps({"online": False})]
        assert wills == [status], "a clean exit fires no will"
        assert fleet.unacked == 0

        # A fleet whose device key is not the broker's: every device is refused.
        with (
            pytest.raises(PublishError, match="refused"),
            DeviceFleet(mqtt, city, device_key=new_device_key()),
        ):
            pass
    finally:
        watcher.close()


def test_wills_fire_for_every_device_when_the_fleet_dies(
    city: City, secure_broker: Callable[..., SecureBroker]
) -> None:
    secure = secure_broker()
    watcher = secure.watcher()
    try:
        with (
            pytest.raises(RuntimeError),
            DeviceFleet(MqttSettings(port=secure.port), city, device_key=secure.device_key),
        ):
            raise RuntimeError("the simulator crashed")
        will = orjson.dumps({"online": False})
        _wait(
            lambda: sum(p == will for _, p in watcher.messages) >= city.devices,
            20,
            "a will from every device",
        )
    finally:
        watcher.close()


def test_commands_in_device_mode(secure_broker: Callable[..., SecureBroker]) -> None:
    secure = secure_broker()
    watcher = secure.watcher()
    try:
        summary = exercise_commands(_device_settings(secure, speed=600), watcher)
    finally:
        watcher.close()
    assert summary.messages > summary.devices


def test_device_connections_over_tls(city: City, secure_broker: Callable[..., SecureBroker]) -> None:
    secure = secure_broker(tls=True)
    tls_port = secure.broker.security.tls_port if secure.broker.security else None
    assert tls_port is not None and secure.ca_file is not None
    settings = _device_settings(secure)
    settings.mqtt = MqttSettings(port=tls_port, tls_ca_file=secure.ca_file)
    summary = run(settings, once=True)
    # Only the TLS listener was named: every device verified the broker and sent over TLS.
    assert summary.errors == 0 and summary.messages == 2 * city.devices


def test_open_file_limit() -> None:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert ensure_fd_limit(min(soft, 64)) == soft
    with pytest.raises(PublishError, match="ulimit -n"):
        ensure_fd_limit(1 << 40)


def test_offline_faults_cut_and_restore_links_at_their_episode_edges(city: City, tmp_path: Path) -> None:
    faults = tmp_path / "faults.toml"
    faults.write_text(
        '[rates]\ndropout = 2.0\n[rates.water_meter]\nbattery_death = 1.0\n[dropout]\nwindow = "6h"\n'
        'duration = ["30m", "1h"]\n[battery_death]\nduration = ["2h", "4h"]\n'
    )
    models = build_models(city, Drivers(city.seed))
    spec = EffectsSpec(faults=load_fault_config(faults))
    effects = Effects(city, models, build_schedules(city.tables), spec)
    injector = effects.faults
    assert injector is not None
    links = LinkTracker(city, None, injector)

    def truth(t_ms: int) -> dict[str, np.ndarray]:
        """Every device inside the offline part of a dropout or battery death at ``t_ms``."""
        out = {}
        for kind, table in city.tables.items():
            t = np.full(len(table), t_ms, dtype=np.int64)
            offline = np.zeros(len(table), dtype=bool)
            for fault in injector.active(kind):
                ep = injector.episodes(kind, fault, table.key, t)
                offline |= ep.hit & (t >= injector.offline_from(fault, ep.start, ep.end))
            out[kind] = offline
        return out

    t0 = 1_741_651_200_000  # 2025-03-11T00:00Z
    state = {kind: np.zeros(len(table), dtype=bool) for kind, table in city.tables.items()}
    cuts = restores = 0
    for after in [None, *range(t0, t0 + 12 * clock.MS_PER_H, 5 * clock.MS_PER_MIN)]:
        until = t0 if after is None else after + 5 * clock.MS_PER_MIN
        changes = links.start(t0) if after is None else links.changes(after, until)
        for change in changes:
            assert state[change.kind][change.rows].tolist() == [change.online] * len(change.rows)
            state[change.kind][change.rows] = not change.online
            cuts += 0 if change.online else len(change.rows)
            restores += len(change.rows) if change.online else 0
        # Only the devices whose state changed were touched, yet every device is right.
        expected = truth(until)
        assert all(np.array_equal(state[k], expected[k]) for k in state), until
    assert cuts > 50 and restores > 50
    assert links.offline_count() == sum(int(v.sum()) for v in state.values())
    # A cut link is a logged fault, even for a meter whose daily upload no dropout hit.
    logged = {(r.kind, r.type) for r in effects.log.records}
    assert {("water_meter", "dropout"), ("water_meter", "battery_death")} <= logged
    assert all("silent_from_ms" in r.params for r in effects.log.records if r.type == "battery_death")
