"""Gateway batches (``city/{district}/{kind}/_batch/telemetry``): the contract, the ingest with a
real Mosquitto and PostgreSQL, the broker ACL, and a ``cityneuron load --style batch`` run."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable

import numpy as np
import orjson
import psycopg
import pytest
import test_load
import test_security_broker as security
from polling import eventually
from test_ingest import _await_count, _publish, _rows, _running, _with_ingest
from test_load import _args, _report
from test_security_broker import FUTIAN_GATEWAY, NOT_AUTHORIZED, POLE_A, SecureBroker, _Client

from cityneuron import contract
from cityneuron.cli import main
from cityneuron.contract import BATCH_DEVICE, batch_topic, encode_batch, encode_reading, now_ms
from cityneuron.decode import DISTRICT_MISMATCH, Limits, Message, decode_message, expand
from cityneuron.errors import ContractError, Reason
from cityneuron.provision import CITY_GATEWAY, INGEST_USER
from cityneuron.servers import MosquittoBroker
from cityneuron.settings import DatabaseSettings, MqttSettings, Settings
from ingest.service import IngestService
from simulator.city import build_city
from simulator.load.cli import EXIT_FAILED
from simulator.load.payloads import LoadDevices, MessageFactory, Style

POLES = batch_topic("futian", "smart_pole")
# Fixtures of the ingest and broker-security tests.
ingest = test_load.ingest
secure = security.secure
clients = security.clients
_COUNTERS = "SELECT device_id, messages, seq_max, seq_duplicates FROM device_activity ORDER BY device_id"

# --- the contract (no servers) ----------------------------------------------------------------


def test_batch_topic_is_parsed_as_a_batch_and_names_no_device() -> None:
    assert f"city/futian/smart_pole/{BATCH_DEVICE}/telemetry" == POLES
    parsed = contract.parse_topic(POLES)
    assert parsed.is_batch and (parsed.district, parsed.kind, parsed.channel) == (
        "futian",
        "smart_pole",
        "telemetry",
    )
    assert not contract.parse_topic(
        "city/futian/smart_pole/batch/telemetry"
    ).is_batch  # an ordinary device id
    # The batch level can never be a device: not in topics, device ids, or for another channel.
    assert not contract.is_device_id(BATCH_DEVICE)
    with pytest.raises(ContractError) as bad:
        contract.device_topic("futian", "smart_pole", BATCH_DEVICE)
    assert bad.value.reason is Reason.BAD_TOPIC
    for topic, reason in [
        (f"city/futian/smart_pole/{BATCH_DEVICE}/status", Reason.BAD_TOPIC),
        (f"city/futian/smart_pole/{BATCH_DEVICE}/cmd", Reason.BAD_TOPIC),
        (f"city/atlantis/smart_pole/{BATCH_DEVICE}/telemetry", Reason.UNKNOWN_DISTRICT),
        (f"city/futian/toaster/{BATCH_DEVICE}/telemetry", Reason.UNKNOWN_KIND),
        ("city/futian/smart_pole/_other/telemetry", Reason.BAD_TOPIC),
    ]:
        with pytest.raises(ContractError) as refused:
            contract.parse_topic(topic)
        assert refused.value.reason is reason, topic
    with pytest.raises(ContractError):
        batch_topic("atlantis", "smart_pole")


def test_batch_payload_round_trip_and_whole_message_checks() -> None:
    payload = encode_batch(
        [
            ("p-1", 1_760_000_000_000, {"lamp_level": 40.0}, 7),
            ("p-2", 1_760_000_000_001, {"lamp_level": 1.0}, None),
        ]
    )
    items = contract.decode_batch(payload)
    assert [contract.batch_item_device(item) for item in items] == ["p-1", "p-2"]
    # Each item is a single-reading payload plus its id.
    readings = [contract.decode_reading(item) for item in items]
    assert readings == [
        contract.Reading(1_760_000_000_000, 7, {"lamp_level": 40.0}),
        contract.Reading(1_760_000_000_001, None, {"lamp_level": 1.0}),
    ]
    too_many = orjson.dumps({"readings": [{"id": "p", "ts": 1, "m": {}}] * (contract.MAX_BATCH_READINGS + 1)})
    for bad, reason in [
        (b"{not json", Reason.MALFORMED_JSON),
        (b'[{"ts": 1, "m": {}}]', Reason.BAD_SHAPE),
        (b'{"readings": {}}', Reason.BAD_SHAPE),
        (b'{"readings": []}', Reason.BAD_SHAPE),
        (too_many, Reason.TOO_LARGE),
    ]:
        with pytest.raises(ContractError) as refused:
            contract.decode_batch(bad)
        assert refused.value.reason is reason, bad[:30]
    for item in [[1], {"ts": 1, "m": {}}, {"id": 5}, {"id": "Not-A-Device"}, {"id": BATCH_DEVICE}]:
        with pytest.raises(ContractError) as refused:
            contract.batch_item_device(item)
        assert refused.value.reason is Reason.BAD_SHAPE


def _message(payload: bytes, topic: str = POLES) -> Message:
    return Message(topic, payload, mid=1, qos=1, received_at=time.time(), generation=0)


def test_a_batch_decodes_into_one_part_per_device_and_bad_items_stay_alone() -> None:
    now = now_ms()
    items = [
        {"id": "p-1", "ts": now - 2000, "seq": 1, "m": {"lamp_level": 10.0}},
        {"id": "p-2", "ts": now, "seq": 9, "m": {"lamp_level": 20.0, "noise_dba": 999.0}},
        {"id": "p-1", "ts": now - 1000, "seq": 2, "m": {"lamp_level": 11.0}},
        {"id": "P 3", "ts": now, "m": {"lamp_level": 1.0}},
        {"id": "p-3", "ts": "yesterday", "m": {"lamp_level": 1.0}},
    ]
    limits = Limits(max_payload_bytes=10_000, future_tolerance_ms=300_000, max_age_ms=86_400_000)
    decoded = decode_message(_message(orjson.dumps({"readings": items})), limits, now)
    assert decoded.device_id is None and not decoded.rows
    assert [(p.device_id, [r.seq for r in p.rows]) for p in decoded.parts] == [
        ("p-1", [1, 2]),
        ("p-2", [9]),
        ("p-3", []),
    ]
    # The item naming no device: dead-lettered by the message itself, with that item only.
    assert [(d.reason, d.device_id, orjson.loads(d.payload)) for d in decoded.dead_letters] == [
        ("bad_shape", None, items[3])
    ]
    p2, p3 = decoded.parts[1], decoded.parts[2]
    assert p2.rows[0].values == {"lamp_level": 20.0}
    assert [(d.reason, d.device_id) for d in p2.dead_letters] == [("out_of_range", "p-2")]
    assert orjson.loads(p2.dead_letters[0].payload) == {"ts": now, "seq": 9, "m": {"noise_dba": 999.0}}
    assert [(d.reason, orjson.loads(d.payload)) for d in p3.dead_letters] == [("bad_timestamp", items[4])]
    assert p3.dead_letters[0].detail.startswith("reading 4: ")
    # The store writes the parts, and the message itself for its own dead letters.
    assert expand([decoded]) == [*decoded.parts, decoded]
    # A part refused as a whole keeps its own items, as a batch, never the other devices'.
    p2.reject(Reason.UNKNOWN_DEVICE, "not registered")
    assert orjson.loads(p2.dead_letters[0].payload) == {"readings": [items[1]]}

    oversize = decode_message(_message(orjson.dumps({"readings": items * 50})), limits, now)
    assert not oversize.parts and [d.reason for d in oversize.dead_letters] == ["too_large"]


# --- the ingest, real broker and database ------------------------------------------------------


def _batch(*items: tuple[str, int, dict[str, float], int | None]) -> bytes:
    return encode_batch(list(items))


def test_batch_of_devices_is_stored_per_device_with_bad_items_dead_lettered_alone(
    settings: Settings, broker: MosquittoBroker
) -> None:
    now = now_ms()
    good = [(f"pole-{i}", now - 1000 + i, {"lamp_level": float(10 * i)}, 1) for i in range(1, 6)]
    bad = ("pole-6", now, {"lamp_level": 300.0}, 1)  # lamp_level is a percentage
    resent = good[0]  # the same device and time twice in one batch: stored once
    later = ("pole-1", now + 500, {"lamp_level": 99.0}, 2)  # store-and-forward: a second reading
    with _running(_with_ingest(settings)) as service:
        _publish(broker, (POLES, _batch(*good, bad, resent, later)))
        assert _await_count(settings, "SELECT count(*) FROM dead_letter", 1) == 1
        assert _await_count(settings, "SELECT count(*) FROM reading_smart_pole", 6) == 6
        rows = _rows(
            settings, "SELECT device_id, seq, lamp_level FROM reading_smart_pole ORDER BY device_id, time"
        )
        assert rows == [("pole-1", 1, 10.0), ("pole-1", 2, 99.0)] + [
            (f"pole-{i}", 1, 10.0 * i) for i in range(2, 6)
        ]
        latest = dict(
            _rows(settings, "SELECT device_id, (metrics->>'lamp_level')::float8 FROM latest_reading")
        )
        assert latest == {"pole-1": 99.0, **{f"pole-{i}": 10.0 * i for i in range(2, 6)}}
        letters = _rows(settings, "SELECT topic, device_id, reason, detail, payload FROM dead_letter")
        assert [(t, d, r) for t, d, r, _, _ in letters] == [(POLES, "pole-6", "out_of_range")]
        assert letters[0][3].startswith("reading 5: ")
        assert orjson.loads(letters[0][4]) == {
            "id": "pole-6",
            "ts": now,
            "seq": 1,
            "m": {"lamp_level": 300.0},
        }
        # Registered from the batch topic; one message each; per-device seq and duplicates.
        # (pole-6 sent nothing valid: like a single-device message, it is not registered.)
        assert sorted(_rows(settings, "SELECT device_id, kind, district FROM devices")) == [
            (f"pole-{i}", "smart_pole", "futian") for i in range(1, 6)
        ]
        counters = eventually(lambda: _rows(settings, _COUNTERS), lambda r: r[0][3] == 1)
        assert counters == [("pole-1", 1, 2, 1)] + [(f"pole-{i}", 1, 1, 0) for i in range(2, 6)]
        # A whole batch sent again (QoS 1 resend): nothing new stored, a duplicate per reading.
        # Its devices are written by the writer lanes in a transaction each (acked once all are).
        _publish(broker, (POLES, _batch(*good)))
        counters = eventually(lambda: _rows(settings, _COUNTERS), lambda r: all(c[1] == 2 for c in r))
        assert [c[1:] for c in counters] == [(2, 2, 2)] + [(2, 1, 1)] * 4
        assert _rows(settings, "SELECT count(*) FROM reading_smart_pole") == [(6,)]
        assert (
            service.metrics.registry.get_sample_value(
                "cityneuron_ingest_dead_letters_total", {"reason": "out_of_range"}
            )
            == 1
        )


def test_batch_items_of_another_district_or_kind_or_unknown_are_dead_lettered_alone(
    settings: Settings, broker: MosquittoBroker
) -> None:
    with psycopg.connect(settings.database.url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO devices (device_id, kind, district) VALUES"
            " ('pole-ok', 'smart_pole', 'futian'), ('pole-luohu', 'smart_pole', 'luohu'),"
            " ('meter-1', 'water_meter', 'futian')"
        )
    now = now_ms()
    payload = _batch(
        ("pole-ok", now, {"lamp_level": 1.0}, 1),
        ("pole-luohu", now, {"lamp_level": 2.0}, 1),
        ("meter-1", now, {"lamp_level": 3.0}, 1),
        ("pole-new", now, {"lamp_level": 4.0}, 1),
    )
    with _running(_with_ingest(settings, auto_register=False)):
        # The same district rule holds for a single-device topic.
        single = (
            "city/futian/smart_pole/pole-luohu/telemetry",
            encode_reading(now - 5, {"lamp_level": 5.0}, 2),
        )
        _publish(broker, (POLES, payload), single)
        assert _await_count(settings, "SELECT count(*) FROM dead_letter", 4) == 4
        assert _await_count(settings, "SELECT count(*) FROM reading_smart_pole", 1) == 1
    assert _rows(settings, "SELECT device_id FROM reading_smart_pole") == [("pole-ok",)]
    letters = sorted(_rows(settings, "SELECT device_id, reason, topic, payload FROM dead_letter"))
    assert [letter[:3] for letter in letters] == [
        ("meter-1", "kind_mismatch", POLES),
        ("pole-luohu", DISTRICT_MISMATCH, POLES),
        ("pole-luohu", DISTRICT_MISMATCH, single[0]),
        ("pole-new", "unknown_device", POLES),
    ]
    # Each refused item keeps its own reading (as a batch of one), not the other devices'.
    assert orjson.loads(letters[0][3]) == {
        "readings": [{"id": "meter-1", "ts": now, "seq": 1, "m": {"lamp_level": 3.0}}]
    }
    assert letters[2][3] == single[1]
    # A refused item is no message of that device: its counters did not move.
    assert _rows(settings, "SELECT device_id, messages FROM device_activity ORDER BY device_id") == [
        ("meter-1", 0),
        ("pole-luohu", 0),
        ("pole-ok", 1),
    ]


def test_a_batch_that_is_not_json_is_dead_lettered_whole(settings: Settings, broker: MosquittoBroker) -> None:
    with _running(_with_ingest(settings)):
        _publish(broker, (POLES, b'{"readings": [{"id": "pole-1", "ts": 1'))
        assert _await_count(settings, "SELECT count(*) FROM dead_letter", 1) == 1
    assert _rows(settings, "SELECT topic, device_id, reason FROM dead_letter") == [
        (POLES, None, "malformed_json")
    ]
    assert _rows(settings, "SELECT count(*) FROM devices") == [(0,)]


# --- the broker ACL --------------------------------------------------------------------------------


def test_only_gateways_of_the_district_publish_batches(
    secure: SecureBroker, database: DatabaseSettings, clients: Callable[..., _Client]
) -> None:
    port = secure.broker.port
    with psycopg.connect(database.url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO devices (device_id, kind, district) VALUES ('pole-luohu-00001', 'smart_pole', 'luohu')"
        )
    mqtt = MqttSettings(port=port, username=INGEST_USER, password=secure.provisioned.password(INGEST_USER))
    settings = Settings(
        mqtt=mqtt,
        database=database,
        ingest={"client_id": f"ingest-{uuid.uuid4().hex[:8]}", "flush_interval_ms": 50, "http_port": 0},
    )
    ts = now_ms()
    with IngestService(settings) as service:
        assert service.wait_ready(15), "ingest (service user) did not subscribe"
        device = clients(port, secure.credentials(POLE_A))
        futian = clients(port, secure.credentials(FUTIAN_GATEWAY.name))
        city = clients(port, secure.credentials(CITY_GATEWAY))
        own = _batch((POLE_A, ts, {"lamp_level": 1.0}, 1))
        # A device speaks only as itself: not even a batch naming only itself.
        assert device.publish(POLES, own) == NOT_AUTHORIZED
        assert futian.publish(batch_topic("luohu", "smart_pole"), own) == NOT_AUTHORIZED
        assert city.publish(batch_topic("luohu", "water_meter"), b"{}") == 0
        # Inside its district, a gateway cannot speak for a device of another district either.
        forged = ("pole-luohu-00001", ts, {"lamp_level": 2.0}, 1)
        assert futian.publish(POLES, _batch((POLE_A, ts + 1, {"lamp_level": 3.0}, 2), forged)) == 0

        def stored() -> list[tuple[str, float]]:
            return _rows(settings, "SELECT device_id, lamp_level FROM reading_smart_pole")

        assert eventually(stored, bool) == [(POLE_A, 3.0)]
        letters = eventually(
            lambda: _rows(settings, "SELECT device_id, reason FROM dead_letter ORDER BY 1"),
            lambda r: len(r) >= 2,
        )
    # The city gateway's empty batch is malformed as a whole; the forged item is refused alone.
    assert letters == [("pole-luohu-00001", DISTRICT_MISMATCH), (None, "bad_shape")]


# --- the load generator ---------------------------------------------------------------------------


def test_load_batches_hold_one_reading_of_several_devices_of_one_place() -> None:
    devices = LoadDevices(build_city("small", seed=7), limit=300)
    factory = MessageFactory(devices, Style.BATCH, 4, t0_ms=1_760_000_000_000)
    messages = factory.build(np.linspace(0, 0.05, 3 * len(factory.groups)))
    seqs: dict[str, list[int]] = {}
    for message in messages:
        parsed = contract.parse_topic(message.topic)
        body = json.loads(message.payload)["readings"]
        ids = [item["id"] for item in body]
        assert parsed.is_batch and 1 <= len(ids) <= 4 and len(set(ids)) == len(ids)
        assert message.reading_devices is not None
        assert ids == [devices.ids[d] for d in message.reading_devices]
        for d in message.reading_devices:
            assert (devices.district_of(d), devices.kind[d]) == (parsed.district, parsed.kind)
        assert message.keys().tolist() == [
            [d, item["ts"]] for d, item in zip(message.reading_devices, body, strict=True)
        ]
        for item in body:
            seqs.setdefault(item["id"], []).append(item["seq"])
    assert max(len(g) for g in factory.groups) == 4
    # Every device took part three times, with its own seq counter.
    assert len(seqs) == 300 and all(s == [0, 1, 2] for s in seqs.values())


def _batch_load_args(settings: Settings, duration_s: int, *extra: str) -> list[str]:
    """200 devices at 100 batches/s of up to 5 readings for ``duration_s``, plus ``extra``."""
    return _args(
        settings,
        *("--devices", "200", "--rate", "100", "--duration", str(duration_s)),
        *("--style", "batch", "--readings-per-message", "5"),
        *extra,
    )


def test_load_run_in_batch_style_reconciles_to_zero_loss(
    settings: Settings,
    ingest: IngestService,
    capsys: pytest.CaptureFixture[str],
) -> None:
    status = main(_batch_load_args(settings, 3, "--keep-devices"))  # kept: their counters are read below
    report = _report(capsys)
    assert status == 0, report
    rec = report["reconciliation"]
    # 300 batches of 1-5 readings each.
    assert 300 < rec["expected"] == report["publish"]["readings_expected"] <= 1500
    assert rec["stored"] == rec["expected"] and rec["missing"] == 0 and rec["dead_lettered"] == 0
    with psycopg.connect(settings.database.url, autocommit=True) as conn:
        gaps, duplicates = conn.execute(
            "SELECT sum(seq_gaps), sum(seq_duplicates) FROM device_activity"
        ).fetchone()  # type: ignore[misc]
    assert (gaps, duplicates) == (0, 0)


def test_load_reconciler_counts_dropped_and_broken_batches(
    settings: Settings,
    ingest: IngestService,
    capsys: pytest.CaptureFixture[str],
) -> None:
    status = main(
        # Dropped readings never arrive: the run waits the whole settle timeout for them.
        _batch_load_args(
            settings,
            2,
            "--inject-drop-every",
            "50",
            "--inject-malformed-every",
            "70",
            "--settle-timeout",
            "5",
        )
    )
    report = _report(capsys)
    assert status == EXIT_FAILED
    rec = report["reconciliation"]
    injected = report["publish"]["injected"]
    assert injected["dropped"] == 4 and injected["malformed"] == 2
    # A dropped batch is missing reading by reading, per device; a broken one is one dead letter.
    assert injected["dropped"] <= rec["missing"] <= 5 * injected["dropped"]
    assert sum(rec["missing_by_device"].values()) == rec["missing"]
    assert rec["dead_letters_by_reason"] == {"malformed_json": injected["malformed"]}
    assert rec["stored"] == rec["expected"] - rec["missing"]
