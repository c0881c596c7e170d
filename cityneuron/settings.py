"""Settings for every service: one pydantic-settings object, built once in ``main`` and passed down.

Environment variables use the prefix ``CITYNEURON_`` and ``__`` between levels, for example
``CITYNEURON_MQTT__PORT=1884`` or ``CITYNEURON_DATABASE__URL=postgresql://...``.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class MqttSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = Field(1883, ge=1, le=65535)
    username: str | None = None
    password: str | None = None
    tls_ca_file: Path | None = None
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


class IngestSettings(BaseModel):
    share_group: str = "cityneuron-ingest"
    client_id: str = "cityneuron-ingest-1"
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


class StackSettings(BaseModel):
    """``cityneuron up``: where the local stack keeps its data and which ports it uses."""

    home: Path = Path(".cityneuron")
    postgres_port: int = Field(55432, ge=1, le=65535)
    postgres_bin_dir: Path | None = None
    mosquitto_bin: Path | None = None
    run_simulator: bool = True


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CITYNEURON_", env_nested_delimiter="__", extra="ignore")

    log_level: str = "INFO"
    mqtt: MqttSettings = MqttSettings()
    database: DatabaseSettings = DatabaseSettings()
    ingest: IngestSettings = IngestSettings()
    api: ApiSettings = ApiSettings()
    simulator: SimulatorSettings = SimulatorSettings()
    stack: StackSettings = StackSettings()
