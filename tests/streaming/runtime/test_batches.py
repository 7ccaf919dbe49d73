"""Batches of calls: alone at once, together while one runs, each caller answered, cancelled callers as configured.

The call here is a function of the test that records each batch and waits for the test's go, so the test decides
when a call ends (the locks' batches against a real Redis are in test_lock_keeper.py).
"""

from __future__ import annotations

import asyncio

import pytest

from streaming.runtime.batches import Batches

TIMEOUT = 5.0


class GatedCall:
    """Records each batch it gets; answers each item doubled once the test opens the gate (or raises *error*)."""

    def __init__(self, error: Exception | None = None) -> None:
        self.batches: list[list[int]] = []
        self.started = asyncio.Event()
        self.gate = asyncio.Event()
        self.error = error
        self.failed: list[tuple[list[int], Exception]] = []

    async def __call__(self, items: list[int]) -> list[int]:
        self.batches.append(items)
        self.started.set()
        await self.gate.wait()
        if self.error is not None:
            raise self.error
        return [item * 2 for item in items]

    def on_failed(self, items: list[int], error: Exception) -> None:
        self.failed.append((items, error))

    async def wait_started(self, count: int) -> None:
        async with asyncio.timeout(TIMEOUT):
            while len(self.batches) < count:
                self.started.clear()
                await self.started.wait()


async def test_an_item_alone_is_sent_at_once_and_answered():
    call = GatedCall()
    call.gate.set()
    assert await Batches(call, size=10).submit(3) == 6
    assert call.batches == [[3]]


async def test_items_submitted_while_a_call_runs_go_together_in_the_next_capped_at_the_size():
    call = GatedCall()
    batches = Batches(call, size=3)
    first = asyncio.ensure_future(batches.submit(1))
    await call.wait_started(1)
    later = [asyncio.ensure_future(batches.submit(item)) for item in (2, 3, 4, 5)]
    await asyncio.sleep(0)  # each has submitted its item
    call.gate.set()
    assert await asyncio.wait_for(asyncio.gather(first, *later), TIMEOUT) == [2, 4, 6, 8, 10]
    assert call.batches == [[1], [2, 3, 4], [5]]


async def test_an_item_submitted_twice_is_sent_once_and_both_callers_answered():
    call = GatedCall()
    batches = Batches(call, size=10)
    blocker = asyncio.ensure_future(batches.submit(0))
    await call.wait_started(1)
    twice = [asyncio.ensure_future(batches.submit(7)) for _ in range(2)]
    await asyncio.sleep(0)
    call.gate.set()
    assert await asyncio.wait_for(asyncio.gather(blocker, *twice), TIMEOUT) == [0, 14, 14]
    assert call.batches == [[0], [7]]


async def test_a_failed_call_fails_each_of_its_callers_and_names_its_items():
    error = ConnectionError("unreachable")
    call = GatedCall(error)
    batches = Batches(call, size=10, failed=call.on_failed)
    blocker = asyncio.ensure_future(batches.submit(1))
    await call.wait_started(1)
    others = [asyncio.ensure_future(batches.submit(item)) for item in (2, 3)]
    await asyncio.sleep(0)
    call.gate.set()
    results = await asyncio.wait_for(asyncio.gather(blocker, *others, return_exceptions=True), TIMEOUT)
    assert results == [error, error, error]
    assert call.failed == [([1], error), ([2, 3], error)]


@pytest.mark.parametrize("withdraw", [False, True])
async def test_a_caller_cancelled_before_its_item_was_sent_leaves_it_or_takes_it_back(withdraw: bool):
    call = GatedCall()
    batches = Batches(call, size=10, withdraw_cancelled=withdraw)
    blocker = asyncio.ensure_future(batches.submit(1))
    await call.wait_started(1)
    cancelled = asyncio.ensure_future(batches.submit(2))
    kept = asyncio.ensure_future(batches.submit(3))
    await asyncio.sleep(0)
    cancelled.cancel()
    await asyncio.sleep(0)
    call.gate.set()
    assert await asyncio.wait_for(asyncio.gather(blocker, kept), TIMEOUT) == [2, 6]
    assert cancelled.cancelled()
    assert call.batches == [[1], [3] if withdraw else [2, 3]]


async def test_a_caller_cancelled_once_its_item_was_sent_leaves_the_call_to_run():
    call = GatedCall()
    batches = Batches(call, size=10, withdraw_cancelled=True)
    sent = asyncio.ensure_future(batches.submit(1))
    await call.wait_started(1)
    sent.cancel()
    after = asyncio.ensure_future(batches.submit(2))
    await asyncio.sleep(0)
    call.gate.set()
    assert await asyncio.wait_for(after, TIMEOUT) == 4
    assert call.batches == [[1], [2]]


async def test_an_item_submitted_unawaited_is_sent_with_the_next_call():
    call = GatedCall()
    batches = Batches(call, size=10)
    blocker = asyncio.ensure_future(batches.submit(1))
    await call.wait_started(1)
    batches.submit_unawaited(5)
    call.gate.set()
    await asyncio.wait_for(blocker, TIMEOUT)
    await call.wait_started(2)
    assert call.batches == [[1], [5]]


async def test_stop_cancels_whoever_waits():
    call = GatedCall()
    batches = Batches(call, size=10)
    sent = asyncio.ensure_future(batches.submit(1))
    await call.wait_started(1)
    waiting = asyncio.ensure_future(batches.submit(2))
    await asyncio.sleep(0)
    await batches.stop()
    results = await asyncio.gather(sent, waiting, return_exceptions=True)
    assert all(isinstance(result, asyncio.CancelledError) for result in results)
