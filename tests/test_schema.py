"""db init: idempotent, versioned, catalog-driven, on both storage paths."""

from __future__ import annotations

import psycopg
import pytest

from cityneuron.catalog import KINDS
from cityneuron.schema import (
    SCHEMA_VERSION,
    SchemaError,
    database_info,
    init_schema,
    schema_version,
)
from cityneuron.settings import DatabaseSettings


def _columns(conn: psycopg.Connection, table: str) -> list[str]:
    rows = conn.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_name = %s ORDER BY ordinal_position",
        (table,),
    ).fetchall()
    return [r[0] for r in rows]


def test_one_wide_table_per_kind_with_catalog_columns(any_database: DatabaseSettings) -> None:
    with psycopg.connect(any_database.url) as conn:
        for kind in KINDS:
            assert _columns(conn, kind.table) == [
                "time",
                "device_id",
                "seq",
                "received_at",
                *kind.metric_names,
            ]
        assert schema_version(conn) == SCHEMA_VERSION


def test_init_is_idempotent(any_database: DatabaseSettings) -> None:
    with psycopg.connect(any_database.url) as conn:
        conn.execute("INSERT INTO reading_air_station (time, device_id, pm25) VALUES (now(), 'aq-1', 10)")
        conn.commit()
    init_schema(any_database)
    init_schema(any_database)
    with psycopg.connect(any_database.url) as conn:
        assert conn.execute("SELECT count(*) FROM reading_air_station").fetchone() == (1,)
        assert conn.execute("SELECT count(*) FROM schema_version").fetchone() == (SCHEMA_VERSION,)


def test_unique_device_time(database: DatabaseSettings) -> None:
    with psycopg.connect(database.url) as conn:
        conn.execute(
            "INSERT INTO reading_air_station (time, device_id, pm25) VALUES ('2026-01-01Z', 'aq-1', 10)"
        )
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute(
                "INSERT INTO reading_air_station (time, device_id, pm25) VALUES ('2026-01-01Z', 'aq-1', 11)"
            )


def test_newer_database_is_refused(database: DatabaseSettings) -> None:
    with psycopg.connect(database.url) as conn:
        conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (SCHEMA_VERSION + 1,))
        conn.commit()
    with pytest.raises(SchemaError, match="newer than this code"):
        init_schema(database)


def test_a_new_catalog_metric_is_migrated(
    database: DatabaseSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cityneuron import catalog, schema

    hydro = catalog.KIND_BY_NAME["hydrology_station"]
    extended = catalog.Kind(
        hydro.name,
        hydro.title,
        hydro.interval_s,
        (*hydro.metrics, catalog.Metric("flow_m3s", "m3/s", 0, 1e5, "discharge")),
    )
    monkeypatch.setattr(schema, "KINDS", tuple(extended if k.name == hydro.name else k for k in KINDS))
    init_schema(database)
    with psycopg.connect(database.url) as conn:
        assert "flow_m3s" in _columns(conn, "reading_hydrology_station")
        row = conn.execute("SELECT metrics FROM kind_schema WHERE kind = 'hydrology_station'").fetchone()
        assert row is not None and "flow_m3s" in row[0]


@pytest.mark.timescaledb
def test_timescaledb_objects(tsdb_database: DatabaseSettings) -> None:
    with psycopg.connect(tsdb_database.url) as conn:
        assert database_info(conn).has_timescaledb
        hypertables = {
            r[0] for r in conn.execute("SELECT hypertable_name FROM timescaledb_information.hypertables")
        }
        assert {k.table for k in KINDS} <= hypertables
        caggs = {
            r[0] for r in conn.execute("SELECT view_name FROM timescaledb_information.continuous_aggregates")
        }
        assert {f"{k.table}_1h" for k in KINDS} | {f"{k.table}_1d" for k in KINDS} <= caggs
        jobs = {r[0] for r in conn.execute("SELECT proc_name FROM timescaledb_information.jobs")}
        assert {"policy_compression", "policy_refresh_continuous_aggregate"} <= jobs
