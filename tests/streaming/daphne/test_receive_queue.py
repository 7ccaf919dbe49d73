"""``ReceiveQueue``, the WebSocket application's input queue under the patched daphne, on its own: order, waiting,
cancellation, the inbound budget it reports to, and what an idle one costs. Through a real daphne it carries every
message of tests/streaming/daphne/test_shim.py and the end-to-end tests."""

from __future__ import annotations

import asyncio
import tracemalloc

import pytest

from streaming.daphne.inbound import InboundBudget
from streaming.daphne.receive_queue import ReceiveQueue, wire_size

CONNECT = {"type": "websocket.connect"}
DISCONNECT = {"type": "websocket.disconnect", "code": 1000}


def received(text: str) -> dict[str, str]:
    return {"type": "websocket.receive", "text": text}


class Protocol:
    """What an ``InboundBudget`` reads of its protocol while the budget is not exceeded."""

    STATE_OPEN = 1

    def __init__(self) -> None:
        self.state = self.STATE_OPEN


async def test_messages_come_out_in_the_order_they_went_in() -> None:
    queue = ReceiveQueue()
    for message in (CONNECT, received("a"), received("b"), DISCONNECT):
        queue.put_nowait(message)
    assert len(queue) == 4
    assert [await queue.get() for _ in range(4)] == [CONNECT, received("a"), received("b"), DISCONNECT]
    assert len(queue) == 0


async def test_get_waits_for_the_next_message() -> None:
    queue = ReceiveQueue()
    reader = asyncio.ensure_future(queue.get())
    await asyncio.sleep(0)  # one turn: the reader is now waiting
    assert not reader.done()
    queue.put_nowait(received("late"))
    assert await reader == received("late")


async def test_a_cancelled_get_loses_nothing_and_the_next_get_is_served() -> None:
    queue = ReceiveQueue()
    reader = asyncio.ensure_future(queue.get())
    await asyncio.sleep(0)
    reader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reader
    queue.put_nowait(received("after the cancel"))
    assert await queue.get() == received("after the cancel")


async def test_a_message_put_as_the_waiting_reader_is_cancelled_stays_for_the_next_reader() -> None:
    queue = ReceiveQueue()
    reader = asyncio.ensure_future(queue.get())
    await asyncio.sleep(0)
    queue.put_nowait(received("kept"))  # wakes the reader ...
    reader.cancel()  # ... which is cancelled before it runs
    with pytest.raises(asyncio.CancelledError):
        await reader
    assert len(queue) == 1
    assert await queue.get() == received("kept")


async def test_a_second_reader_waiting_at_once_is_refused() -> None:
    queue = ReceiveQueue()
    reader = asyncio.ensure_future(queue.get())
    await asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="one reader"):
        await queue.get()
    queue.put_nowait(CONNECT)
    assert await reader == CONNECT


async def test_the_inbound_budget_counts_each_client_message_in_and_out_and_nothing_else() -> None:
    budget = InboundBudget(Protocol(), limit=1024)
    queue = ReceiveQueue(budget)
    queue.put_nowait(CONNECT)
    assert budget.queued_bytes == 0
    queue.put_nowait(received("12345"))
    queue.put_nowait({"type": "websocket.receive", "bytes": b"123"})
    queue.put_nowait(DISCONNECT)
    assert budget.queued_bytes == 8
    await queue.get()  # the connect
    assert budget.queued_bytes == 8
    await queue.get()
    assert budget.queued_bytes == 3
    await queue.get()
    assert budget.queued_bytes == 0
    await queue.get()  # the disconnect
    assert budget.queued_bytes == 0


def test_a_text_message_counts_the_utf8_bytes_it_came_in_not_its_characters() -> None:
    assert wire_size(received("subscribe")) == 9
    assert wire_size(received("€ and ü")) == len("€ and ü".encode()) == 10
    assert wire_size({"type": "websocket.receive", "bytes": b"\x00\x01"}) == 2
    assert wire_size(received("")) == 0


async def test_idle_queues_and_budgets_hold_no_buffers() -> None:
    """The reason for the class: 10,000 idle connections each held daphne's ``asyncio.Queue`` (four deques, ~3 KB)
    and a budget's deque of sizes (760 bytes). After a message in and out, an idle pair is back to its bare objects."""
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        pairs = []
        for _ in range(1000):
            budget = InboundBudget(Protocol(), limit=1024)
            queue = ReceiveQueue(budget)
            queue.put_nowait(received("subscribe"))
            await queue.get()
            pairs.append((queue, budget))
        grown = sum(stat.size_diff for stat in tracemalloc.take_snapshot().compare_to(before, "filename"))
    finally:
        tracemalloc.stop()
    assert grown < 1000 * 500  # bytes per idle pair (asyncio.Queue alone: ~3,000)
