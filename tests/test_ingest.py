"""Ingest end to end: hand-written contract payloads through a real Mosquitto into a real PostgreSQL."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import orjson
import psycopg
import pytest
from mqtttest import publisher
from polling import eventually

from cityneuron.contract import encode_reading, encode_readings, encode_status, now_ms
from cityneuron.decode import Decoded, Limits, Message, decode_message
from cityneuron.servers import MosquittoBroker, free_port
from cityneuron.settings import DatabaseSettings, IngestSettings, MqttSettings, Settings
from ingest.errors import IngestError
from ingest.service import IngestService
from ingest.store import ReadingStore

POLE = "city/futian/smart_pole/pole-1/telemetry"
HOUR_MS = 3_600_000


def _with_ingest(settings: Settings, **ingest: Any) -> Settings:
    return settings.model_copy(
        update={"ingest": settings.ingest.model_copy(update={"http_port": 0, **ingest})}
    )


@contextmanager
def _running(settings: Settings) -> Iterator[IngestService]:
    with IngestService(settings) as service:
        assert service.wait_ready(15), "ingest did not become ready"
        yield service


@pytest.fixture
def service(settings: Settings) -> Iterator[IngestService]:
    with _running(_with_ingest(settings)) as running:
        yield running


def _publish(broker: MosquittoBroker, *messages: tuple[str, bytes], retain: bool = False) -> None:
    with publisher(broker.port) as client:
        infos = [client.publish(topic, payload, qos=1, retain=retain) for topic, payload in messages]
        for info in infos:
            info.wait_for_publish(10)
            assert info.is_published()


def _rows(settings: Settings, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(settings.database.url, autocommit=True) as conn:
        return conn.execute(query, params).fetchall()


def _count(settings: Settings, query: str, params: tuple[Any, ...] = ()) -> int:
    return int(_rows(settings, query, params)[0][0])


def _await_count(settings: Settings, query: str, expected: int, params: tuple[Any, ...] = ()) -> int:
    return eventually(lambda: _count(settings, query, params), lambda n: n >= expected)


def _sample(service: IngestService, name: str, **labels: str) -> float:
    return service.metrics.registry.get_sample_value(name, labels) or 0.0


def _await_sample(service: IngestService, name: str, expected: float, **labels: str) -> float:
    # Counters move just after the commit the test saw in the database.
    return eventually(lambda: _sample(service, name, **labels), lambda n: n >= expected)


def test_single_and_array_payloads_are_stored(
    settings: Settings, broker: MosquittoBroker, service: IngestService
) -> None:
    now = now_ms()
    _publish(
        broker,
        (POLE, encode_reading(now, {"lamp_level": 80.0, "noise_dba": 55.5}, seq=7)),
        (
            "city/luohu/water_meter/wm-1/telemetry",
            encode_readings(
                [(now - 2 * HOUR_MS, {"total_m3": 10.0}, 1), (now - HOUR_MS, {"total_m3": 10.5}, 2)]
            ),
        ),
    )
    assert _await_count(settings, "SELECT count(*) FROM reading_water_meter", 2) == 2
    assert _rows(settings, "SELECT device_id, seq, lamp_level, noise_dba FROM reading_smart_pole") == [
        ("pole-1", 7, 80.0, 55.5)
    ]
    assert _rows(settings, "SELECT seq, total_m3 FROM reading_water_meter ORDER BY time") == [
        (1, 10.0),
        (2, 10.5),
    ]
    latest = dict(_rows(settings, "SELECT device_id, metrics FROM latest_reading"))
    assert latest == {"pole-1": {"lamp_level": 80.0, "noise_dba": 55.5}, "wm-1": {"total_m3": 10.5}}
    assert sorted(_rows(settings, "SELECT device_id, kind, district, auto_registered FROM devices")) == [
        ("pole-1", "smart_pole", "futian", True),
        ("wm-1", "water_meter", "luohu", True),
    ]
    assert _await_sample(service, "cityneuron_ingest_readings_stored_total", 2, kind="water_meter") == 2


def test_hypertables_store_readings_once(broker: MosquittoBroker, tsdb_database: DatabaseSettings) -> None:
    settings = Settings(
        mqtt=MqttSettings.model_validate({"port": broker.port}),
        database=tsdb_database,
        ingest=IngestSettings.model_validate(
            {"client_id": "ingest-tsdb", "http_port": 0, "flush_interval_ms": 50}
        ),
    )
    now = now_ms()
    payload = encode_readings([(now - HOUR_MS, {"pm25": 20.0}, 1), (now, {"pm25": 25.0, "o3": 80.0}, 2)])
    topic = "city/baoan/air_station/aq-7/telemetry"
    with _running(settings) as service:
        _publish(broker, (topic, payload))
        _await_count(settings, "SELECT count(*) FROM reading_air_station", 2)
        _publish(broker, (topic, payload))
        eventually(
            lambda: _sample(service, "cityneuron_ingest_duplicates_total", kind="air_station"),
            lambda n: n >= 2,
        )
    assert _rows(settings, "SELECT seq, pm25, o3 FROM reading_air_station ORDER BY time") == [
        (1, 20.0, None),
        (2, 25.0, 80.0),
    ]
    assert _rows(settings, "SELECT seq, metrics FROM latest_reading") == [(2, {"pm25": 25.0, "o3": 80.0})]


def test_resent_reading_is_stored_once_and_counted(
    settings: Settings, broker: MosquittoBroker, service: IngestService
) -> None:
    payload = encode_reading(now_ms(), {"lamp_level": 40.0}, seq=1)
    _publish(broker, (POLE, payload))
    _await_count(settings, "SELECT count(*) FROM reading_smart_pole", 1)
    # A QoS 1 resend in a later batch, and one twice within a single array.
    _publish(broker, (POLE, payload))
    twice = orjson.loads(payload)
    _publish(broker, (POLE, orjson.dumps([twice, twice])))
    duplicates = eventually(
        lambda: _sample(service, "cityneuron_ingest_duplicates_total", kind="smart_pole"), lambda n: n >= 3
    )
    assert duplicates == 3
    assert _count(settings, "SELECT count(*) FROM reading_smart_pole") == 1
    assert _count(settings, "SELECT count(*) FROM dead_letter") == 0


def test_latest_keeps_the_newest_device_timestamp(
    settings: Settings, broker: MosquittoBroker, service: IngestService
) -> None:
    now = now_ms()
    _publish(broker, (POLE, encode_reading(now - HOUR_MS, {"lamp_level": 10.0, "noise_dba": 50.0}, seq=1)))
    _await_count(settings, "SELECT count(*) FROM reading_smart_pole", 1)
    # Newer but partial: merged over the previous metrics.
    _publish(broker, (POLE, encode_reading(now, {"lamp_level": 20.0}, seq=2)))
    _await_count(settings, "SELECT count(*) FROM reading_smart_pole", 2)
    # Late and older: history only.
    _publish(broker, (POLE, encode_reading(now - 2 * HOUR_MS, {"lamp_level": 99.0}, seq=0)))
    _await_count(settings, "SELECT count(*) FROM reading_smart_pole", 3)
    ((seq, metrics, time_ms),) = _rows(
        settings, "SELECT seq, metrics, (extract(epoch FROM time) * 1000)::bigint FROM latest_reading"
    )
    assert (seq, time_ms) == (2, now)
    assert metrics == {"lamp_level": 20.0, "noise_dba": 50.0}


def test_partly_bad_reading_keeps_its_good_metrics(
    settings: Settings, broker: MosquittoBroker, service: IngestService
) -> None:
    metrics = {"lamp_level": 30.0, "noise_dba": 999.0, "bogus": 1.0, "pm25": "high"}
    ts = now_ms()
    payload = orjson.dumps({"ts": ts, "seq": 4, "m": metrics})
    _publish(broker, (POLE, payload))
    _await_count(settings, "SELECT count(*) FROM dead_letter", 3)
    assert _rows(settings, "SELECT lamp_level, noise_dba, pm25 FROM reading_smart_pole") == [
        (30.0, None, None)
    ]
    letters = _rows(settings, "SELECT reason, device_id, payload FROM dead_letter ORDER BY reason")
    assert [(r, d) for r, d, _ in letters] == [
        ("out_of_range", "pole-1"),
        ("unknown_metric", "pole-1"),
        ("wrong_type", "pole-1"),
    ]
    # Each dead letter holds exactly the refused part: stored row + dead letters = the message.
    assert [orjson.loads(bytes(p)) for _, _, p in letters] == [
        {"ts": ts, "seq": 4, "m": {"noise_dba": 999.0}},
        {"ts": ts, "seq": 4, "m": {"bogus": 1.0}},
        {"ts": ts, "seq": 4, "m": {"pm25": "high"}},
    ]


# Each case: topic, payload, the dead-letter reason it must produce.
_BAD_MESSAGES: list[tuple[str, bytes, str]] = [
    ("city/futian/smart_pole/Pole_X/telemetry", b'{"ts": 1, "m": {}}', "bad_topic"),
    ("city/atlantis/smart_pole/pole-9/telemetry", encode_reading(0, {}), "unknown_district"),
    ("city/futian/toaster/pole-9/telemetry", encode_reading(0, {}), "unknown_kind"),
    (POLE, b'{"ts": 1700000000000, "m": {"lamp_level": 1', "malformed_json"),
    # orjson refuses NaN, Infinity and numbers that overflow a double: told apart from bad JSON.
    (POLE, b'{"ts": 1700000000000, "m": {"lamp_level": 1e999}}', "non_finite"),
    (POLE, b'{"ts": 1700000000000, "m": {"lamp_level": NaN}}', "non_finite"),
    (POLE, b'{"ts": 1700000000000, "m": {"lamp_level": -Infinity}}', "non_finite"),
    (POLE, b'{"ts": 1700000000000, "m": {"lamp_level": NaN', "malformed_json"),
    (POLE, b'{"ts": 1700000000000, "m": {"lamp_level": "1"}}', "wrong_type"),
    (POLE, b'{"ts": 1700000000000, "seq": "7", "m": {"lamp_level": 1}}', "bad_seq"),
    (POLE, b'"just a string"', "bad_shape"),
    (POLE, b'{"ts": 1700000000000, "m": [1, 2]}', "bad_shape"),
    (POLE, b'{"ts": "yesterday", "m": {"lamp_level": 1}}', "bad_timestamp"),
    (POLE, b'{"ts": 1700000000, "m": {"lamp_level": 1}}', "bad_timestamp"),
    (POLE, b'{"ts": 1700000000000, "seq": -1, "m": {"lamp_level": 1}}', "bad_seq"),
    (POLE, b'{"ts": 1700000000000, "m": {}}', "no_metrics"),
    (POLE, b'{"ts": 1700000000000, "m": {"lamp_level": true}}', "wrong_type"),
    (POLE, b'{"ts": 1700000000000, "m": {"lamp_level": 101}}', "out_of_range"),
    (POLE, b'{"ts": 1700000000000, "m": {"warp_factor": 9}}', "unknown_metric"),
    ("city/futian/smart_pole/pole-1/status", b'{"online": "yes"}', "bad_shape"),
    ("city/futian/smart_pole/pole-1/status", b'{"online": true, "device": {"lat": NaN}}', "non_finite"),
    ("city/futian/smart_pole/pole-1/status", b'{"online": true, "device": {"lat": "north"}}', "wrong_type"),
]


def test_every_dead_letter_reason_while_good_messages_flow(
    settings: Settings, broker: MosquittoBroker, service: IngestService
) -> None:
    now = now_ms()
    cases = [
        *_BAD_MESSAGES,
        (POLE, encode_reading(now + 3_600_000, {"lamp_level": 1.0}), "future_timestamp"),
        (POLE, encode_reading(now - 3651 * 86_400_000, {"lamp_level": 1.0}), "too_old"),
        (POLE, b'{"ts": %d, "m": {"lamp_level": 1}, "pad": "%s"}' % (now, b"x" * 300_000), "too_large"),
    ]
    messages: list[tuple[str, bytes]] = []
    for index, (topic, payload, _) in enumerate(cases):
        messages.append((topic, payload))
        # A good reading after every bad message: bad input must not hold anything up.
        messages.append((POLE, encode_reading(now - index * 1000, {"lamp_level": float(index)})))
    _publish(broker, *messages)
    _await_count(settings, "SELECT count(*) FROM dead_letter", len(cases))
    assert _await_count(settings, "SELECT count(*) FROM reading_smart_pole", len(cases)) == len(cases)
    stored = _rows(settings, "SELECT topic, reason, payload FROM dead_letter ORDER BY id")
    assert [(t, r) for t, r, _ in stored] == [(t, r) for t, _, r in cases]
    assert [bytes(p) for _, _, p in stored[:-1]] == [p for _, p, _ in cases[:-1]]
    assert len(stored[-1][2]) == settings.ingest.max_payload_bytes
    for reason in {r for _, _, r in cases}:
        expected = sum(1 for _, _, r in cases if r == reason)
        assert (
            _await_sample(service, "cityneuron_ingest_dead_letters_total", expected, reason=reason)
            == expected
        )


def test_bad_item_of_an_array_is_dead_lettered_alone(
    settings: Settings, broker: MosquittoBroker, service: IngestService
) -> None:
    now = now_ms()
    items = [
        {"ts": now - 2000, "m": {"lamp_level": 1}},
        {"ts": "bad", "m": {"lamp_level": 2}},
        {"ts": now, "m": {"lamp_level": 3}},
    ]
    _publish(broker, (POLE, orjson.dumps(items)))
    _await_count(settings, "SELECT count(*) FROM dead_letter", 1)
    assert _await_count(settings, "SELECT count(*) FROM reading_smart_pole", 2) == 2
    ((reason, detail, payload),) = _rows(settings, "SELECT reason, detail, payload FROM dead_letter")
    assert reason == "bad_timestamp"
    assert detail.startswith("reading 1:")
    assert orjson.loads(bytes(payload)) == items[1]


def test_kind_mismatch_is_dead_lettered(
    settings: Settings, broker: MosquittoBroker, service: IngestService
) -> None:
    now = now_ms()
    _publish(broker, (POLE, encode_reading(now, {"lamp_level": 5.0})))
    _await_count(settings, "SELECT count(*) FROM devices", 1)
    _publish(broker, ("city/futian/manhole_cover/pole-1/telemetry", encode_reading(now, {"tilt_deg": 3.0})))
    _await_count(settings, "SELECT count(*) FROM dead_letter", 1)
    assert _rows(settings, "SELECT reason, device_id FROM dead_letter") == [("kind_mismatch", "pole-1")]
    assert _count(settings, "SELECT count(*) FROM reading_manhole_cover") == 0
    assert _rows(settings, "SELECT kind FROM devices") == [("smart_pole",)]


def test_unknown_device_is_dead_lettered_without_auto_registration(
    settings: Settings, broker: MosquittoBroker
) -> None:
    with psycopg.connect(settings.database.url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO devices (device_id, kind, district) VALUES ('pole-2', 'smart_pole', 'futian')"
        )
    with _running(_with_ingest(settings, auto_register=False)):
        now = now_ms()
        _publish(
            broker,
            (POLE, encode_reading(now, {"lamp_level": 5.0})),
            ("city/futian/smart_pole/pole-2/telemetry", encode_reading(now, {"lamp_level": 6.0})),
        )
        _await_count(settings, "SELECT count(*) FROM dead_letter", 1)
        _await_count(settings, "SELECT count(*) FROM reading_smart_pole", 1)
    assert _rows(settings, "SELECT reason, device_id FROM dead_letter") == [("unknown_device", "pole-1")]
    assert _rows(settings, "SELECT device_id, lamp_level FROM reading_smart_pole") == [("pole-2", 6.0)]
    assert _rows(settings, "SELECT device_id FROM devices") == [("pole-2",)]


def test_status_upserts_the_registry(settings: Settings, broker: MosquittoBroker) -> None:
    topic = "city/nanshan/air_station/aq-1/status"
    now = now_ms()
    facts = {"lat": 22.53, "lon": 113.93, "installed": "2024-05-01", "meta": {"vendor": "acme"}}
    # Retained and published before ingest runs: only a non-shared subscription receives it.
    _publish(broker, (topic, encode_status(True, now - 60_000, facts)), retain=True)
    with _running(_with_ingest(settings)):
        registry_row = (
            "SELECT online, lat, lon, installed::text, meta, auto_registered, district FROM devices"
        )
        # A new device is registered just before the batch that carries its status (ingest.store).
        row = eventually(lambda: _rows(settings, registry_row), lambda r: bool(r) and r[0][0] is not None)
        assert row == [(True, 22.53, 113.93, "2024-05-01", {"vendor": "acme"}, True, "nanshan")]
        _publish(broker, (topic, encode_status(False, now, {"meta": {"firmware": "2.1"}})))
        eventually(lambda: _rows(settings, "SELECT online FROM devices"), lambda r: r == [(False,)])
        # An older status arriving late changes nothing.
        _publish(broker, (topic, encode_status(True, now - 30_000, {"lat": 1.0})))
        _publish(broker, ("city/nanshan/air_station/aq-2/status", encode_status(True, now)))
        _await_count(settings, "SELECT count(*) FROM devices", 2)
    ((online, lat, meta, changed_ms),) = _rows(
        settings,
        "SELECT online, lat, meta, (extract(epoch FROM status_changed_at) * 1000)::bigint"
        " FROM devices WHERE device_id = 'aq-1'",
    )
    assert (online, lat, changed_ms) == (False, 22.53, now)
    assert meta == {"vendor": "acme", "firmware": "2.1"}


def test_two_processes_share_telemetry_and_both_apply_status(
    settings: Settings, broker: MosquittoBroker
) -> None:
    now = now_ms()
    readings = [
        (
            f"city/futian/smart_pole/pole-{i % 10}/telemetry",
            encode_reading(now - i * 1000, {"lamp_level": 1.0}),
        )
        for i in range(200)
    ]
    # Scale-out is opt-in: a share group (the default is one process, plain subscription).
    group = "cityneuron-ingest"
    with (
        _running(_with_ingest(settings, client_id="ingest-a", share_group=group)) as first,
        _running(_with_ingest(settings, client_id="ingest-b", share_group=group)) as second,
    ):
        _publish(broker, *readings, ("city/futian/smart_pole/pole-1/status", encode_status(True, now)))
        assert _await_count(settings, "SELECT count(*) FROM reading_smart_pole", 200) == 200
        received = [
            _await_sample(service, "cityneuron_ingest_messages_received_total", 1, channel="telemetry")
            for service in (first, second)
        ]
        statuses = [
            _await_sample(service, "cityneuron_ingest_messages_received_total", 1, channel="status")
            for service in (first, second)
        ]
    assert sum(received) == 200 and min(received) > 0, received
    assert statuses == [1, 1]
    assert _rows(settings, "SELECT online FROM devices WHERE device_id = 'pole-1'") == [(True,)]
    assert _count(settings, "SELECT count(*) FROM dead_letter") == 0


def test_poison_message_is_dead_lettered_and_the_rest_of_its_batch_stored(
    settings: Settings, broker: MosquittoBroker
) -> None:
    # Large flush window: both messages land in one batch. PostgreSQL's jsonb refuses \u0000,
    # which only the database notices.
    with _running(_with_ingest(settings, flush_interval_ms=500)) as service:
        now = now_ms()
        poison = orjson.dumps({"online": True, "ts": now, "device": {"meta": {"note": "a\u0000b"}}})
        _publish(
            broker,
            ("city/futian/smart_pole/pole-1/status", poison),
            (POLE, encode_reading(now, {"lamp_level": 7.0})),
        )
        _await_count(settings, "SELECT count(*) FROM dead_letter", 1)
        _await_count(settings, "SELECT count(*) FROM reading_smart_pole", 1)
        assert _sample(service, "cityneuron_ingest_batch_fallbacks_total") >= 1
        _publish(broker, (POLE, encode_reading(now + 1000, {"lamp_level": 8.0})))
        assert _await_count(settings, "SELECT count(*) FROM reading_smart_pole", 2) == 2
    ((reason, payload),) = _rows(settings, "SELECT reason, payload FROM dead_letter")
    assert (reason, bytes(payload)) == ("store_failed", poison)


def test_a_schema_that_cannot_take_dead_letters_stops_ingest(
    settings: Settings, broker: MosquittoBroker
) -> None:
    with psycopg.connect(settings.database.url, autocommit=True) as conn:
        conn.execute("DROP TABLE dead_letter")
    with _running(_with_ingest(settings)) as service:
        _publish(broker, (POLE, b"not json"))
        failure = eventually(lambda: service.failure, lambda f: f is not None)
        assert isinstance(failure, IngestError)
        assert "cannot write dead letters" in str(failure)
        assert not service.ready()


def test_ready_and_metrics_endpoints(
    settings: Settings, broker: MosquittoBroker, service: IngestService
) -> None:
    base = f"http://127.0.0.1:{service.http_port}"
    assert httpx.get(f"{base}/ready").status_code == 200
    _publish(broker, (POLE, encode_reading(now_ms(), {"lamp_level": 1.0})))
    _await_count(settings, "SELECT count(*) FROM reading_smart_pole", 1)
    _await_sample(service, "cityneuron_ingest_readings_stored_total", 1, kind="smart_pole")
    body = httpx.get(f"{base}/metrics").text
    assert 'cityneuron_ingest_messages_received_total{channel="telemetry"} 1.0' in body
    assert 'cityneuron_ingest_readings_stored_total{kind="smart_pole"} 1.0' in body
    assert "cityneuron_ingest_commit_seconds_bucket" in body
    assert "cityneuron_ingest_batch_messages_count 1.0" in body
    assert "cityneuron_ingest_queue_depth 0.0" in body
    assert httpx.get(f"{base}/nope").status_code == 404


def test_not_ready_without_a_database(settings: Settings) -> None:
    nowhere = settings.database.model_copy(update={"url": f"postgresql://x@127.0.0.1:{free_port()}/x"})
    with IngestService(_with_ingest(settings).model_copy(update={"database": nowhere})) as service:
        assert not service.wait_ready(1.0)
        response = httpx.get(f"http://127.0.0.1:{service.http_port}/ready")
        assert response.status_code == 503


def test_store_falls_back_to_on_conflict_after_a_duplicate_and_counts_every_row_once(
    database: DatabaseSettings,
) -> None:
    """The fast plain insert fails on a resent reading; the batch is then written with ON CONFLICT,
    and so are the next ones of the kind for a while: every batch stores its new rows once."""
    limits = Limits.from_settings(IngestSettings())
    base = now_ms() - 60_000
    topic = "city/futian/smart_pole/pole-futian-00001/telemetry"

    def batch(first: int, count: int) -> list[Decoded]:
        return [
            decode_message(
                Message(topic, encode_reading(base + i, {"lamp_level": 50.0}, i), 1, 1, time.time(), 1),
                limits,
                now_ms(),
            )
            for i in range(first, first + count)
        ]

    store = ReadingStore(database, auto_register=True)
    store.connect()
    try:
        assert store.write(batch(0, 10)).stored["smart_pole"] == 10  # fast path
        resent = store.write(batch(5, 10))  # 5 stored before, 5 new: the fallback
        assert (resent.stored["smart_pole"], resent.duplicates["smart_pole"]) == (5, 5)
        for n in range(20):  # within, then past, the window that skips the fast path
            later = store.write(batch(15 + n, 1))
            assert (later.stored["smart_pole"], later.duplicates["smart_pole"]) == (1, 0)
    finally:
        store.close()
    with psycopg.connect(database.url) as conn:
        rows = conn.execute("SELECT count(*), count(DISTINCT time) FROM reading_smart_pole").fetchone()
    assert rows == (35, 35)
