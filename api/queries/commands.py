"""The ``commands`` table: create, fail, acknowledge, read.

``timed_out`` is derived when reading: a command still pending past ``expires_at`` has timed
out, so no sweeper has to run for the state to be right.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from api.db import AsyncConn
from api.models_ops import CommandOut

_COLUMNS = sql.SQL(
    "command_id, device_id, command, args, created_at, expires_at, acked_at, ok, detail,"
    " CASE WHEN state = 'pending' AND expires_at <= now() THEN 'timed_out' ELSE state END AS state"
)


@dataclass(frozen=True, slots=True)
class Target:
    """What publishing a command to a device needs from the registry."""

    device_id: str
    kind: str
    district: str


async def command_target(conn: AsyncConn, device_id: str) -> Target | None:
    cur = await conn.execute("SELECT kind, district FROM devices WHERE device_id = %s", (device_id,))
    row = await cur.fetchone()
    return Target(device_id, row[0], row[1]) if row is not None else None


async def create_command(
    conn: AsyncConn,
    *,
    command_id: str,
    device_id: str,
    command: str,
    args: dict[str, Any],
    timeout: timedelta,
) -> CommandOut:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            sql.SQL(
                "INSERT INTO commands (command_id, device_id, command, args, expires_at)"
                " VALUES (%s, %s, %s, %s, now() + %s) RETURNING {}"
            ).format(_COLUMNS),
            (command_id, device_id, command, Jsonb(args), timeout),
        )
        row = await cur.fetchone()
    assert row is not None
    return CommandOut.model_validate(row)


async def fail_command(conn: AsyncConn, command_id: str, detail: str) -> None:
    """The command never reached the broker: failed, with why."""
    await conn.execute(
        "UPDATE commands SET state = 'failed', ok = NULL, detail = %s WHERE command_id = %s",
        (detail[:500], command_id),
    )


async def record_ack(conn: AsyncConn, *, command_id: str, device_id: str, ok: bool, detail: str) -> bool:
    """Apply a device's ack to its pending command; False when none matches.

    An ack after ``expires_at`` is recorded (acked_at, ok, detail) but the command stays timed out:
    the caller was told it timed out and may have acted on that.
    """
    cur = await conn.execute(
        "UPDATE commands SET acked_at = now(), ok = %(ok)s, detail = %(detail)s,"
        " state = CASE WHEN now() > expires_at THEN 'timed_out'"
        " WHEN %(ok)s THEN 'acked' ELSE 'failed' END"
        " WHERE command_id = %(id)s AND device_id = %(device)s AND state = 'pending'",
        {"ok": ok, "detail": detail[:500], "id": command_id, "device": device_id},
    )
    return cur.rowcount > 0


async def get_command(conn: AsyncConn, device_id: str, command_id: str) -> CommandOut | None:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            sql.SQL("SELECT {} FROM commands WHERE device_id = %s AND command_id = %s").format(_COLUMNS),
            (device_id, command_id),
        )
        row = await cur.fetchone()
    return CommandOut.model_validate(row) if row is not None else None


async def list_commands(
    conn: AsyncConn, device_id: str, *, before: tuple[datetime, str] | None, limit: int
) -> tuple[list[CommandOut], bool]:
    """The device's commands newest first, after the keyset ``before``; and whether more follow."""
    keyset = sql.SQL(" AND (created_at, command_id) < (%s, %s)" if before is not None else "")
    params: list[Any] = [device_id, *(before or ()), limit + 1]
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            sql.SQL(
                "SELECT {columns} FROM commands WHERE device_id = %s{keyset}"
                " ORDER BY created_at DESC, command_id DESC LIMIT %s"
            ).format(columns=_COLUMNS, keyset=keyset),
            params,
        )
        rows = await cur.fetchall()
    return [CommandOut.model_validate(r) for r in rows[:limit]], len(rows) > limit
