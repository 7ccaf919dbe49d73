"""A client's bounded outbound queue, written out at the pace the socket takes.

daphne never pushes back on ``send()``: it buffers whatever the application sends. The outbox is where a client that
stops reading is caught instead: it holds at most ``limit_bytes`` of frames, frames leave only while the transport
drains (daphne's flow-control extension, see ``streaming.daphne.flow_control``), and ``put`` reports an overflow so the
consumer can close the client with ``slow_consumer``. Other clients never wait for it.

Frames that queue up behind a busy socket (or behind a busy process) leave as one: the writer merges what is queued
into a single JSON array, up to the frame size limit, keeping the order. Each send costs the server (and the client)
the same whatever its size, so a client that fell behind catches up in a few large frames instead of many small ones.

Two ways out. Under daphne (a ``FlowControl`` given) frames are written straight to the socket in the event-loop turn
after ``put``, by one callback for all the outboxes that have something to write (``FlushTurn``): the hub routes a
whole batch of upstream frames in one turn, and each client then writes once. Elsewhere (uvicorn, test
communicators) a writer task awaits the ASGI ``send`` per frame.

Each outbox counts what it hands to the socket (``frames_sent``, ``bytes_sent``) as plain integers, which the
metrics sum when scraped (``metrics.ForwardedTotals``), and so the send path's delay: each queued frame keeps the
moment the hub received the upstream frame it came from (``received_at``, 0 for the consumer's own statuses), and
each write that carries upstream data counts the delay of its oldest one in a bucket of ``SEND_DELAY_BOUNDS``.
"""

from __future__ import annotations

import asyncio
import logging
from bisect import bisect_left
from collections import deque
from collections.abc import Awaitable, Callable
from time import monotonic

from streaming.daphne.flow_control import FlowControl
from streaming.hub.index import MAX_FRAME_BYTES
from streaming.metrics import SEND_DELAY_BOUNDS
from streaming.runtime.loop_local import LoopLocal

logger = logging.getLogger(__name__)


class FlushTurn:
    """The outboxes with frames to write, written in the next event-loop turn by one callback.

    A ``call_soon`` per outbox (a handle made, queued and run for each of a thousand clients an upstream frame
    reaches) cost more than the writing it scheduled; the order of the writes stays the order of the ``put`` calls.
    """

    _turns: LoopLocal[FlushTurn] = LoopLocal()

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._due: list[Outbox] = []

    @classmethod
    def current(cls) -> FlushTurn:
        """The running loop's turn (one per process under daphne)."""
        return cls._turns.get(lambda: cls(asyncio.get_running_loop()))

    def schedule(self, outbox: Outbox) -> None:
        if not self._due:
            self._loop.call_soon(self._run)
        self._due.append(outbox)

    def _run(self) -> None:
        due, self._due = self._due, []
        for outbox in due:
            try:
                outbox.flush()
            except Exception:  # one client's failure must not keep the others' frames back
                logger.exception("writing to a client failed")


