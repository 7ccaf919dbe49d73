"""A WebSocket application's input queue under daphne (what its ``receive()`` awaits), and where it is made.

daphne gives every connection an ``asyncio.Queue``: four deques (its items, its getters, its putters and the waiters
of its ``join()`` event), about 3 KB per connection, for a queue with one writer (the protocol), one reader (the
application) and, most of the time, nothing in it: a tenth of an idle connection's memory. ``ReceiveQueue`` keeps
its messages in a deque only while some wait, and at most one waiter; it reports each client message that goes in
and comes out to the connection's ``InboundBudget`` (daphne puts only what an unmuted socket received).

daphne makes the queue inline in ``Server.create_application``, which has no hook for another queue (or for server
extensions): for WebSockets the patch below does what daphne's does, with this queue, the ``FlowControl`` extension
in the scope and the ``InboundBudget``. HTTP requests keep daphne's own.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from functools import partial
from typing import Any

from streaming.daphne.flow_control import FLOW_CONTROL_EXTENSION, FlowControl
from streaming.daphne.inbound import InboundBudget

Message = dict[str, Any]


def wire_size(message: Message) -> int:
    """The payload bytes a ``websocket.receive`` came in (daphne decoded a text frame's UTF-8 into ``text``)."""
    if message.get("bytes") is not None:
        return len(message["bytes"])
    text: str = message.get("text") or ""
    return len(text) if text.isascii() else len(text.encode())


class ReceiveQueue:
    """FIFO of ASGI messages for one reader; ``put_nowait`` never blocks (the ``InboundBudget`` bounds it)."""

    __slots__ = ("_messages", "_waiter", "_budget")

    def __init__(self, budget: InboundBudget | None = None) -> None:
        self._messages: deque[tuple[Message, int]] | None = None  # each with its wire size (0: not a client's)
        self._waiter: asyncio.Future[None] | None = None
        self._budget = budget

    def __len__(self) -> int:
        return len(self._messages) if self._messages is not None else 0

    def put_nowait(self, message: Message) -> None:
        size = 0
        if self._budget is not None and message["type"] == "websocket.receive":
            size = wire_size(message)
            self._budget.queued(size)
        if self._messages is None:
            self._messages = deque()
        self._messages.append((message, size))
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def get(self) -> Message:
        """The oldest message, once there is one. Raises ``RuntimeError`` if another ``get`` is already waiting."""
        while not self._messages:
            if self._waiter is not None:
                raise RuntimeError("a ReceiveQueue has one reader")
            waiter = self._waiter = asyncio.get_running_loop().create_future()
            try:
                await waiter
            finally:
                if self._waiter is waiter:  # cancelled, not woken
                    self._waiter = None
        messages = self._messages
        message, size = messages.popleft()
        if not messages:
            self._messages = None
        if size and self._budget is not None:
            self._budget.taken(size)
        return message


def patched_create_application(original: Callable[..., Any]) -> Callable[..., Any]:
    def create_application(self: Any, protocol: Any, scope: dict[str, Any]) -> Any:
        """daphne's ``create_application`` for a WebSocket, with a ``ReceiveQueue``, the ``FlowControl`` extension
        and the ``InboundBudget`` (see the module docstring); anything else goes to daphne's."""
        if scope["type"] != "websocket":
            return original(self, protocol, scope)
        assert "application_instance" not in self.connections[protocol]
        scope.setdefault("extensions", {})[FLOW_CONTROL_EXTENSION] = FlowControl.attach(protocol)
        queue = ReceiveQueue(InboundBudget.attach(protocol))
        scope.setdefault("asgi", {"version": "3.0"})
        instance = self.application(scope=scope, receive=queue.get, send=partial(self.handle_reply, protocol))
        if protocol not in self.connections:
            instance.close()  # never started: no "coroutine was never awaited" warning
            return None
        self.connections[protocol]["application_instance"] = asyncio.ensure_future(
            instance, loop=asyncio.get_event_loop()
        )
        return queue

    return create_application
