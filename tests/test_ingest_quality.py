"""Data-quality accounting: seq gaps/duplicates/reorders per device, liveness (silent devices),
the retention window, unknown metrics; real Mosquitto, PostgreSQL and ingest."""

from __future__ import annotations

import orjson
import psycopg
from polling import eventually
from test_ingest import (
    POLE,
    _await_count,
    _await_sample,
    _publish,
    _rows,
    _running,
    _sample,
    _with_ingest,
)

from cityneuron.contract import encode_reading, encode_status, now_ms
from cityneuron.servers import MosquittoBroker
from cityneuron.settings import Settings

DAY_MS = 86_400_000
_COUNTERS = "SELECT messages, seq_max, seq_gaps, seq_duplicates, seq_reordered FROM device_activity WHERE device_id = %s"


def test_seq_gaps_duplicates_reorders_and_restarts_per_device(
    settings: Settings, broker: MosquittoBroker
) -> None:
    t0 = now_ms() - 60_000
    pole2 = "city/futian/smart_pole/pole-2/telemetry"
    sent = [
        (POLE, encode_reading(t0, {"lamp_level": 1.0}, seq=1)),
        (POLE, encode_reading(t0 + 1000, {"lamp_level": 2.0}, seq=2)),
        (POLE, encode_reading(t0 + 4000, {"lamp_level": 5.0}, seq=5)),  # 3 and 4 missing: 2 gaps
        (POLE, encode_reading(t0 + 2000, {"lamp_level": 3.0}, seq=3)),  # late: fills a gap
        (POLE, encode_reading(t0 + 1000, {"lamp_level": 2.0}, seq=2)),  # resent: duplicate
        (POLE, encode_reading(t0 + 10_000, {"lamp_level": 9.0}, seq=0)),  # reboot: counter restarts
        (POLE, encode_reading(t0 + 11_000, {"lamp_level": 9.5}, seq=1)),
        (POLE, encode_reading(t0 + 12_000, {"lamp_level": 9.9})),  # no seq: counted as a message only
        (pole2, encode_reading(t0, {"lamp_level": 1.0}, seq=100)),
        (pole2, encode_reading(t0 + 1000, {"lamp_level": 1.0}, seq=101)),
    ]
    with _running(_with_ingest(settings)) as service:
        # One message at a time, so the counters cross batch boundaries as well.
        for topic, payload in sent[:3]:
            _publish(broker, (topic, payload))
            _await_sample(service, "cityneuron_ingest_batch_messages_count", 1)
        _publish(broker, *sent[3:])
        _await_count(settings, "SELECT count(*) FROM reading_smart_pole", 9)
        _await_sample(service, "cityneuron_ingest_duplicates_total", 1, kind="smart_pole")
        counters = eventually(lambda: _rows(settings, _COUNTERS, ("pole-1",)), lambda r: r[0][0] == 8)
        assert counters == [(8, 1, 1, 1, 1)]
        assert _rows(settings, _COUNTERS, ("pole-2",)) == [(2, 101, 0, 0, 0)]
        assert _sample(service, "cityneuron_ingest_seq_gaps_total", kind="smart_pole") == 2
        assert _sample(service, "cityneuron_ingest_seq_gaps_filled_total", kind="smart_pole") == 1
        assert _sample(service, "cityneuron_ingest_seq_reordered_total", kind="smart_pole") == 1
        assert _sample(service, "cityneuron_ingest_seq_restarts_total", kind="smart_pole") == 1
        assert _sample(service, "cityneuron_ingest_lag_seconds_count") == 9
    # Late data went to history; latest kept the newest device timestamp.
    ((latest_ms, metrics),) = _rows(
        settings,
        "SELECT (extract(epoch FROM time) * 1000)::bigint, metrics FROM latest_reading WHERE device_id = 'pole-1'",
    )
    assert (latest_ms, metrics) == (t0 + 12_000, {"lamp_level": 9.9})
    ((last_seen_age,),) = _rows(
        settings,
        "SELECT extract(epoch FROM now() - last_seen_at) FROM device_activity WHERE device_id = 'pole-1'",
    )
    assert 0 <= last_seen_age < 60


def test_unknown_metric_stores_the_known_ones_and_dead_letters_the_rest(
    settings: Settings, broker: MosquittoBroker
) -> None:
    ts = now_ms()
    payload = orjson.dumps({"ts": ts, "seq": 3, "m": {"lamp_level": 42.0, "lamp_temp_c": 61.5}})
    with _running(_with_ingest(settings)) as service:
        _publish(broker, (POLE, payload))
        _await_count(settings, "SELECT count(*) FROM dead_letter", 1)
        _await_sample(service, "cityneuron_ingest_dead_letters_total", 1, reason="unknown_metric")
    assert _rows(settings, "SELECT seq, lamp_level FROM reading_smart_pole") == [(3, 42.0)]
    ((reason, detail, stored),) = _rows(settings, "SELECT reason, detail, payload FROM dead_letter")
    assert reason == "unknown_metric" and "lamp_temp_c" in detail
    assert orjson.loads(bytes(stored)) == {"ts": ts, "seq": 3, "m": {"lamp_temp_c": 61.5}}


