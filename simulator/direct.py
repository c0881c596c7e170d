"""Seed the database straight from the simulator: binary COPY instead of MQTT (``--direct``).

For months of history or a registry of millions of devices, going through the broker and
the ingest costs hours; COPY costs minutes. Rows go as PostgreSQL binary COPY built with
numpy (fixed-width rows: no Python loop per reading) into a temporary staging table, and from
there into ``devices``, ``reading_<kind>`` and ``latest_reading`` with ``ON CONFLICT``: running
the same load twice stores nothing new. Values are the models' values rounded as on the wire
(``simulator.messages``), under the run's scenario and faults exactly as a broker backfill
applies them (simulator.effects: the same weather, outages and fault episodes, logged to the
same fault log); faults that only exist on the wire (``WIRE_ONLY_FAULTS``: clock errors,
duplicates, late or shuffled delivery, malformed payloads) are left out: a database stores a
reading once, at its true time. What the ingest would refuse (a spike outside the catalog
range, a firmware's unknown metric) is refused here too, by the ingest's own decoder, and
dead-lettered the same way (simulator.directcheck).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import psycopg
from numpy.typing import NDArray
from psycopg import sql

from cityneuron.catalog import DISTRICTS, Kind
from cityneuron.contract import ms_to_datetime, now_ms
from cityneuron.decode import DeadLetter
from cityneuron.device_activity import CALLER_WRITES_ACTIVITY
from cityneuron.schema import SchemaError, init_schema
from cityneuron.settings import DatabaseSettings, IngestSettings, Settings
from simulator.city import ID_PREFIX, City, DeviceTable, build_city
from simulator.directcheck import screen
from simulator.drivers import Drivers
from simulator.effects import Effects, load_effects_spec
from simulator.errors import SimulatorError
from simulator.faultepisodes import WIRE_ONLY_FAULTS
from simulator.kinds import KindModel, build_models
from simulator.progress import ProgressReporter
from simulator.schedule import FROZEN_STEP_MS, KindSchedule, build_schedules

log = logging.getLogger("cityneuron.simulator")

# Readings staged per transaction: large enough to amortise the statements, small enough
# that a failed chunk is cheap to redo and memory stays flat.
CHUNK_ROWS = 200_000
REGISTRY_CHUNK_ROWS = 500_000
# Connections loading the registry at once (the machine this runs on has two cores).
REGISTRY_CONNECTIONS = 2
# Kinds reporting at most hourly are loaded in parallel, before the others.
_PARALLEL_MIN_INTERVAL_S = 3600
_DEFAULT_DECIMALS = 2  # as simulator.messages sends metrics without an explicit precision

# PostgreSQL binary COPY format ("COPY", File Formats, PostgreSQL manual): an 11-byte
# signature, flags and header-extension length, then per tuple an int16 field count and
# (int32 length, big-endian value) per field; timestamps are int64 microseconds and dates
# int32 days since 2000-01-01; -1 ends the stream.
_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + (0).to_bytes(4, "big") + (0).to_bytes(4, "big")
_COPY_TRAILER = (-1).to_bytes(2, "big", signed=True)
_PG_EPOCH_MS = 946_684_800_000
_PG_EPOCH_DAY = 10_957


class DirectLoadError(SimulatorError):
    """The database refused or lost a direct load."""


@dataclass(frozen=True, slots=True)
class DirectSummary:
    """What a direct load did: rows generated and rows that were new to the database."""

    devices: int
    registered: int
    reports: int
    readings: int
    stored: int
    # Dead letters written for what the ingest would have refused (simulator.directcheck).
    refused: int
    elapsed_s: float

    def as_dict(self) -> dict[str, int | float]:
        return asdict(self)


def _copy_stream(columns: list[tuple[str, NDArray[Any]]]) -> bytes:
    """Binary COPY of fixed-width columns: (numpy big-endian dtype, values) per field."""
    fields: list[tuple[str, str]] = [("count", ">i2")]
    for n, (dtype, _) in enumerate(columns):
        fields += [(f"len{n}", ">i4"), (f"val{n}", dtype)]
    rows = len(columns[0][1]) if columns else 0
    records = np.empty(rows, dtype=np.dtype(fields))
    records["count"] = len(columns)
    for n, (dtype, values) in enumerate(columns):
        records[f"len{n}"] = np.dtype(dtype).itemsize
        records[f"val{n}"] = values
    return _COPY_HEADER + records.tobytes() + _COPY_TRAILER


def _device_id_sql(table: DeviceTable) -> sql.Composed:
    """The SQL twin of ``DeviceTable.device_id`` over the staged district and number."""
    return sql.SQL(
        "{prefix} || (%(slugs)s::text[])[district + 1] || '-' || lpad(number::text, {width}, '0')"
    ).format(prefix=sql.Literal(f"{ID_PREFIX[table.kind.name]}-"), width=sql.Literal(table.id_width))


def _slugs() -> list[str]:
    return [d.slug for d in DISTRICTS]


# --- the registry -------------------------------------------------------------------------------

_REGISTRY_STAGE = sql.SQL(
    "CREATE TEMP TABLE IF NOT EXISTS _direct_devices (district integer, number bigint,"
    " lat double precision, lon double precision, installed date, serial bigint, seen_ms bigint)"
    " ON COMMIT DELETE ROWS"
)


def _registry_chunks(rows: slice) -> Iterator[slice]:
    for start in range(rows.start, rows.stop, REGISTRY_CHUNK_ROWS):
        yield slice(start, min(start + REGISTRY_CHUNK_ROWS, rows.stop))


def _last_slots(table: DeviceTable, ts_ms: int) -> NDArray[np.int64]:
    """Each device's most recent report slot at or before ``ts_ms`` (a fleet already running)."""
    latest = build_schedules({table.kind.name: table})[table.kind.name].latest(ts_ms)
    seen = np.empty(len(table), dtype=np.int64)
    seen[latest.rows] = latest.slot_ms
    return seen


