"""PostgreSQL's memory for a large city: sized from the city, and the registry read in at start."""

from __future__ import annotations

import shutil
import tempfile
import uuid
from pathlib import Path

import psycopg

from cityneuron import pgmemory
from cityneuron.schema import init_schema
from cityneuron.servers import PostgresServer, free_port
from cityneuron.settings import DatabaseSettings

GIB = 2**30


def test_small_cities_keep_the_default_and_large_ones_get_their_registry() -> None:
    assert pgmemory.shared_buffers_mb(3_050, ram=24 * GIB) == pgmemory.DEFAULT_SHARED_BUFFERS_MB
    assert pgmemory.shared_buffers_mb(102_110, ram=24 * GIB) == pgmemory.DEFAULT_SHARED_BUFFERS_MB
    two_million = pgmemory.shared_buffers_mb(2_000_000, ram=24 * GIB)
    assert 800 < two_million < 1_100  # about 480 bytes a device
    assert 7_000 < pgmemory.shared_buffers_mb(17_105_540, ram=24 * GIB) < 9_000
    # The 1:1 city wants more than 40 % of 16 GiB: capped there.
    assert pgmemory.shared_buffers_mb(17_105_540, ram=16 * GIB) == int(16 * GIB * 0.4) // 2**20
    # A small machine never goes under the default.
    assert pgmemory.shared_buffers_mb(17_105_540, ram=512 * 2**20) == pgmemory.DEFAULT_SHARED_BUFFERS_MB
    # WAL spaced out and compressed for the large city only; an explicit size wins.
    assert pgmemory.server_settings(3_050) == {"shared_buffers": "256MB"}
    large = pgmemory.server_settings(17_105_540, 4096)
    assert large["shared_buffers"] == "4096MB" and large["wal_compression"] == "lz4"
    assert large["max_wal_size"] == "16GB" and large["checkpoint_timeout"] == "30min"


def test_server_takes_its_shared_buffers_and_prewarms_the_registry() -> None:
    root = Path(tempfile.mkdtemp(prefix="cityneuron-pgmem-"))
    root.chmod(0o711)
    try:
        with PostgresServer(
            root / "pg", free_port(), timescaledb=False, settings=pgmemory.server_settings(17_105_540, 160)
        ) as server:
            name = f"t_{uuid.uuid4().hex[:12]}"
            db = DatabaseSettings(url=server.create_database(name))
            init_schema(db)
            with psycopg.connect(db.url, autocommit=True) as conn:
                shown = conn.execute(
                    "SELECT current_setting('shared_buffers'), current_setting('wal_compression'),"
                    " current_setting('checkpoint_timeout')"
                ).fetchone()
                assert shown == ("160MB", "lz4", "30min")
                conn.execute(
                    "INSERT INTO devices (device_id, kind, district)"
                    " SELECT 'pole-futian-' || lpad(g::text, 5, '0'), 'smart_pole', 'futian'"
                    " FROM generate_series(1, 5000) AS g"
                )
                expected = conn.execute(
                    "SELECT sum(pg_relation_size(oid)) / current_setting('block_size')::int FROM pg_class"
                    " WHERE oid IN ('device_activity'::regclass, 'latest_reading'::regclass) OR oid IN"
                    " (SELECT indexrelid FROM pg_index WHERE indrelid IN ('device_activity'::regclass, 'latest_reading'::regclass))"
                ).fetchone()
            assert expected is not None and expected[0] > 0
            # Every block of the two tables and of their indexes is read in.
            assert server.prewarm(name, pgmemory.REGISTRY_TABLES) == expected[0]
    finally:
        shutil.rmtree(root, ignore_errors=True)
