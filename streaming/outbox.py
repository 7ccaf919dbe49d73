"""A client's bounded outbound queue, drained by one writer task at the pace the socket takes.

daphne never pushes back on ``send()``: it buffers whatever the application sends. The outbox is where a client
that stops reading is caught instead: it holds at most ``limit_bytes`` of frames, the writer only sends while the
transport drains (daphne's flow-control extension, see ``streaming.daphne_shim``), and ``put`` reports an overflow
so the consumer can close the client with ``slow_consumer``. Other clients never wait for it.

Frames that queue up behind a busy socket (or behind a busy process) leave as one: the writer merges what is queued
into a single JSON array, up to the frame size limit, keeping the order. Each send costs the server (and the client)
the same whatever its size, so a client that fell behind catches up in a few large frames instead of many small ones.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable

from streaming.daphne_shim import FlowControl
from streaming.fanout import MAX_FRAME_BYTES


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
            await self._send(self._next_frame())

    def _next_frame(self) -> str:
        """The first queued frame, merged with those behind it into one array while it stays under the limit."""
        frames = self._frames
        frame = frames.popleft()
        taken = len(frame)
        if frames:
            parts = [frame]
            size = _utf8_length(frame)
            while frames:
                following = frames[0]
                grown = size + _utf8_length(following) - 1  # one array: drop a "]" and a "[", add a ","
                if grown >= MAX_FRAME_BYTES or len(following) <= 2 or len(frame) <= 2:
                    break
                parts.append(frames.popleft())
                taken += len(following)
                size = grown
            if len(parts) > 1:
                frame = "[" + ",".join([part[1:-1] for part in parts]) + "]"
        self._queued_bytes -= taken
        return frame


def _utf8_length(frame: str) -> int:
    return len(frame) if frame.isascii() else len(frame.encode("utf-8", "surrogatepass"))