def test_too_old_follows_the_database_retention_window(settings: Settings, broker: MosquittoBroker) -> None:
    database = settings.database.model_copy(update={"retention": "30 days"})
    now = now_ms()
    with _running(_with_ingest(settings.model_copy(update={"database": database}))) as service:
        _publish(
            broker,
            (POLE, encode_reading(now - 31 * DAY_MS, {"lamp_level": 1.0})),
            (POLE, encode_reading(now - 29 * DAY_MS, {"lamp_level": 2.0})),
        )
        _await_count(settings, "SELECT count(*) FROM dead_letter", 1)
        _await_count(settings, "SELECT count(*) FROM reading_smart_pole", 1)
        assert _await_sample(service, "cityneuron_ingest_dead_letters_total", 1, reason="too_old") == 1
    assert _rows(settings, "SELECT lamp_level FROM reading_smart_pole") == [(2.0,)]
    ((detail,),) = _rows(settings, "SELECT detail FROM dead_letter WHERE reason = 'too_old'")
    assert "retention window 30 days" in detail


def test_silent_devices_are_counted_and_alerted(settings: Settings, broker: MosquittoBroker) -> None:
    # 0.1 x the catalog interval: a smart pole (60 s) is silent after 6 s, a manhole cover
    # (1800 s) after 3 minutes.
    quick = _with_ingest(settings, silent_after_intervals=0.1, silent_check_interval_s=0.2)
    manhole = "city/futian/manhole_cover/mh-1/telemetry"
    alert_row = "SELECT device_id, closed_at IS NULL FROM alerts WHERE rule = 'device_silent' ORDER BY id"
    with psycopg.connect(settings.database.url, autocommit=True) as conn:
        # Registered but never heard from: "unknown", not silent (the API's rule too).
        conn.execute(
            "INSERT INTO devices (device_id, kind, district) VALUES ('pole-0', 'smart_pole', 'futian')"
        )
    with _running(quick) as service:
        _publish(
            broker,
            (POLE, encode_reading(now_ms(), {"lamp_level": 1.0})),
            (manhole, encode_reading(now_ms(), {"tilt_deg": 1.0})),
            # A retained "online" from long ago is no sign of life now.
            ("city/futian/smart_pole/pole-9/status", encode_status(True, now_ms() - 3_600_000)),
        )
        _await_count(settings, "SELECT count(*) FROM devices", 4)
        silent = eventually(
            lambda: _sample(service, "cityneuron_ingest_devices_silent", kind="smart_pole"),
            lambda n: n == 2,
            timeout_s=15,
        )
        assert silent == 2
        assert _sample(service, "cityneuron_ingest_devices_silent", kind="manhole_cover") == 0
        rows = eventually(lambda: _rows(settings, alert_row), lambda r: len(r) == 2)
        assert sorted(rows) == [("pole-1", True), ("pole-9", True)]
        # pole-1 speaks again and pole-9 says it is going offline: both alerts close, once.
        _publish(
            broker,
            (POLE, encode_reading(now_ms(), {"lamp_level": 2.0})),
            ("city/futian/smart_pole/pole-9/status", encode_status(False, now_ms())),
        )
        rows = eventually(lambda: _rows(settings, alert_row), lambda r: not any(is_open for _, is_open in r))
        assert sorted(rows) == [("pole-1", False), ("pole-9", False)]
        assert _await_sample(service, "cityneuron_ingest_alerts_closed_total", 2, rule="device_silent") == 2
        assert _sample(service, "cityneuron_ingest_alerts_opened_total", rule="device_silent") == 2
    ((silence_s, closed_after_open),) = _rows(
        settings,
        "SELECT close_value, closed_at >= opened_at FROM alerts WHERE device_id = 'pole-1'",
    )
    assert silence_s >= 6 and closed_after_open


def test_offline_status_and_last_will_do_not_count_as_seen(
    settings: Settings, broker: MosquittoBroker
) -> None:
    topic = "city/futian/smart_pole/pole-1/status"
    with _running(_with_ingest(settings)):
        _publish(broker, (topic, encode_status(False, now_ms())))
        eventually(lambda: _rows(settings, "SELECT online FROM devices"), lambda r: r == [(False,)])
    with psycopg.connect(settings.database.url) as conn:
        assert conn.execute("SELECT last_seen_at, messages FROM device_activity").fetchall() == [(None, 0)]
