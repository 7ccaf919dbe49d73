"""A feed server for tests whose every frame is the test's to choose.

`ScriptedFeed` is a real ``websockets`` server on 127.0.0.1 (a free port) that speaks as much of the Polygon/Massive
protocol as a test wants: by default it greets with ``connected``, reads the auth message, answers ``auth_success``,
records each action the client sends and acknowledges subscriptions the way the feed does. After that it sends
exactly the frames the test hands to a `FeedSession`, byte for byte, and closes or drops the connection when told.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import orjson
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from streaming.codes import AUTH_SUCCESS_FRAME, CONNECTED_FRAME, Action, ack_event

TIMEOUT = 5.0


class FeedSession:
    """One client connection to the feed, as the feed sees it."""

    def __init__(self, connection: ServerConnection) -> None:
        self.connection = connection
        self.opened_at = time.monotonic()
        self.closed_at: float | None = None
        self.auth: dict | None = None
        self.actions: asyncio.Queue[dict] = asyncio.Queue()
        self._closed = asyncio.Event()

    async def send(self, frame: str | bytes) -> None:
        """Send *frame* as one text frame, exactly these bytes."""
        await self.connection.send(frame.encode() if isinstance(frame, str) else frame, text=True)

    async def next_action(self) -> dict:
        """The next message the client sent after authenticating."""
        async with asyncio.timeout(TIMEOUT):
            return await self.actions.get()

    async def close(self, code: int = 1000, reason: str = "") -> None:
        await self.connection.close(code, reason)

    def drop(self) -> None:
        """Abort the TCP connection, without a close frame."""
        self.connection.transport.abort()

    async def wait_closed(self) -> float:
        """When the connection ended (``time.monotonic()``)."""
        async with asyncio.timeout(TIMEOUT):
            await self._closed.wait()
        assert self.closed_at is not None
        return self.closed_at

    @property
    def is_closed(self) -> bool:
        return self._closed.is_set()

    def _ended(self) -> None:
        self.closed_at = time.monotonic()
        self._closed.set()


Handshake = Callable[[FeedSession], Awaitable[bool]]
"""Runs the feed's side of the handshake; True when the session is authenticated (the feed then serves it)."""


async def polygon_handshake(session: FeedSession) -> bool:
    await session.send(CONNECTED_FRAME)
    session.auth = orjson.loads(await session.connection.recv())
    await session.send(AUTH_SUCCESS_FRAME)
    return True


def answering(*frames: str | bytes) -> Handshake:
    """A handshake that greets, reads the auth message, sends *frames* and then says nothing more (with no frames:
    a feed that never answers the auth)."""

    async def handshake(session: FeedSession) -> bool:
        await session.send(CONNECTED_FRAME)
        session.auth = orjson.loads(await session.connection.recv())
        for frame in frames:
            await session.send(frame)
        return False

    return handshake


def acks(action: dict) -> bytes:
    """The feed's acknowledgement of a subscribe or unsubscribe action: one success status per item."""
    kind = Action.SUBSCRIBE if action["action"] == Action.SUBSCRIBE else Action.UNSUBSCRIBE
    return orjson.dumps([ack_event(kind, item) for item in action["params"].split(",")])


class ScriptedFeed:
    """The feed server. ``auto_ack=False`` leaves acknowledging subscriptions to the test."""

    def __init__(self, handshake: Handshake = polygon_handshake, auto_ack: bool = True) -> None:
        self.handshake = handshake
        self.auto_ack = auto_ack
        self.sessions: list[FeedSession] = []
        self._authenticated: asyncio.Queue[FeedSession] = asyncio.Queue()
        self._server: Server | None = None

    async def __aenter__(self) -> ScriptedFeed:
        self._server = await serve(self._handle, "127.0.0.1", 0, compression=None)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/stocks"

    async def next_session(self) -> FeedSession:
        """The next connection that completed the handshake."""
        async with asyncio.timeout(TIMEOUT):
            return await self._authenticated.get()

    async def _handle(self, connection: ServerConnection) -> None:
        session = FeedSession(connection)
        self.sessions.append(session)
        try:
            if not await self.handshake(session):
                await connection.wait_closed()
                return
            self._authenticated.put_nowait(session)
            async for message in connection:
                action = orjson.loads(message)
                session.actions.put_nowait(action)
                if self.auto_ack and action.get("action") in (Action.SUBSCRIBE, Action.UNSUBSCRIBE):
                    await session.send(acks(action))
        except ConnectionClosed:
            pass
        finally:
            session._ended()
