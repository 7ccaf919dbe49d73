"""A client's bounded outbound queue, drained by one writer task at the pace the socket takes.

daphne never pushes back on ``send()``: it buffers whatever the application sends. The outbox is where a client
that stops reading is caught instead: it holds at most ``limit_bytes`` of frames, the writer only sends while the
transport drains (daphne's flow-control extension, see ``streaming.daphne_shim``), and ``put`` reports an overflow
so the consumer can close the client with ``slow_consumer``. Other clients never wait for it.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable

from streaming.daphne_shim import FlowControl


class Outbox:
    def __init__(
        self,
        send: Callable[[str], Awaitable[None]],
        limit_bytes: int,
        flow_control: FlowControl | None = None,
    ) -> None:
        self._send = send
        self.limit_bytes = limit_bytes
        self._flow_control = flow_control
        self._frames: deque[str] = deque()
        self._queued_bytes = 0
        self._ready = asyncio.Event()
        self._writer: asyncio.Task | None = None

    @property
    def queued_bytes(self) -> int:
        return self._queued_bytes

    def start(self) -> None:
        self._writer = asyncio.ensure_future(self._drain())

    def put(self, frames: list[str]) -> bool:
        """Queue frames in order; False (and nothing queued) if they would exceed the budget."""
        size = sum(map(len, frames))
        if self._queued_bytes + size > self.limit_bytes:
            return False
        self._frames.extend(frames)
        self._queued_bytes += size
        self._ready.set()
        return True

    def stop(self) -> None:
        """Stop sending and drop what is queued (the connection is closing)."""
        if self._writer is not None:
            self._writer.cancel()
            self._writer = None
        self._frames.clear()
        self._queued_bytes = 0

    async def _drain(self) -> None:
        flow_control = self._flow_control
        while True:
            if not self._frames:
                self._ready.clear()
                await self._ready.wait()
            if flow_control is not None and not flow_control.is_writable():
                await flow_control.wait_writable()
                if flow_control.is_closed():
                    return
            frame = self._frames.popleft()
            self._queued_bytes -= len(frame)
            await self._send(frame)
