"""Tests of the feed simulator, driven by a plain ``websockets`` client over real loopback sockets.

The helpers below are the client side every test module shares: connect (optionally authenticate and subscribe,
checking the exact replies) and receive frames with a timeout that only guards against a hung test.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect

from streaming.simulator import FeedSimulator

KEY = "simulator-test-key"
EVERYTHING = "T.*,Q.*,A.*,AM.*,LULD.*"
RECEIVE_TIMEOUT_SECONDS = 5.0

CONNECTED = [{"ev": "status", "status": "connected", "message": "Connected Successfully"}]
AUTH_SUCCESS = [{"ev": "status", "status": "auth_success", "message": "authenticated"}]


async def receive(client: ClientConnection, timeout: float = RECEIVE_TIMEOUT_SECONDS) -> list[dict[str, Any]]:
    """The next frame, decoded (it must be a JSON array)."""
    frame = orjson.loads(await asyncio.wait_for(client.recv(), timeout))
    assert isinstance(frame, list)
    return frame


async def receive_until(client: ClientConnection, last: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
    """Events received up to and including the first one for which *last* is true."""
    events: list[dict[str, Any]] = []
    while True:
        for event in await receive(client):
            events.append(event)
            if last(event):
                return events


async def receive_count(client: ClientConnection, count: int) -> list[dict[str, Any]]:
    """Exactly the next *count* events (frames may not straddle the count)."""
    events: list[dict[str, Any]] = []
    while len(events) < count:
        events += await receive(client)
    assert len(events) == count
    return events


async def authenticate(client: ClientConnection, key: str = KEY) -> list[dict[str, Any]]:
    await client.send(orjson.dumps({"action": "auth", "params": key}).decode())
    return await receive(client)


async def subscribe(client: ClientConnection, params: str, action: str = "subscribe") -> list[list[dict[str, Any]]]:
    """Send a (un)subscribe request and return one reply frame per item."""
    await client.send(orjson.dumps({"action": action, "params": params}).decode())
    return [await receive(client) for item in params.split(",") if item.strip()]


@contextlib.asynccontextmanager
async def open_client(
    sim: FeedSimulator, cluster: str, *, authenticated: bool = True, subscribed: str | None = None
) -> AsyncIterator[ClientConnection]:
    """A client connected to *cluster*, past the connected message, authenticated and subscribed as asked."""
    async with connect(sim.url(cluster)) as client:
        assert await receive(client) == CONNECTED
        if authenticated:
            assert await authenticate(client) == AUTH_SUCCESS
        if subscribed:
            acks = await subscribe(client, subscribed)
            assert all(ack[0]["status"] == "success" for ack in acks)
        yield client
