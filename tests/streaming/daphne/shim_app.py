"""Plain ASGI app that tests/streaming/daphne/test_shim.py runs under a real daphne process.

WebSocket ``/close?code=&reason=`` accepts then closes; ``/frames`` sends ``FRAME_SIZES`` text frames through
``FlowControl.write_text`` interleaved with ASGI sends, then closes; ``/flood?id=&mode=`` sends to a client that does
not read (``mode`` = outbox, wait or ignore: see the ``_flood_*`` functions). HTTP ``/stats`` returns what each flood
connection observed, ``/abort?id=`` makes an ``ignore`` flood abort its connection. ``/inbound?id=&hold=1`` answers
each message with its length, after ``/release?id=`` when held (a consumer that stopped taking messages; with
``hold=close`` the release closes instead, then takes what is left); ``/stats``
shows what its input queue holds. ``SHIM_APP_INSTALL=0`` in the
environment leaves daphne unpatched.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import time
from typing import Any
from urllib.parse import parse_qs

from streaming.daphne import flow_control, inbound, install

if os.environ.get("SHIM_APP_INSTALL", "1") == "1":
    install.install()

FRAME_BYTES = 16 * 1024
OUTBOX_MAX_FRAMES = 256
"""The app's own bounded outbox (4 MiB), as the gateway keeps per client."""
IGNORE_FLOOD_BYTES = 96 * 1024 * 1024
STALL_SECONDS = 0.5
"""In ``wait`` mode, a ``wait_writable()`` that has not returned after this long means the socket is stalled."""
SAFETY_CAP_BYTES = 512 * 1024 * 1024

FRAME_SIZES = (0, 1, 125, 126, 65535, 65536, 300_000)
"""Payload lengths around the frame header's three length encodings."""

STATS: dict[str, dict[str, Any]] = {}
ABORT_REQUESTS: dict[str, asyncio.Event] = collections.defaultdict(asyncio.Event)
RELEASE_REQUESTS: dict[str, asyncio.Event] = collections.defaultdict(asyncio.Event)
INBOUND_PROTOCOLS: dict[str, Any] = {}


async def application(scope: dict[str, Any], receive: Any, send: Any) -> None:
    query = {key: values[0] for key, values in parse_qs(scope["query_string"].decode()).items()}
    if scope["type"] == "http":
        await _http(scope, query, send)
    elif scope["type"] == "websocket":
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept"})
        if scope["path"] == "/close":
            await _close(query, receive, send)
        elif scope["path"] == "/frames":
            await _frames(scope, receive, send)
        elif scope["path"] == "/inbound":
            await _inbound(scope, query, receive, send)
        else:
            await _flood(scope, query, receive, send)


async def _http(scope: dict[str, Any], query: dict[str, str], send: Any) -> None:
    if scope["path"] == "/abort":
        ABORT_REQUESTS[query["id"]].set()
    elif scope["path"] == "/release":
        RELEASE_REQUESTS[query["id"]].set()
    for connection_id, protocol in INBOUND_PROTOCOLS.items():
        STATS[connection_id].update(_input_queue(protocol))
    body = json.dumps(STATS).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


async def _close(query: dict[str, str], receive: Any, send: Any) -> None:
    message: dict[str, Any] = {"type": "websocket.close"}
    if "code" in query:
        message["code"] = int(query["code"])
    if "reason" in query:
        message["reason"] = query["reason"]
    await send(message)
    while (await receive())["type"] != "websocket.disconnect":
        pass


async def _inbound(scope: dict[str, Any], query: dict[str, str], receive: Any, send: Any) -> None:
    flow = flow_control.get_flow_control(scope)
    connection_id = query["id"]
    stats = STATS[connection_id] = {"received_bytes": 0}
    if flow is not None:  # unpatched, the queue cannot be seen
        INBOUND_PROTOCOLS[connection_id] = flow._protocol
    if "hold" in query:
        await RELEASE_REQUESTS[connection_id].wait()
    if query.get("hold") == "close":  # and take nothing until the connection is gone: only the close can resume
        await send({"type": "websocket.close", "code": 1000})
        assert flow is not None
        await flow._protocol.is_closed.asFuture(asyncio.get_running_loop())
    while (message := await receive())["type"] == "websocket.receive":
        size = len(message["bytes"] if message.get("bytes") is not None else message["text"].encode())
        stats["received_bytes"] += size
        await send({"type": "websocket.send", "text": str(size)})
    stats["disconnect_code"] = message["code"]


def frame_payload(size: int) -> bytes:
    """*size* bytes of UTF-8 text with a two-byte character in it when there is room."""
    return (b"\xc3\xa9" + b"x" * (size - 2)) if size >= 2 else b"y" * size


async def _frames(scope: dict[str, Any], receive: Any, send: Any) -> None:
    flow = flow_control.get_flow_control(scope)
    assert flow is not None
    for number, size in enumerate(FRAME_SIZES):
        flow.write_text(frame_payload(size))
        await send({"type": "websocket.send", "text": f"asgi {number}"})
    await send({"type": "websocket.close", "code": 1000})
    flow.write_text(b"after close")  # dropped: the close handshake has begun
    while (await receive())["type"] != "websocket.disconnect":
        pass


