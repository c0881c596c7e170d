"""Command acknowledgements from the broker, written to the ``commands`` table."""

from __future__ import annotations

import asyncio
import logging

from api.db import ApiPool, pooled_connection
from api.errors import ApiError
from api.queries.commands import record_ack
from cityneuron import contract

log = logging.getLogger("cityneuron.api.live")


class AckRecorder:
    """Called on the event loop for each ack; each write runs as its own task."""

    def __init__(self, pool: ApiPool, connect_timeout_s: float) -> None:
        self._pool = pool
        self._timeout_s = connect_timeout_s
        self._tasks: set[asyncio.Task[None]] = set()

    def __call__(self, topic: contract.DeviceTopic, ack: contract.CommandAck) -> None:
        task = asyncio.create_task(self._record(topic.device_id, ack))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _record(self, device_id: str, ack: contract.CommandAck) -> None:
        try:
            async with pooled_connection(self._pool, self._timeout_s) as conn:
                updated = await record_ack(
                    conn,
                    command_id=ack.command_id,
                    device_id=device_id,
                    ok=ack.ok,
                    detail=ack.detail,
                )
        except ApiError as exc:
            log.warning("command ack %s of %s not recorded: %s", ack.command_id, device_id, exc.message)
            return
        if not updated:
            log.info("command ack %s of %s matches no pending command", ack.command_id, device_id)

    async def drain(self) -> None:
        """Wait for the writes in flight (at shutdown)."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
