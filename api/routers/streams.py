"""Live streams: GET /stream (Server-Sent Events) and the WebSocket /ws.

Both push new readings and alert transitions as the API's broker connection receives them
(api.live), never by polling the database, filtered by district, kind, device, metric and event
type. Each client has a bounded queue: a client that falls behind loses its oldest events and
gets a ``missed`` event with how many. Idle streams carry a heartbeat every ``heartbeat_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Annotated, Any, cast

import orjson
from fastapi import APIRouter, Query, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import StreamingResponse

from api import listparams
from api.deps import State
from api.errors import ApiError, BadRequest
from api.live.events import EVENT_TYPES
from api.live.hub import Batch, StreamFilter, Subscriber
from api.routers import ERRORS
from api.state import ApiState
from cityneuron.catalog import KINDS

log = logging.getLogger("cityneuron.api")

router = APIRouter(tags=["streams"])

DEFAULT_HEARTBEAT_S = 15.0
# How long a new stream waits for the broker subscription before saying it is disconnected.
READY_WAIT_S = 2.0
_METRICS = frozenset(m.name for k in KINDS for m in k.metrics)

TypesParam = Annotated[
    list[str] | None,
    Query(description="event types: reading, alert (default both)", examples=["reading,alert"]),
]
DistrictParam = Annotated[
    list[str] | None, Query(description="district slug(s); repeat or comma-separate", examples=["futian"])
]
KindParam = Annotated[list[str] | None, Query(description="device kind(s)", examples=["smart_pole"])]
DeviceParam = Annotated[list[str] | None, Query(description="device id(s)")]
MetricParam = Annotated[
    list[str] | None,
    Query(
        description="metric(s): readings without any of them are skipped, the others keep only these;"
        " alerts are not filtered by metric",
        examples=["pm25,noise_dba"],
    ),
]
HeartbeatParam = Annotated[float, Query(ge=1, le=300, description="seconds between heartbeats when idle")]


def stream_filter(
    types: list[str] | None = None,
    district: list[str] | None = None,
    kind: list[str] | None = None,
    device: list[str] | None = None,
    metric: list[str] | None = None,
) -> StreamFilter:
    """The filter from query parameters (or a WebSocket subscribe message); BadRequest if invalid."""
    type_values = listparams.split_values(types, name="types")
    for value in type_values:
        if value not in EVENT_TYPES:
            raise BadRequest(
                f"unknown event type {value!r}; known: {', '.join(EVENT_TYPES)}", code="bad_type"
            )
    metrics = listparams.split_values(metric, name="metric")
    for value in metrics:
        if value not in _METRICS:
            raise BadRequest(f"no kind has a metric {value!r}", code="unknown_metric")

    def _set(values: tuple[str, ...]) -> frozenset[str] | None:
        return frozenset(values) if values else None

    return StreamFilter(
        types=_set(type_values),
        districts=_set(listparams.districts(district)),
        kinds=_set(listparams.kinds(kind)),
        devices=_set(listparams.split_values(device, name="device")),
        metrics=_set(metrics),
    )


async def _ready(state: ApiState, flt: StreamFilter) -> dict[str, Any]:
    link = state.broker
    connected = link is not None and await link.wait_subscribed(READY_WAIT_S)
    return {"type": "ready", "broker": "connected" if connected else "disconnected", "filter": flt.describe()}


def _now() -> str:
    return datetime.now(tz=UTC).isoformat().replace("+00:00", "Z")


# --- Server-Sent Events -------------------------------------------------------------------------


def _sse(event: str, data: dict[str, Any]) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


async def _sse_events(state: ApiState, flt: StreamFilter, heartbeat_s: float) -> AsyncIterator[bytes]:
    with state.hub.subscribe(flt) as subscriber:
        ready = await _ready(state, flt)
        # retry: how long EventSource waits before reconnecting after a dropped connection.
        yield b"retry: 3000\n" + _sse("ready", ready)
        while True:
            batch = await subscriber.next_batch(heartbeat_s)
            if batch.missed:
                yield _sse("missed", {"type": "missed", "missed": batch.missed})
            if not batch.events and not batch.missed:
                yield f": keepalive {_now()}\n\n".encode()
                continue
            yield b"".join(_sse(e["type"], e) for e in batch.events)


_SSE_DOC = (
    "`text/event-stream`. Events: `ready` (first; broker connection and the filter), `reading`,"
    ' `alert`, `missed` (`{"missed": n}`: events dropped because this client fell behind);'
    " comment lines `: keepalive` when idle."
)


@router.get(
    "/stream",
    response_class=StreamingResponse,
    summary="Live readings and alerts as Server-Sent Events",
    description=_SSE_DOC,
    responses={
        **ERRORS,
        200: {
            "content": {
                "text/event-stream": {
                    "schema": {"type": "string"},
                    "example": 'event: reading\ndata: {"type":"reading","device_id":"pole-futian-00001",'
                    '"kind":"smart_pole","district":"futian","time":"2026-03-01T08:00:00Z","seq":7,'
                    '"metrics":{"pm25":{"value":18.0,"unit":"ug/m3"}}}\n\n',
                }
            },
            "description": "an endless event stream",
        },
    },
)
async def sse_stream(
    request: Request,
    state: State,
    types: TypesParam = None,
    district: DistrictParam = None,
    kind: KindParam = None,
    device: DeviceParam = None,
    metric: MetricParam = None,
    heartbeat_s: HeartbeatParam = DEFAULT_HEARTBEAT_S,
) -> StreamingResponse:
    flt = stream_filter(types, district, kind, device, metric)
    return StreamingResponse(
        _sse_events(state, flt, heartbeat_s),
        media_type="text/event-stream",
        # no-transform and X-Accel-Buffering: proxies must pass events through unbuffered.
        headers={"Cache-Control": "no-cache, no-transform", "X-Accel-Buffering": "no"},
    )


# --- WebSocket ----------------------------------------------------------------------------------

# WebSocket routes have no place in OpenAPI's `paths`: the protocol is published as the
# description of the "streams" tag (api/app.py) and in docs/api.md, from this one text.
WS_PROTOCOL = r"""Live readings and alerts, pushed as the API's broker connection receives them.

