"""Plain ASGI app that tests/streaming/daphne/test_shutdown.py serves with a real daphne process and stops with SIGTERM.

WebSocket ``/ws?name=&mode=`` accepts and sends ``ready``, then, by ``mode``:

* ``clean``: on ``websocket.disconnect``, spends ``SHUTDOWN_APP_CLEANUP`` seconds cleaning up (as the gateway
  releases its lock), then finishes;
* ``stubborn``: ignores ``websocket.disconnect`` and runs until it is cancelled;
* ``late``: accepts only once the file ``SHUTDOWN_APP_ACCEPT`` names exists (the test creates it when the drain has
  begun), then behaves as ``clean``.

Each step is appended to the JSON-lines file ``SHUTDOWN_APP_RECORD`` names, in order: ``connect``, ``disconnect``
(with the code), ``finished`` or ``cancelled``, and ``hook`` from the hook registered (twice) with
``run_after_drain``, with the number of instances still running then. HTTP answers 200. ``SHUTDOWN_APP_TIMEOUT``
configures Django with that ``GATEWAY_SHUTDOWN_TIMEOUT``; without it Django stays unconfigured.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from streaming.daphne import install, shutdown

install.install()

if "SHUTDOWN_APP_TIMEOUT" in os.environ:
    from django.conf import settings

    settings.configure(GATEWAY_SHUTDOWN_TIMEOUT=float(os.environ["SHUTDOWN_APP_TIMEOUT"]))

CLEANUP_SECONDS = float(os.environ["SHUTDOWN_APP_CLEANUP"])
ACCEPT_POLL_SECONDS = 0.02
RECORD = Path(os.environ["SHUTDOWN_APP_RECORD"])
ACCEPT_FLAG = Path(os.environ.get("SHUTDOWN_APP_ACCEPT", "/nonexistent"))

running = 0


def record(event: str, **details: Any) -> None:
    with RECORD.open("a") as file:
        file.write(json.dumps({"event": event, **details}) + "\n")


async def after_drain() -> None:
    record("hook", running=running)


shutdown.run_after_drain(after_drain)
shutdown.run_after_drain(after_drain)  # registered twice, runs once


async def application(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        return
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})
        return
    global running
    running += 1
    query = {key: values[0] for key, values in parse_qs(scope["query_string"].decode()).items()}
    name, mode = query["name"], query["mode"]
    try:
        assert (await receive())["type"] == "websocket.connect"
        record("connect", name=name)
        if mode == "late":
            while not ACCEPT_FLAG.exists():
                await asyncio.sleep(ACCEPT_POLL_SECONDS)
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": "ready"})
        if mode == "stubborn":
            await asyncio.Event().wait()
        message = await receive()
        while message["type"] != "websocket.disconnect":
            message = await receive()
        record("disconnect", name=name, code=message["code"])
        await asyncio.sleep(CLEANUP_SECONDS)
        record("finished", name=name)
    except asyncio.CancelledError:
        record("cancelled", name=name)
        raise
    finally:
        running -= 1
