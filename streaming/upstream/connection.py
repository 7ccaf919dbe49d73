"""One authenticated WebSocket connection to the upstream feed (Polygon.io/Massive protocol), as a client.

Opening it performs the feed's own handshake: read ``connected``, send ``{"action":"auth"}``, expect
``auth_success``. Anything else is raised as ``UpstreamRejected`` (e.g. ``auth_failed``, ``max_connections``) or
``UpstreamUnavailable`` (refused, timed out, dropped), so the hub can tell its clients the truth.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Iterator

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, WebSocketException

from streaming.codes import STATUS_EVENT, Action, Status
from streaming.exceptions import UpstreamRejected, UpstreamUnavailable

OPEN_TIMEOUT_SECONDS = 10.0
PING_INTERVAL_SECONDS = 20.0
PING_TIMEOUT_SECONDS = 20.0
MAX_FRAME_BYTES = 16 * 1024 * 1024
MAX_ACTION_PARAMS_BYTES = 8 * 1024
"""Items per subscribe or unsubscribe message sent upstream, in bytes of ``params``: the feed refuses (and closes
on) client messages over 64 KiB, and a change of many items goes as several messages well under that."""


def action_params(items: list[str], limit: int = MAX_ACTION_PARAMS_BYTES) -> Iterator[str]:
    """*items* comma-joined in order, cut into strings of at most *limit* bytes (an item longer than that alone)."""
    chunk: list[str] = []
    size = 0
    for item in items:
        added = len(item.encode()) + (1 if chunk else 0)
        if chunk and size + added > limit:
            yield ",".join(chunk)
            chunk, size = [], 0
            added = len(item.encode())
        chunk.append(item)
        size += added
    if chunk:
        yield ",".join(chunk)


def _statuses(frame: str | bytes) -> list[dict]:
    try:
        events = orjson.loads(frame)
    except orjson.JSONDecodeError:
        raise UpstreamUnavailable("upstream sent a frame that is not JSON") from None
    if not isinstance(events, list) or not all(isinstance(event, dict) for event in events):
        raise UpstreamUnavailable("upstream sent a frame that is not an array of events")
    return events


class UpstreamConnection:
    """An open, authenticated upstream connection for one market."""

    def __init__(self, websocket: ClientConnection) -> None:
        self._websocket = websocket

    @classmethod
    async def open(cls, url: str, api_key: str, timeout: float = OPEN_TIMEOUT_SECONDS) -> UpstreamConnection:
        try:
            async with asyncio.timeout(timeout):
                websocket = await connect(
                    url,
                    open_timeout=None,
                    ping_interval=PING_INTERVAL_SECONDS,
                    ping_timeout=PING_TIMEOUT_SECONDS,
                    max_size=MAX_FRAME_BYTES,
                    compression=None,
                )
                try:
                    await cls._authenticate(websocket, api_key)
                except BaseException:
                    await websocket.close()
                    raise
        except TimeoutError:
            raise UpstreamUnavailable("upstream did not complete its handshake in time") from None
        except (OSError, WebSocketException) as error:
            raise UpstreamUnavailable(f"upstream unreachable: {error}") from None
        return cls(websocket)

    @staticmethod
    async def _authenticate(websocket: ClientConnection, api_key: str) -> None:
        await websocket.send(orjson.dumps({"action": Action.AUTH, "params": api_key}).decode())
        while True:
            for event in _statuses(await websocket.recv()):
                status = event.get("status")
                if event.get("ev") != STATUS_EVENT or status == Status.CONNECTED:
                    continue
                if status == Status.AUTH_SUCCESS:
                    return
                raise UpstreamRejected(str(status), str(event.get("message", "")))

    async def subscribe(self, items: Iterable[str]) -> None:
        await self._send_action(Action.SUBSCRIBE, items)

    async def unsubscribe(self, items: Iterable[str]) -> None:
        await self._send_action(Action.UNSUBSCRIBE, items)

    async def _send_action(self, action: Action, items: Iterable[str]) -> None:
        """Send *action* for *items*, in as many messages as it takes to keep each under ``MAX_ACTION_BYTES``."""
        try:
            for params in action_params(sorted(items)):
                await self._websocket.send(orjson.dumps({"action": action, "params": params}).decode())
        except ConnectionClosed:
            raise UpstreamUnavailable("upstream connection lost") from None

    async def frames(self) -> AsyncIterator[bytes]:
        """Every frame, undecoded, until the connection ends; raises UpstreamUnavailable when it ends (it never
        should). The hub parses each frame with orjson, which rejects invalid UTF-8, before forwarding any of it."""
        try:
            while True:
                yield await self._websocket.recv(decode=False)
        except ConnectionClosed:
            pass
        raise UpstreamUnavailable(f"upstream connection lost (close code {self._websocket.close_code})")

    async def close(self) -> None:
        await self._websocket.close()