**`GET /stream`** is Server-Sent Events (see the operation below).

**`/ws`** is a WebSocket (`ws://host:port/ws`, `wss://` behind TLS) with the same events as JSON
text messages. It is not listed under the paths: OpenAPI cannot describe WebSocket routes.

Connect with the same query parameters as `/stream`: `types` (reading, alert), `district`, `kind`,
`device`, `metric` (each repeated or comma-separated) and `heartbeat_s` (1-300, default 15). When
reads need an API key, send it as `Authorization: Bearer <key>` or `X-API-Key` on the upgrade
request. A bad filter or a refused key closes the connection with code 1008 and the reason.

Server to client, one JSON object per message, `type` says which:

| type | when | body |
|---|---|---|
| `ready` | first message | `{"type": "ready", "broker": "connected" \| "disconnected", "filter": {...}}` |
| `reading` | a device reported | `{"type": "reading", "device_id", "kind", "district", "time", "seq", "metrics": {name: {"value", "unit"}}}` |
| `alert` | an alert opened or closed | `{"type": "alert", "state": "open" \| "closed", "rule", "severity", "device_id", "kind", "district", "time", "value", "detail"}` |
| `missed` | this client fell behind | `{"type": "missed", "missed": n}`: n events were dropped (oldest first) |
| `heartbeat` | idle for `heartbeat_s` | `{"type": "heartbeat", "time"}` |
| `subscribed` | after a subscribe message | `{"type": "subscribed", "filter": {...}}` |
| `pong` | after a ping | `{"type": "pong", "time"}` |
| `error` | a message it could not use | `{"type": "error", "code", "message"}`; the connection stays open |

Client to server (JSON text):

- `{"action": "subscribe", "types": [...], "district": [...], "kind": [...], "device": [...],
  "metric": [...]}` replaces the whole filter (a field may be a string or a list; absent = any);