async def _flood(scope: dict[str, Any], query: dict[str, str], receive: Any, send: Any) -> None:
    flow = flow_control.get_flow_control(scope)
    assert flow is not None
    stats = STATS[query["id"]] = {"high_water_mark": _high_water_mark(flow), "frame_bytes": FRAME_BYTES, "sent": 0}
    mode = query["mode"]
    if mode == "outbox":
        await _flood_into_outbox(flow, stats, send)
    elif mode == "wait":
        await _flood_and_wait(flow, stats, send)
    else:
        await _flood_ignoring_flow_control(flow, stats, send, ABORT_REQUESTS[query["id"]])
    message = await receive()
    while message["type"] != "websocket.disconnect":
        message = await receive()
    stats["disconnect_code"] = message["code"]
    stats["disconnected_at"] = time.monotonic()


async def _send_frame(send: Any, stats: dict[str, Any], frame: bytes) -> None:
    await send({"type": "websocket.send", "bytes": frame})
    stats["sent"] += len(frame)


async def _flood_into_outbox(flow: flow_control.FlowControl, stats: dict[str, Any], send: Any) -> None:
    """The gateway's pattern: write while writable, else queue; on outbox overflow, ``slow_consumer`` and 1008."""
    outbox: collections.deque[bytes] = collections.deque()
    while stats["sent"] < SAFETY_CAP_BYTES:
        outbox.append(b"x" * FRAME_BYTES)
        while outbox and flow.is_writable():
            frame = outbox.popleft()
            flow.write_text(frame)
            stats["sent"] += len(frame)
        if not flow.is_writable():
            stats.setdefault("first_unwritable_at", stats["sent"])
        if len(outbox) > OUTBOX_MAX_FRAMES:
            stats["buffered_at_overflow"] = _buffered_bytes(flow)
            await send({"type": "websocket.send", "text": '[{"ev":"status","status":"slow_consumer"}]'})
            stats["closed_at"] = time.monotonic()
            await send({"type": "websocket.close", "code": 1008, "reason": "slow consumer"})
            return
        await asyncio.sleep(0)  # a feed yields between ticks, letting the reactor write


async def _flood_and_wait(flow: flow_control.FlowControl, stats: dict[str, Any], send: Any) -> None:
    """Send while writable, else block in ``wait_writable()``, which must return once the client goes away."""
    while stats["sent"] < SAFETY_CAP_BYTES:
        if flow.is_writable():
            await _send_frame(send, stats, b"x" * FRAME_BYTES)
            continue
        try:
            await asyncio.wait_for(flow.wait_writable(), STALL_SECONDS)
        except TimeoutError:
            stats["stalled_at"] = stats["sent"]
            stats["buffered_at_stall"] = _buffered_bytes(flow)
            await flow.wait_writable()
        if flow.is_closed():
            stats["wait_returned_closed"] = True
            return


async def _flood_ignoring_flow_control(
    flow: flow_control.FlowControl, stats: dict[str, Any], send: Any, abort_requested: asyncio.Event
) -> None:
    """The control: push everything into daphne regardless, then abort when the test has measured memory."""
    while stats["sent"] < IGNORE_FLOOD_BYTES:
        await _send_frame(send, stats, b"x" * FRAME_BYTES)
    stats["buffered_after_flood"] = _buffered_bytes(flow)
    stats["writable_after_flood"] = flow.is_writable()
    await abort_requested.wait()
    stats["closed_at"] = time.monotonic()
    _abort(flow)


# What the tests measure below the production API: Twisted's user-space buffer, and a reset the app asks for.

def _buffered_bytes(flow: flow_control.FlowControl) -> int:
    """Bytes queued in the socket transport's user-space buffer (not the kernel's)."""
    transport = flow._socket_transport()
    return len(transport.dataBuffer) - transport.offset + getattr(transport, "_tempDataLen", 0)


def _input_queue(protocol: Any) -> dict[str, Any]:
    """What the application's input queue (the shim's ``ReceiveQueue``) holds now, counted item by item, and
    whether the inbound budget has stopped reading the client."""
    items = [message for message, _ in protocol.application_queue._messages or ()]
    received = [item for item in items if item["type"] == "websocket.receive"]
    return {
        "queue_bytes": sum(len(item.get("bytes") or item.get("text", "").encode()) for item in received),
        "queue_messages": len(received),
        "paused": getattr(inbound.InboundBudget.of(protocol), "paused", None),
    }


def _high_water_mark(flow: flow_control.FlowControl) -> int:
    """Unsent bytes above which the transport pauses its producer, i.e. ``is_writable()`` turns False."""
    return flow._socket_transport().bufferSize


def _abort(flow: flow_control.FlowControl) -> None:
    """Drop the TCP connection now with a reset, discarding what is still buffered."""
    flow._protocol.wasNotCleanReason = "aborted by the application"
    flow._protocol.dropConnection(abort=True)
