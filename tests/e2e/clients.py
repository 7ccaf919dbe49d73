"""A plain `websockets` client session against a real server, recording status events and the close."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

TIMEOUT = 10


@dataclass
class Outcome:
    events: list[dict] = field(default_factory=list)
    close_code: int | None = None
    close_reason: str = ""

    @property
    def statuses(self) -> list[str]:
        return [event["status"] for event in self.events if event.get("ev") == "status"]


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def read_until_closed(websocket: ClientConnection, outcome: Outcome | None = None) -> Outcome:
    outcome = outcome or Outcome()
    try:
        async with asyncio.timeout(TIMEOUT):
            async for frame in websocket:
                outcome.events.extend(orjson.loads(frame))
    except ConnectionClosed:
        pass
    outcome.close_code = websocket.close_code
    outcome.close_reason = websocket.close_reason or ""
    return outcome


async def expect_statuses(websocket: ClientConnection, *statuses: str) -> list[dict]:
    """The next events are these statuses, in order. Events after them in the same frame may only be market data:
    once subscribed, the feed's first events can leave in one merged frame with the acks (the outbox merges what
    is queued together), as a client of a busy feed sees them."""
    events: list[dict] = []
    async with asyncio.timeout(TIMEOUT):
        while len(events) < len(statuses):
            events.extend(orjson.loads(await websocket.recv()))
    expected, following = events[:len(statuses)], events[len(statuses):]
    assert [event.get("status") for event in expected] == list(statuses), events
    assert all(event.get("ev") != "status" for event in following), events
    return expected


async def rejected(url: str, headers: dict[str, str] | None = None, send: str | None = None) -> Outcome:
    """Connect, optionally send one message, and read until the server closes."""
    async with connect(url, additional_headers=headers, open_timeout=TIMEOUT) as websocket:
        if send is not None:
            await websocket.send(send)
        return await read_until_closed(websocket)