class Outbox:
    def __init__(
        self,
        send: Callable[[bytes], Awaitable[None]],
        limit_bytes: int,
        flow_control: FlowControl | None = None,
    ) -> None:
        self._send = send
        self.limit_bytes = limit_bytes
        self._flow_control = flow_control
        self._turn = FlushTurn.current() if flow_control is not None else None
        self.frames_sent = 0
        self.bytes_sent = 0
        self.events_queued = 0  # market-data events accepted for the client (the live record's count)
        self.send_delay_counts = [0] * (len(SEND_DELAY_BOUNDS) + 1)
        self.send_delay_seconds = 0.0
        # Each queued frame, with when the hub received its upstream frame: one deque (760 bytes even when empty, and
        # an idle connection's outbox is empty), not a second one of times beside it.
        self._frames: deque[tuple[bytes, float]] = deque()
        self._queued_bytes = 0
        self._ready = asyncio.Event() if flow_control is None else None  # the ASGI writer task's wake-up
        self._writer: asyncio.Task | None = None
        self._flush_scheduled = False
        self._stopped = False

    @property
    def queued_bytes(self) -> int:
        return self._queued_bytes

    def start(self) -> None:
        if self._ready is not None:
            self._writer = asyncio.ensure_future(self._drain(self._ready))

    def put(self, frames: list[bytes], events: int = 0, received_at: float = 0.0) -> bool:
        """Queue UTF-8 text frames (carrying *events* market-data events, from an upstream frame the hub received
        at ``time.monotonic()`` *received_at*, or 0 for the consumer's own) in order; False (and nothing queued) if
        they would exceed the budget."""
        if self._stopped:
            return True
        size = sum(map(len, frames))
        if self._queued_bytes + size > self.limit_bytes:
            return False
        if len(frames) == 1:
            self._frames.append((frames[0], received_at))
        else:
            self._frames.extend([(frame, received_at) for frame in frames])
        self._queued_bytes += size
        self.events_queued += events
        if self._ready is not None:
            self._ready.set()
        elif self._turn is not None and not self._flush_scheduled and self._writer is None:
            self._flush_scheduled = True
            self._turn.schedule(self)
        return True

    def stop(self) -> None:
        """Stop sending and drop what is queued (the connection is closing)."""
        self._stopped = True
        if self._writer is not None:
            self._writer.cancel()
            self._writer = None
        self._frames.clear()
        self._queued_bytes = 0

    def flush(self) -> None:
        """Write what is queued while the socket drains; when it stops draining, wait for it in a task
        (``FlushTurn`` calls it)."""
        self._flush_scheduled = False
        flow_control = self._flow_control
        assert flow_control is not None  # only the direct path flushes
        while self._frames and not self._stopped:
            if not flow_control.is_writable():
                if not flow_control.is_closed():
                    self._writer = asyncio.ensure_future(self._flush_when_writable(flow_control))
                return
            frame, received_at = self._next_frame()
            flow_control.write_text(frame)
            self.frames_sent += 1
            self.bytes_sent += len(frame)
            if received_at:  # _sent, inlined: on the hot path a method call would add a quarter to its cost
                delay = monotonic() - received_at
                self.send_delay_counts[bisect_left(SEND_DELAY_BOUNDS, delay)] += 1
                self.send_delay_seconds += delay

    async def _flush_when_writable(self, flow_control: FlowControl) -> None:
        await flow_control.wait_writable()
        self._writer = None
        self.flush()

    async def _drain(self, ready: asyncio.Event) -> None:
        while True:
            if not self._frames:
                ready.clear()
                await ready.wait()
            frame, received_at = self._next_frame()
            await self._send(frame)
            self._sent(frame, received_at)

    def _sent(self, frame: bytes, received_at: float) -> None:
        self.frames_sent += 1
        self.bytes_sent += len(frame)
        if received_at:
            delay = monotonic() - received_at
            self.send_delay_counts[bisect_left(SEND_DELAY_BOUNDS, delay)] += 1
            self.send_delay_seconds += delay

    def _next_frame(self) -> tuple[bytes, float]:
        """The first queued frame, merged with those behind it into one array while it stays under the limit, and
        when the hub received the oldest upstream frame in it (0 if none: only the consumer's own statuses)."""
        frames = self._frames
        frame, received_at = frames.popleft()
        size = len(frame)
        taken = size
        if frames and size > 2:
            parts = [frame]
            while frames:
                following, later = frames[0]
                grown = size + len(following) - 1  # one array: drop a "]" and a "[", add a ","
                if grown >= MAX_FRAME_BYTES or len(following) <= 2:
                    break
                frames.popleft()
                parts.append(following)
                received_at = received_at or later
                taken += len(following)
                size = grown
            if len(parts) > 1:
                frame = b"[" + b",".join([part[1:-1] for part in parts]) + b"]"
        self._queued_bytes -= taken
        return frame, received_at
