"""Settings for every service: one pydantic-settings object, built once in ``main`` and passed down.

Environment variables use the prefix ``CITYNEURON_`` and ``__`` between levels, for example
``CITYNEURON_MQTT__PORT=1884`` or ``CITYNEURON_DATABASE__URL=postgresql://...``.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class MqttSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = Field(1883, ge=1, le=65535)
    username: str | None = None
    password: str | None = None
    # TLS: verify the broker against this CA; a client certificate is optional (devices).
    tls_ca_file: Path | None = None
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    keepalive_s: int = Field(30, ge=5)
    connect_timeout_s: float = Field(10.0, gt=0)
    reconnect_max_delay_s: float = Field(30.0, gt=0)


class DatabaseSettings(BaseModel):
    url: str = "postgresql://cityneuron@127.0.0.1:5432/cityneuron"
    connect_timeout_s: float = Field(5.0, gt=0)
    pool_min_size: int = Field(1, ge=0)
    pool_max_size: int = Field(8, ge=1)
    # TimescaleDB policies; ignored on plain PostgreSQL.
    chunk_interval: str = "1 day"
    compress_after: str = "7 days"
    retention: str | None = Field(None, description="drop raw readings older than this, e.g. '365 days'")
    # The two ordinary tables that grow with what happens (cityneuron.table_retention), applied
    # with the readings' retention by `cityneuron db maintain` and periodically by ingest.
    dead_letter_retention: str | None = Field(
        "30 days",
        description="delete dead letters received longer ago than this (a PostgreSQL interval); when"
        " `retention` is set and shorter, it applies instead: a too_old dead letter of readings the"
        " retention already dropped is worth nothing after that time. None: kept as long as `retention`"
        " (for good without one)",
    )
    closed_alert_retention: str | None = Field(
        "365 days",
        description="delete alerts closed longer ago than this (a PostgreSQL interval), but never sooner"
        " than `retention`: an alert is kept as long as the readings it explains. Open alerts are never"
        " deleted. None: closed alerts are kept for good",
    )


class IngestSettings(BaseModel):
    # Empty: one ingest process with a plain subscription, which survives a broker restart. A group
    # name spreads telemetry over several processes ($share/<group>/...), but Mosquitto 2.0 does
    # not persist shared subscriptions: readings arriving after a broker restart, before ingest
    # subscribes again, are acknowledged and lost (docs/architecture.md).
    share_group: str = ""
    client_id: str = "cityneuron-ingest-1"
    # Database connections writing at once. Each batch is split by device between them (a device
    # always to the same one), and acked once all have committed their part.
    writers: int = Field(2, ge=1, le=16)
    batch_max_messages: int = Field(2000, ge=1)
    flush_interval_ms: int = Field(100, ge=1)
    queue_max_messages: int = Field(20_000, ge=1)
    # MQTT 5 receive maximum: how many unacknowledged QoS 1 messages the broker may send us.
    receive_maximum: int = Field(4000, ge=1, le=65535)
    max_payload_bytes: int = Field(256 * 1024, ge=64)
    auto_register: bool = True
    future_tolerance_s: int = Field(300, ge=0)
    max_age_days: int = Field(3650, ge=1)
    db_retry_max_delay_s: float = Field(5.0, gt=0)
    # Alert rules (docs/alerts.md); None uses the defaults shipped with the ingest.
    rules_file: Path | None = None
    publish_alerts: bool = True
    # A device is "silent" when nothing arrived for this many times its reporting interval.
    silent_after_intervals: float = Field(3.0, gt=0)
    silent_check_interval_s: float = Field(30.0, gt=0)
    # How often ingest deletes the dead letters and closed alerts past their retention
    # (database.dead_letter_retention, closed_alert_retention); 0: never (cron `db maintain`).
    table_retention_interval_s: float = Field(60.0, ge=0)
    # Prometheus /metrics and the /ready probe used by compose and `cityneuron up`.
    http_host: str = "127.0.0.1"
    http_port: int = Field(9108, ge=0, le=65535)


class ApiSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    max_buckets: int = Field(5000, ge=1)
    max_page_size: int = Field(1000, ge=1)
    default_page_size: int = Field(100, ge=1)
    cors_origins: list[str] = Field(default_factory=list)
    # API keys (issue 7): reads open by default in the local testbed, writes always need a key.
    read_requires_key: bool = False
    rate_limit_per_s: float = Field(50.0, gt=0)
    rate_limit_burst: int = Field(200, ge=1)
    max_request_bytes: int = Field(64 * 1024, ge=1024)
    command_timeout_s: float = Field(30.0, gt=0)
    # Uvicorn worker processes; each has its own pool, rate-limit buckets and view cache.
    workers: int = Field(1, ge=1)
    # District summary, city overview and the city views without `at` (AQI, water quality, rain)
    # are shared between polls, never served older than this.
    shared_view_max_age_ms: int = Field(1000, ge=0)
    # A shared view asked for within this long is rendered ahead on a timer (api.viewcache), so a
    # poll never waits for a render; 0: only when a request comes.
    shared_view_keep_warm_s: float = Field(10.0, ge=0)
    # A shared view is rendered at most this share of the time: one whose render takes longer
    # than this share of shared_view_max_age_ms is shared for render time / share instead
    # (api.viewcache; 0: always the max age).
    shared_view_render_share: float = Field(0.1, ge=0, le=1)
    # The latest reading of one device likewise (0: every request reads the database).
    latest_max_age_ms: int = Field(500, ge=0)
    # Devices whose latest reading is kept for that long, per worker.
    latest_cache_devices: int = Field(10_000, ge=1)


class SimulatorSettings(BaseModel):
    seed: int = 42
    preset: str = "small"
    scale: float = Field(1.0, gt=0)
    speed: float = Field(1.0, gt=0)
    connections: int = Field(2, ge=1)
    qos: int = Field(1, ge=0, le=1)
    client_id_prefix: str = "cityneuron-sim"
    # Simulated time never runs ahead of the wall clock (ingest rejects future readings): an
    # accelerated run (speed > 1) without a start begins catch_up_hours ago and then keeps pace.
    start: datetime | None = None
    catch_up_hours: float = Field(24.0, ge=0)
    # gateway: a few connections publish for many devices; device: one connection per device.
    mode: Literal["gateway", "device"] = "gateway"
    # "i/N": this process simulates shard i (0-based) of N; None runs the whole city.
    shard: str | None = None
    scenario_file: Path | None = None
    faults_file: Path | None = None
    fault_log: Path | None = None
    # Secret from which every device's MQTT password is derived (written by `cityneuron broker`).
    device_key_file: Path | None = None

    @field_validator("shard")
    @classmethod
    def _check_shard(cls, value: str | None) -> str | None:
        if value is None:
            return None
        index, sep, count = value.partition("/")
        if not (sep and index.isdigit() and count.isdigit() and 0 <= int(index) < int(count)):
            raise ValueError(f"shard must be 'i/N' with 0 <= i < N, got {value!r}")
        return value

    def shard_index_count(self) -> tuple[int, int]:
        """(index, count) of this process's shard; (0, 1) when unsharded."""
        if self.shard is None:
            return 0, 1
        index, _, count = self.shard.partition("/")
        return int(index), int(count)


