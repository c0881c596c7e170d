"""What every message changes, kept apart from the registry: the ``device_activity`` table.

Each telemetry message moves its device's ``last_seen_at`` and quality counters (``messages``,
``seq_*``). While they lived in ``devices`` (17 M wide rows at 1:1: position, meta, four indexes,
7.7 GB) that update could not be HOT, because ``last_seen_at`` is indexed for the silence
check: every message added an entry to each of the four indexes and dirtied a page of the
whole registry. Measured with single readings, it was the largest of PostgreSQL's per-message
costs (36-40 us of ~110). ``device_activity`` holds one narrow row per device with two indexes;
ingest locks and writes it and never touches ``devices``.

It carries copies of ``kind``, ``district`` and ``online`` so that the device state counts
(:mod:`cityneuron.device_counts`, whose triggers now sit on this table) and the silence check
read one table. ``devices`` stays the one place those are written; triggers keep the copies:
an insert into ``devices`` creates the activity rows, an update of kind, district or online is
copied, a delete or truncate removes them. Triggers rather than a foreign key: a key would check
(and lock) the ``devices`` row of each of 17 M activity rows a registry load inserts.

A bulk loader that knows its devices' ``last_seen_at`` (the simulator's direct registry load,
17 M rows) sets :data:`CALLER_WRITES_ACTIVITY` to ``on`` for its transaction and inserts the
activity rows itself: creating them empty and then updating them would write them twice.
"""

from __future__ import annotations

from cityneuron.device_counts import TRIGGERS as COUNT_TRIGGERS

# Session setting (SET LOCAL) that makes the insert trigger on devices leave the activity rows
# to the caller.
CALLER_WRITES_ACTIVITY = "cityneuron.caller_writes_activity"

# Columns every message may change (ingest's quality accounting, cityneuron.ingest.quality).
COUNTER_COLUMNS = ("last_seen_at", "messages", "seq_max", "seq_gaps", "seq_duplicates", "seq_reordered")

_COPIED = "device_id, kind, district, online"

# Schema version 5 (cityneuron.schema). The DDL is built from this module's constants only.
MIGRATION: tuple[str, ...] = (
    """
    CREATE TABLE device_activity (
        device_id text PRIMARY KEY,
        kind text NOT NULL,
        district text NOT NULL,
        online boolean,
        last_seen_at timestamptz,
        messages bigint NOT NULL DEFAULT 0,
        seq_max bigint,
        seq_gaps bigint NOT NULL DEFAULT 0,
        seq_duplicates bigint NOT NULL DEFAULT 0,
        seq_reordered bigint NOT NULL DEFAULT 0
    ) WITH (fillfactor = 90)
    """,
    # Counts stay as they are: the same devices in the same states, now read from here.
    *(f"DROP TRIGGER {name} ON devices" for name in COUNT_TRIGGERS),
    f"INSERT INTO device_activity ({_COPIED}, {', '.join(COUNTER_COLUMNS)})"  # noqa: S608
    f" SELECT {_COPIED}, {', '.join(COUNTER_COLUMNS)} FROM devices ORDER BY device_id",
    "DROP INDEX devices_kind_last_seen",
    "ALTER TABLE devices " + ", ".join(f"DROP COLUMN {c}" for c in COUNTER_COLUMNS),
    # Silence alerts find the devices that just fell silent by range, not by scanning them all.
    "CREATE INDEX device_activity_kind_last_seen ON device_activity (kind, last_seen_at)",
    "CREATE OR REPLACE FUNCTION device_activity_create() RETURNS trigger LANGUAGE plpgsql AS $fn$"  # noqa: S608
    f" BEGIN IF coalesce(current_setting('{CALLER_WRITES_ACTIVITY}', true), '') <> 'on' THEN"
    f" INSERT INTO device_activity ({_COPIED}) SELECT {_COPIED} FROM new_rows ORDER BY device_id;"
    " END IF; RETURN NULL; END $fn$",
    "CREATE TRIGGER device_activity_create AFTER INSERT ON devices REFERENCING NEW TABLE AS new_rows"
    " FOR EACH STATEMENT EXECUTE FUNCTION device_activity_create()",
    "CREATE OR REPLACE FUNCTION device_activity_copy() RETURNS trigger LANGUAGE plpgsql AS $fn$"
    " BEGIN UPDATE device_activity SET device_id = NEW.device_id, kind = NEW.kind, district = NEW.district,"
    " online = NEW.online WHERE device_id = OLD.device_id; RETURN NULL; END $fn$",
    # Row-level, only when a copied column changed: statuses change online one device at a time.
    "CREATE TRIGGER device_activity_copy AFTER UPDATE OF device_id, kind, district, online ON devices"
    " FOR EACH ROW WHEN (OLD.device_id IS DISTINCT FROM NEW.device_id OR OLD.kind IS DISTINCT FROM NEW.kind"
    " OR OLD.district IS DISTINCT FROM NEW.district OR OLD.online IS DISTINCT FROM NEW.online)"
    " EXECUTE FUNCTION device_activity_copy()",
    "CREATE OR REPLACE FUNCTION device_activity_delete() RETURNS trigger LANGUAGE plpgsql AS $fn$"
    " BEGIN DELETE FROM device_activity AS a USING old_rows AS o WHERE a.device_id = o.device_id;"
    " RETURN NULL; END $fn$",
    "CREATE TRIGGER device_activity_delete AFTER DELETE ON devices REFERENCING OLD TABLE AS old_rows"
    " FOR EACH STATEMENT EXECUTE FUNCTION device_activity_delete()",
    "CREATE OR REPLACE FUNCTION device_activity_truncate() RETURNS trigger LANGUAGE plpgsql AS $fn$"
    " BEGIN TRUNCATE device_activity; RETURN NULL; END $fn$",
    "CREATE TRIGGER device_activity_truncate AFTER TRUNCATE ON devices"
    " FOR EACH STATEMENT EXECUTE FUNCTION device_activity_truncate()",
    *(
        f"CREATE TRIGGER {name} {event} ON device_activity {rest}"
        for name, (event, rest) in COUNT_TRIGGERS.items()
    ),
)
