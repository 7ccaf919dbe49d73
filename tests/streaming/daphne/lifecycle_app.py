"""Plain ASGI app that tests/streaming/daphne/test_lifecycle.py runs under a real daphne process, shim installed.

WebSocket ``/echo`` echoes until the client leaves; ``/linger`` ignores the disconnect and waits to be cancelled;
``/crash`` raises once accepted; ``/pending`` never accepts. HTTP ``/stats`` reports the server's connections (this
request among them), the sweeps scheduled on the event loop and the lingering instances cancelled; ``/hang`` never
answers.
"""

from __future__ import annotations

import asyncio
import gc
import json
from typing import Any

from daphne.server import Server

from streaming.daphne import install

install.install()

CANCELLED = {"linger": 0}


def _server() -> Server:
    return next(candidate for candidate in gc.get_objects() if isinstance(candidate, Server))


def _scheduled_sweeps() -> list[str]:
    """Names of the daphne sweeps waiting on the event loop (Twisted's asyncio reactor schedules through it)."""
    from twisted.internet import reactor

    names = []
    for call in reactor.getDelayedCalls():  # type: ignore[attr-defined]
        function = getattr(call.func, "__name__", "")
        if function in ("application_checker", "timeout_checker"):
            names.append(function)
    return names


async def application(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "http":
        if scope["path"] == "/hang":
            await asyncio.Event().wait()
        body = json.dumps({
            "connections": len(_server().connections),
            "sweeps": _scheduled_sweeps(),
            "cancelled": CANCELLED["linger"],
        }).encode()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})
        return
    assert (await receive())["type"] == "websocket.connect"
    if scope["path"] == "/pending":
        await asyncio.Event().wait()
    await send({"type": "websocket.accept"})
    if scope["path"] == "/crash":
        raise RuntimeError("the application broke")
    while (message := await receive())["type"] != "websocket.disconnect":
        await send({"type": "websocket.send", "text": message.get("text") or ""})
    if scope["path"] == "/linger":
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            CANCELLED["linger"] += 1
            raise
