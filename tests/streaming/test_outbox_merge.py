"""Fast paths of the fan-out: queued frames leave merged, and a group taking a whole frame gets it unchanged."""

from __future__ import annotations

import asyncio

import orjson

from streaming.fanout import MAX_FRAME_BYTES
from streaming.hub import UpstreamHub
from streaming.outbox import Outbox


class Sink:
    def __init__(self) -> None:
        self.frames: list[str] = []
        self.gate = asyncio.Event()

    async def send(self, frame: str) -> None:
        await self.gate.wait()
        self.frames.append(frame)


async def test_queued_frames_leave_as_one_array_in_order():
    sink = Sink()
    outbox = Outbox(sink.send, limit_bytes=10_000_000)
    outbox.start()
    outbox.put(['[{"n":1}]'])
    await asyncio.sleep(0)  # the writer takes the first frame and waits on the socket
    outbox.put(['[{"n":2}]', '[{"n":3},{"n":4}]'])
    outbox.put(['[{"ev":"status","message":"…"}]'])
    sink.gate.set()
    for _ in range(10):
        await asyncio.sleep(0)
    outbox.stop()
    assert sink.frames[0] == '[{"n":1}]'
    assert sink.frames[1:] == ['[{"n":2},{"n":3},{"n":4},{"ev":"status","message":"…"}]']
    assert outbox.queued_bytes == 0


async def test_merged_frames_stay_under_the_frame_limit():
    sink = Sink()
    outbox = Outbox(sink.send, limit_bytes=100_000_000)
    big = "[" + ",".join(['{"pad":"' + "x" * 1000 + '"}'] * 400) + "]"  # ~400 KB each
    outbox.put([big] * 6)
    sink.gate.set()
    outbox.start()
    for _ in range(20):
        await asyncio.sleep(0)
    outbox.stop()
    assert all(len(frame.encode()) < MAX_FRAME_BYTES for frame in sink.frames)
    assert sum(len(orjson.loads(frame)) for frame in sink.frames) == 6 * 400
    assert len(sink.frames) == 3


class Client:
    def __init__(self) -> None:
        self.frames: list[str] = []

    def deliver(self, frames: list[str]) -> None:
        self.frames.extend(frames)


def test_a_group_taking_every_event_gets_the_upstream_frame_unchanged():
    from streaming.protocol import Subscription

    hub = UpstreamHub("stocks", "ws://unused", "key", idle_seconds=1)
    whole, narrow = Client(), Client()
    hub.index.set_subscriptions(whole, {Subscription("T", "*"), Subscription("Q", "*")})
    hub.index.set_subscriptions(narrow, {Subscription("T", "AAPL")})
    frame = '[{"ev":"T","sym":"AAPL","p":1.5},  {"ev":"Q","sym":"MSFT","bp":2}]'
    hub._dispatch(frame)
    assert whole.frames == [frame]
    assert orjson.loads(narrow.frames[0]) == [{"ev": "T", "sym": "AAPL", "p": 1.5}]
    hub._dispatch('[{"ev":"T","sym":"MSFT","p":1}]')  # T.* alone covers it too
    assert whole.frames[-1] == '[{"ev":"T","sym":"MSFT","p":1}]' and len(narrow.frames) == 1
