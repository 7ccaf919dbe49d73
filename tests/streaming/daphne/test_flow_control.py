"""``FlowControl``'s waiting for a drain, driven through its producer methods as Twisted drives them. Its pacing of
real sockets (pause above the high-water mark, resume, a stalled client going away) is in test_shim.py, through a real
daphne."""

from __future__ import annotations

import asyncio

import pytest

from streaming.daphne import flow_control


class StandInProtocol:
    """A protocol without a transport: ``FlowControl`` is driven by calling its producer methods, as Twisted does."""

    transport = None


async def test_every_waiter_for_the_drain_is_woken_and_a_cancelled_one_keeps_none_waiting() -> None:
    flow = flow_control.FlowControl(StandInProtocol())
    await flow.wait_writable()  # not paused: at once
    flow.pauseProducing()
    assert not flow.is_writable()
    first, second, cancelled = (asyncio.ensure_future(flow.wait_writable()) for _ in range(3))
    await asyncio.sleep(0)  # one turn: all three wait
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    assert not first.done() and not second.done()
    flow.resumeProducing()
    await asyncio.gather(first, second)
    assert flow.is_writable()


async def test_closing_wakes_the_waiters_and_leaves_the_socket_unwritable() -> None:
    flow = flow_control.FlowControl(StandInProtocol())
    flow.pauseProducing()
    waiter = asyncio.ensure_future(flow.wait_writable())
    await asyncio.sleep(0)
    flow.stopProducing()
    await waiter
    assert flow.is_closed() and not flow.is_writable()
    flow.pauseProducing()  # a late pause of a closed connection changes nothing
    await flow.wait_writable()