- `{"action": "ping"}`.

Example: connect to `/ws?district=futian&kind=smart_pole`, receive `ready`, then a `reading` per
pole report; send `{"action": "subscribe", "types": ["alert"]}` to receive only alerts from then on.
"""
OPENAPI_TAG = {"name": "streams", "description": WS_PROTOCOL}

# RFC 6455 section 7.4.1: 1008 policy violation (a bad filter), 1011 unexpected condition.
_CLOSE_POLICY = 1008


def _subscribe_message(raw: Any) -> StreamFilter:
    if not isinstance(raw, dict) or raw.get("action") != "subscribe":
        raise BadRequest('expected {"action": "subscribe", "district": [...], ...}', code="bad_message")

    def _list(name: str) -> list[str] | None:
        value = raw.get(name)
        if value is None:
            return None
        if isinstance(value, str):
            return [value]
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return cast(list[str], value)
        raise BadRequest(f"{name} must be a string or a list of strings", code="bad_message")

    return stream_filter(_list("types"), _list("district"), _list("kind"), _list("device"), _list("metric"))


async def _receive(websocket: WebSocket, subscriber: Subscriber) -> None:
    """Client messages: subscribe (replaces the filter) and ping; returns when the client leaves."""
    while True:
        received = await websocket.receive()
        if received["type"] == "websocket.disconnect":
            return
        text = received.get("text")
        if text is None:
            await websocket.send_json({"type": "error", "code": "bad_message", "message": "send JSON text"})
            continue
        try:
            message = orjson.loads(text)
            if isinstance(message, dict) and message.get("action") == "ping":
                await websocket.send_json({"type": "pong", "time": _now()})
                continue
            flt = _subscribe_message(message)
        except orjson.JSONDecodeError:
            await websocket.send_json({"type": "error", "code": "bad_message", "message": "not JSON"})
            continue
        except ApiError as exc:
            await websocket.send_json({"type": "error", "code": exc.code, "message": exc.message})
            continue
        subscriber.refilter(flt)
        await websocket.send_json({"type": "subscribed", "filter": flt.describe()})


async def _send(websocket: WebSocket, batch: Batch) -> None:
    if batch.missed:
        await websocket.send_json({"type": "missed", "missed": batch.missed})
    if not batch.events and not batch.missed:
        await websocket.send_json({"type": "heartbeat", "time": _now()})
    for event in batch.events:
        await websocket.send_text(orjson.dumps(event).decode())


@router.websocket("/ws", name="live WebSocket")
async def ws_stream(
    websocket: WebSocket,
    types: TypesParam = None,
    district: DistrictParam = None,
    kind: KindParam = None,
    device: DeviceParam = None,
    metric: MetricParam = None,
    heartbeat_s: HeartbeatParam = DEFAULT_HEARTBEAT_S,
) -> None:
    """The protocol is ``WS_PROTOCOL`` above (published in OpenAPI and docs/api.md)."""
    state = cast(ApiState, websocket.app.state.api)
    try:
        flt = stream_filter(types, district, kind, device, metric)
    except ApiError as exc:
        await websocket.close(code=_CLOSE_POLICY, reason=exc.message[:120])
        return
    await websocket.accept()
    with state.hub.subscribe(flt) as subscriber:
        receiver = asyncio.create_task(_receive(websocket, subscriber))
        try:
            await websocket.send_json(await _ready(state, flt))
            while not receiver.done():
                waiter = asyncio.create_task(subscriber.next_batch(heartbeat_s))
                await asyncio.wait({waiter, receiver}, return_when=asyncio.FIRST_COMPLETED)
                if not waiter.done():
                    waiter.cancel()
                    break
                await _send(websocket, waiter.result())
        except (WebSocketDisconnect, RuntimeError):
            pass  # the client went away while we were sending
        finally:
            receiver.cancel()
            with contextlib.suppress(asyncio.CancelledError, WebSocketDisconnect, RuntimeError):
                await receiver