@dataclass(frozen=True, slots=True)
class _RegistryPart:
    """Rows ``rows`` (positions in device id order) of one kind's table."""

    table: DeviceTable
    rows: slice


def _whole(tables: Iterable[DeviceTable]) -> list[_RegistryPart]:
    return [_RegistryPart(t, slice(0, len(t))) for t in tables]


def _balanced(tables: Sequence[DeviceTable], connections: int) -> list[list[_RegistryPart]]:
    """``tables`` cut into ``connections`` groups of nearly equal rows (a table may be split at a
    chunk boundary): by whole kinds the 1:1 city's meters split 10 M / 7 M, and the last minutes
    of the load ran on one connection."""
    total = sum(len(t) for t in tables)
    share = -(-total // connections)
    groups: list[list[_RegistryPart]] = [[] for _ in range(connections)]
    group, room = 0, share
    for table in sorted(tables, key=len, reverse=True):
        start = 0
        while start < len(table):
            take = min(len(table) - start, room)
            if take < len(table) - start:  # split at a chunk boundary, never into slivers
                aligned = max(REGISTRY_CHUNK_ROWS, take // REGISTRY_CHUNK_ROWS * REGISTRY_CHUNK_ROWS)
                take = min(aligned, len(table) - start)
            groups[group].append(_RegistryPart(table, slice(start, start + take)))
            start += take
            room -= take
            if room <= 0 and group < connections - 1:
                group, room = group + 1, share
    return [g for g in groups if g]


def _load_registry(
    conn: psycopg.Connection,
    city: City,
    ts_ms: int,
    *,
    running: bool = False,
    parts: Sequence[_RegistryPart] | None = None,
) -> int:
    conn.execute(_REGISTRY_STAGE)
    registered = 0
    # Kinds that report rarely first: loading 17 M meters takes minutes, and a pole last heard
    # from before that would count as silent by the time the simulator publishes.
    for part in parts if parts is not None else _whole(sorted(city, key=lambda t: -t.kind.interval_s)):
        table = part.table
        # seen_ms < 0: never heard from (NULL last_seen_at); else the latest slot as of now.
        seen_all = (
            _last_slots(table, max(ts_ms, now_ms())) if running else np.full(len(table), -1, dtype=np.int64)
        )
        names = {"device_id": _device_id_sql(table), "kind": sql.Literal(table.kind.name)}
        insert = sql.SQL(
            "INSERT INTO devices (device_id, kind, district, lat, lon, installed, meta, online,"
            " status_changed_at)"
            " SELECT {device_id}, {kind}, (%(slugs)s::text[])[district + 1], round(lat::numeric, 6),"
            " round(lon::numeric, 6), installed, jsonb_build_object('serial', serial::text), true,"
            " %(ts)s::timestamptz FROM _direct_devices"
            # A device the ingest registered from its telemetry gets its facts now.
            " ON CONFLICT (device_id) DO UPDATE SET lat = EXCLUDED.lat, lon = EXCLUDED.lon,"
            " installed = EXCLUDED.installed, meta = devices.meta || EXCLUDED.meta"
            " WHERE devices.lat IS NULL AND devices.kind = EXCLUDED.kind"
        ).format(**names)
        # The activity rows with their last_seen_at written once (the insert above leaves them to
        # this statement); a device the ingest registered already has its row and keeps it.
        activity = sql.SQL(
            "INSERT INTO device_activity (device_id, kind, district, online, last_seen_at)"
            " SELECT {device_id}, {kind}, (%(slugs)s::text[])[district + 1], true,"
            " CASE WHEN seen_ms >= 0 THEN to_timestamp(seen_ms / 1000.0) END FROM _direct_devices"
            " ON CONFLICT (device_id) DO NOTHING"
        ).format(**names)
        # In device id order (district slug, then number: ids are zero-padded): the indexes on
        # devices then grow at their right edge instead of taking inserts all over, which at
        # 17 M devices is several times faster (fewer pages touched, fewer full-page WAL images).
        slug_rank = np.argsort(np.argsort(np.array(_slugs())))
        order = np.lexsort((table.number, slug_rank[table.district]))
        for chunk in _registry_chunks(part.rows):
            rows = order[chunk]
            stream = _copy_stream(
                [
                    (">i4", table.district[rows]),
                    (">i8", table.number[rows]),
                    (">f8", table.lat[rows]),
                    (">f8", table.lon[rows]),
                    (">i4", table.installed_day[rows] - _PG_EPOCH_DAY),
                    (">i8", table.serial[rows]),
                    (">i8", seen_all[rows]),
                ]
            )
            with conn.transaction(), conn.cursor() as cur:
                with cur.copy("COPY _direct_devices FROM STDIN (FORMAT BINARY)") as copy:
                    copy.write(stream)
                cur.execute("SELECT set_config(%s, 'on', true)", (CALLER_WRITES_ACTIVITY,))
                cur.execute(insert, {"slugs": _slugs(), "ts": ms_to_datetime(ts_ms)})
                registered += max(cur.rowcount, 0)
                cur.execute(activity, {"slugs": _slugs()})
    return registered


def load_registry(db: DatabaseSettings, city: City, ts_ms: int, *, running: bool = False) -> int:
    """COPY every device of ``city`` into ``devices`` (online since ``ts_ms``); returns how many
    were new. Devices already registered keep their row (facts are filled in where missing).

    ``running``: the city was already running before ``ts_ms`` (a live run that publishes no
    statuses): each device was last heard from at its latest report slot, as the retained
    status it does not get would have said; otherwise devices are new (never heard from)."""
    ordered = sorted(city, key=lambda t: -t.kind.interval_s)
    # The big, rarely-reporting kinds (the meters) go over REGISTRY_CONNECTIONS connections at
    # once: PostgreSQL spends its time in the INSERT (one core per connection); the kinds that
    # report within minutes follow, last, so that they are not silent before publishing starts.
    slow = [t for t in ordered if t.kind.interval_s >= _PARALLEL_MIN_INTERVAL_S]
    groups = _balanced(slow, REGISTRY_CONNECTIONS) or [[]]
    try:
        with _connect(db) as conn:
            with ThreadPoolExecutor(REGISTRY_CONNECTIONS) as pool:
                futures = [
                    pool.submit(_load_group, db, city, ts_ms, running, group) for group in groups[1:] if group
                ]
                registered = _load_registry(conn, city, ts_ms, running=running, parts=groups[0])
                registered += sum(f.result() for f in futures)
            rest = [t for t in ordered if t.kind.interval_s < _PARALLEL_MIN_INTERVAL_S]
            registered += _load_registry(conn, city, ts_ms, running=running, parts=_whole(rest))
    except psycopg.Error as exc:
        raise DirectLoadError(f"loading the device registry failed: {exc}") from exc
    log.info("registry: %d of %d devices were new", registered, city.devices)
    return registered


def _load_group(
    db: DatabaseSettings, city: City, ts_ms: int, running: bool, parts: list[_RegistryPart]
) -> int:
    with psycopg.connect(
        db.url, autocommit=True, connect_timeout=max(1, round(db.connect_timeout_s)),
        application_name="cityneuron-sim-direct",
    ) as conn:  # fmt: skip
        return _load_registry(conn, city, ts_ms, running=running, parts=parts)


# --- readings -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Statements:
    create_stage: sql.Composed
    copy: sql.Composed
    insert: sql.Composed
    latest: sql.Composed
    last_seen: sql.Composed


# Dead letters are staged and inserted unless already there (same arrival, device, reason and
# detail): loading the same range twice writes none twice, as it stores no reading twice.
_DEAD_LETTER_STAGE = sql.SQL(
    "CREATE TEMP TABLE IF NOT EXISTS _direct_dead_letter (received_at timestamptz, topic text,"
    " device_id text, reason text, detail text, payload bytea) ON COMMIT DELETE ROWS"
)
_DEAD_LETTER_INSERT = sql.SQL(
    "INSERT INTO dead_letter (received_at, topic, device_id, reason, detail, payload)"
    " SELECT s.received_at, s.topic, s.device_id, s.reason, s.detail, s.payload FROM _direct_dead_letter s"
    " WHERE NOT EXISTS (SELECT 1 FROM dead_letter d WHERE d.reason = s.reason"
    " AND d.received_at = s.received_at AND d.device_id = s.device_id AND d.detail = s.detail)"
)


def _statements(kind: Kind, table: DeviceTable) -> _Statements:
    stage = sql.Identifier(f"_direct_{kind.name}")
    metrics = [sql.Identifier(m.name) for m in kind.metrics]
    metric_list = sql.SQL(", ").join(metrics)
    # Models mark a sensor a device does not have with NaN; the wire leaves it out: NULL here.
    present = sql.SQL(", ").join(sql.SQL("nullif({m}, 'NaN') AS {m}").format(m=m) for m in metrics)
    rows = sql.SQL("SELECT {device_id} AS device_id, time, seq, received_at, {present} FROM {stage}").format(
        device_id=_device_id_sql(table), present=present, stage=stage
    )
    # A device's newest reading of a chunk is among its reports of the chunk's last interval.
    recent = sql.SQL("{} WHERE time >= %(recent)s").format(rows)
    # jsonb_build_object takes at most 100 arguments (PostgreSQL FUNC_MAX_ARGS): 50 pairs a call.
    pairs = [sql.SQL("{}, {}").format(sql.Literal(m.name), sql.Identifier(m.name)) for m in kind.metrics]
    jsonb = sql.SQL(" || ").join(
        sql.SQL("jsonb_build_object({})").format(sql.SQL(", ").join(pairs[i : i + 50]))
        for i in range(0, len(pairs), 50)
    )
    return _Statements(
        create_stage=sql.SQL(
            "CREATE TEMP TABLE IF NOT EXISTS {stage} (district integer, number bigint, time timestamptz,"
            " seq bigint, received_at timestamptz, {metrics}) ON COMMIT DELETE ROWS"
        ).format(
            stage=stage,
            metrics=sql.SQL(", ").join(sql.SQL("{} double precision").format(m) for m in metrics),
        ),
        copy=sql.SQL("COPY {} FROM STDIN (FORMAT BINARY)").format(stage),
        insert=sql.SQL(
            "INSERT INTO {table} (device_id, time, seq, received_at, {metrics}) {rows}"
            " ON CONFLICT (device_id, time) DO NOTHING"
        ).format(table=sql.Identifier(kind.table), metrics=metric_list, rows=rows),
        latest=sql.SQL(
            "INSERT INTO latest_reading (device_id, kind, time, seq, metrics, received_at)"
            " SELECT DISTINCT ON (device_id) device_id, {kind}, time, seq, jsonb_strip_nulls({jsonb}),"
            " received_at FROM ({recent}) r ORDER BY device_id, time DESC"
            " ON CONFLICT (device_id) DO UPDATE SET kind = EXCLUDED.kind, time = EXCLUDED.time,"
            " seq = EXCLUDED.seq, metrics = latest_reading.metrics || EXCLUDED.metrics,"
            " received_at = EXCLUDED.received_at WHERE EXCLUDED.time > latest_reading.time"
        ).format(kind=sql.Literal(kind.name), jsonb=jsonb, recent=recent),
        last_seen=sql.SQL(
            "UPDATE device_activity d SET last_seen_at = r.time FROM"
            " (SELECT device_id, max(time) AS time FROM ({recent}) s GROUP BY device_id) r"
            " WHERE d.device_id = r.device_id AND (d.last_seen_at IS NULL OR d.last_seen_at < r.time)"
        ).format(recent=recent),
    )


@dataclass(frozen=True, slots=True)
class _Chunk:
    rows: NDArray[np.int64]  # table row of each reading
    time_ms: NDArray[np.int64]
    received_ms: NDArray[np.int64]
    seq: NDArray[np.int64]
    values: dict[str, NDArray[np.float64]]
    reports: int
    until_ms: int
    recent_ms: int  # every device's newest reading of the chunk is at or after this
    dead_letters: list[DeadLetter]


def _window_ms(schedule: KindSchedule) -> int:
    readings_per_ms = schedule.devices * schedule.readings_per_report / schedule.interval_ms
    return max(1_000, int(CHUNK_ROWS / max(readings_per_ms, 1e-12)))


def _chunks(
    model: KindModel,
    schedule: KindSchedule,
    from_ms: int,
    to_ms: int,
    effects: Effects,
    ingest: IngestSettings,
) -> Iterator[_Chunk]:
    """Every stored report with a slot in [from_ms, to_ms), a window at a time, as staged readings."""
    kind = model.kind.name
    window = _window_ms(schedule)
    for after in range(from_ms - 1, to_ms - 1, window):
        until = min(after + window, to_ms - 1)
        due = schedule.due(after, until)
        reports, slots = due.rows, due.slot_ms
        if effects.enabled and len(reports):
            kept = effects.stored(kind, reports, slots)
            reports, slots = reports[kept], slots[kept]
        if not len(reports):
            continue
        width = 1
        if schedule.frozen_readings:
            frozen = schedule.frozen_times(slots)
            width = frozen.shape[1]
            rows = np.repeat(reports, width)
            times = frozen.ravel()
            received = np.repeat(slots, width)
            seq = schedule.frozen_seq(reports, frozen).ravel()
        else:
            rows, times, received = reports, slots, slots
            seq = schedule.seq(reports, slots)
        values = model.step(rows, times)
        if effects.enabled:
            effects.adjust_values(kind, rows, times, values)
        rounded = {
            m.name: np.round(values[m.name], model.decimals.get(m.name, _DEFAULT_DECIMALS))
            for m in model.kind.metrics
        }
        screened = screen(model, ingest, rows, times, received, seq, values, rounded, width)
        refused_whole = not screened.keep.all()
        if refused_whole:
            keep = screened.keep
            rows, times, received, seq = rows[keep], times[keep], received[keep], seq[keep]
            rounded = {name: column[keep] for name, column in rounded.items()}
        # A device that lost reports (outage, dropout, refused) may have its newest reading anywhere.
        lost = len(reports) < len(due) or refused_whole
        newest_from = after + 1 if lost else max(after + 1, until - schedule.interval_ms)
        recent = newest_from - schedule.frozen_readings * FROZEN_STEP_MS
        yield _Chunk(rows, times, received, seq, rounded, len(reports), until, recent, screened.dead_letters)


def _stage_stream(table: DeviceTable, chunk: _Chunk) -> bytes:
    columns: list[tuple[str, NDArray[Any]]] = [
        (">i4", table.district[chunk.rows]),
        (">i8", table.number[chunk.rows]),
        (">i8", (chunk.time_ms - _PG_EPOCH_MS) * 1000),
        (">i8", chunk.seq),
        (">i8", (chunk.received_ms - _PG_EPOCH_MS) * 1000),
    ]
    columns += [(">f8", chunk.values[m.name]) for m in table.kind.metrics]
    return _copy_stream(columns)


def _write_dead_letters(cur: psycopg.Cursor[Any], letters: list[DeadLetter]) -> int:
    """Dead letters of one chunk, skipping those a previous load of the range wrote."""
    if not letters:
        return 0
    with cur.copy("COPY _direct_dead_letter FROM STDIN") as copy:
        for letter in letters:
            copy.write_row(
                (
                    ms_to_datetime(round(letter.received_at * 1000)),
                    letter.topic,
                    letter.device_id,
                    letter.reason,
                    letter.detail,
                    letter.payload,
                )
            )
    cur.execute(_DEAD_LETTER_INSERT)
    return max(cur.rowcount, 0)


def _connect(db: DatabaseSettings) -> psycopg.Connection:
    try:
        init_schema(db)
    except SchemaError as exc:
        raise DirectLoadError(str(exc)) from exc
    try:
        return psycopg.connect(
            db.url,
            autocommit=True,
            connect_timeout=max(1, round(db.connect_timeout_s)),
            application_name="cityneuron-sim-direct",
        )
    except psycopg.Error as exc:
        raise DirectLoadError(f"cannot connect to the database: {exc}") from exc


def backfill_direct(
    settings: Settings, from_ms: int, to_ms: int, *, registry: bool = True, json_progress: bool = False
) -> DirectSummary:
    """COPY the city's history of [from_ms, to_ms) into the database (and its registry first).

    Shards (``settings.simulator.shard``) split the work as they split a live run.
    """
    if to_ms <= from_ms:
        raise SimulatorError("the backfill range is empty: --backfill-to must be after --backfill-from")
    started = time.monotonic()
    options = settings.simulator
    city = build_city(options.preset, options.scale, options.seed, options.shard_index_count())
    # Relative scenario starts count from where a broker backfill's clock starts, 1 ms before
    # the range (simulator.backfill), so both seed the same events.
    spec = load_effects_spec(options, from_ms - 1)
    models = build_models(city, Drivers(city.seed, spec.weather))
    schedules = build_schedules(city.tables)
    effects = Effects(city, models, schedules, spec)
    if spec.faults is not None:
        skipped = sorted(
            {f for kind in city.tables for f in spec.faults.active(kind) if f in WIRE_ONLY_FAULTS}
        )
        if skipped:
            log.info("direct backfill: wire-only faults not stored: %s", ", ".join(skipped))
    effects.log_events(from_ms - 1, to_ms - 1)
    progress = ProgressReporter(city.devices, json_lines=json_progress)
    reports = readings = stored = registered = refused = 0
    try:
        with _connect(settings.database) as conn:
            if registry:
                registered = _load_registry(conn, city, to_ms)
            params = {"slugs": _slugs()}
            conn.execute(_DEAD_LETTER_STAGE)
            for name, table in city.tables.items():
                statements = _statements(table.kind, table)
                conn.execute(statements.create_stage)
                chunks = _chunks(models[name], schedules[name], from_ms, to_ms, effects, settings.ingest)
                for chunk in chunks:
                    stream = _stage_stream(table, chunk)
                    with conn.transaction(), conn.cursor() as cur:
                        with cur.copy(statements.copy) as copy:
                            copy.write(stream)
                        cur.execute(statements.insert, params)
                        stored += max(cur.rowcount, 0)
                        refused += _write_dead_letters(cur, chunk.dead_letters)
                        recent = {**params, "recent": ms_to_datetime(chunk.recent_ms)}
                        cur.execute(statements.latest, recent)
                        cur.execute(statements.last_seen, recent)
                    reports += chunk.reports
                    readings += len(chunk.rows)
                    progress.update(reports, readings, 0, chunk.until_ms, 0.0)
                    effects.flush(chunk.until_ms)
    except psycopg.Error as exc:
        raise DirectLoadError(f"direct backfill failed: {exc}") from exc
    finally:
        effects.flush(to_ms)
        progress.close()
    summary = DirectSummary(
        devices=city.devices,
        registered=registered,
        reports=reports,
        readings=readings,
        stored=stored,
        refused=refused,
        elapsed_s=round(time.monotonic() - started, 3),
    )
    if refused:
        log.warning("direct backfill: %d dead letter(s) for readings the ingest would refuse", refused)
    log.info("direct backfill finished: %s", summary)
    return summary