class StackSettings(BaseModel):
    """``cityneuron up``: where the local stack keeps its data and which ports it uses."""

    home: Path = Path(".cityneuron")
    postgres_port: int = Field(55432, ge=1, le=65535)
    postgres_bin_dir: Path | None = None
    # None: 256 MB, or for a city of a million devices and more its registry's working set (at
    # most 40 % of RAM; cityneuron.pgmemory).
    postgres_shared_buffers_mb: int | None = Field(None, ge=128)
    mosquitto_bin: Path | None = None
    run_simulator: bool = True
    # Broker security for the local stack: per-device passwords, ACL, TLS listener.
    secure_broker: bool = True
    mqtt_tls_port: int = Field(8883, ge=1, le=65535)
    # Per-device mode (one broker identity and connection per device) only up to this many
    # devices; bigger cities run in gateway mode (docs/scale.md, "Per-device mode").
    per_device_max_devices: int = Field(50_000, ge=1)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CITYNEURON_", env_nested_delimiter="__", extra="ignore")

    log_level: str = "INFO"
    mqtt: MqttSettings = MqttSettings()
    database: DatabaseSettings = DatabaseSettings()
    ingest: IngestSettings = IngestSettings()
    api: ApiSettings = ApiSettings()
    simulator: SimulatorSettings = SimulatorSettings()
    stack: StackSettings = StackSettings()
