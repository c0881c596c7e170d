"""POST/GET /devices/{device_id}/commands: downlink commands and their acknowledgement state.

A command is stored first, then published (QoS 1) on the device's ``cmd`` topic; the device's
ack arrives through the API's broker subscription and updates the row (api.live.acks).
"""

from __future__ import annotations

import logging
import uuid
from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Path

from api.cursors import decode_time_key, encode_time_key
from api.deps import Conn, Cursor, PageLimit, State
from api.errors import ApiError, BadRequest, NotFound, device_not_found
from api.live.broker import BrokerUnavailable
from api.models import ErrorBody
from api.models_ops import CommandOut, CommandPage, CommandRequest
from api.queries import commands as queries
from api.routers import ERRORS
from cityneuron import contract
from cityneuron.errors import ContractError

log = logging.getLogger("cityneuron.api")

router = APIRouter(
    prefix="/devices/{device_id}/commands",
    tags=["commands"],
    responses={
        **ERRORS,
        503: {"model": ErrorBody, "description": "database or MQTT broker unavailable"},
    },
)

DeviceId = Annotated[str, Path(description="device id", examples=["pole-futian-00001"])]
_CURSOR = "command"


def _command_id() -> str:
    return f"c-{uuid.uuid4().hex[:16]}"


@router.post(
    "",
    response_model=CommandOut,
    status_code=202,
    summary="Send a command to a device",
    responses={202: {"description": "stored and published; poll GET .../{command_id} for the ack"}},
)
async def send_command(device_id: DeviceId, body: CommandRequest, conn: Conn, state: State) -> CommandOut:
    """Validate the command against the device's kind, store it, publish it on the device's cmd
    topic (QoS 1) and answer 202 with its id; the state is ``pending`` until the device acks."""
    target = await queries.command_target(conn, device_id)
    if target is None:
        raise device_not_found(device_id)
    try:
        args = contract.check_command(target.kind, body.command, body.args)
        topic = contract.device_topic(target.district, target.kind, device_id, contract.CMD)
    except ContractError as exc:
        raise BadRequest(exc.detail, code="invalid_command") from None
    link = state.broker
    if link is None or not link.connected:
        raise BrokerUnavailable("the MQTT broker is unreachable: the command was not sent; try again later")
    command = await queries.create_command(
        conn,
        command_id=_command_id(),
        device_id=device_id,
        command=body.command,
        args=args,
        timeout=timedelta(seconds=state.settings.api.command_timeout_s),
    )
    payload = contract.encode_command(
        command.command_id, body.command, args, int(command.created_at.timestamp() * 1000)
    )
    try:
        await link.publish(topic, payload, qos=1)
    except ApiError as exc:
        await queries.fail_command(conn, command.command_id, f"not sent: {exc.message}")
        raise
    log.info("command %s %s sent to %s", command.command_id, body.command, device_id)
    return command


@router.get("", response_model=CommandPage, summary="Commands sent to a device, newest first")
async def list_commands(
    device_id: DeviceId, conn: Conn, limit: PageLimit, cursor: Cursor = None
) -> CommandPage:
    if await queries.command_target(conn, device_id) is None:
        raise device_not_found(device_id)
    before = decode_time_key(cursor, _CURSOR) if cursor is not None else None
    items, more = await queries.list_commands(conn, device_id, before=before, limit=limit)
    next_cursor = None
    if more and items:
        last = items[-1]
        next_cursor = encode_time_key(_CURSOR, last.created_at, last.command_id)
    return CommandPage(items=items, next_cursor=next_cursor)


@router.get("/{command_id}", response_model=CommandOut, summary="One command and its state")
async def get_command(
    device_id: DeviceId,
    command_id: Annotated[str, Path(description="id returned by POST", examples=["c-3f6c2d0a9b8e4f1a"])],
    conn: Conn,
) -> CommandOut:
    """pending, acked, failed or timed_out (no ack before expires_at)."""
    command = await queries.get_command(conn, device_id, command_id)
    if command is None:
        raise NotFound(f"device {device_id!r} has no command {command_id!r}", code="command_not_found")
    return command
