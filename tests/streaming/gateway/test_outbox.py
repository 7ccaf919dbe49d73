"""The outbox: frames leave in order, merged when they queued up, only while the socket drains, within the budget.

The writer side is a stand-in with the interface of the shim's ``FlowControl`` (its real behaviour under daphne is
tested in test_daphne_shim.py and end to end); here it records frames and lets a test stop and resume draining.
"""

from __future__ import annotations

import asyncio

import orjson
import pytest

from streaming.gateway import outbox as outbox_module
from streaming.gateway.outbox import Outbox
from streaming.hub.index import MAX_FRAME_BYTES
from streaming.metrics import SEND_DELAY_BOUNDS


class AsgiSink:
    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.gate = asyncio.Event()

    async def send(self, frame: bytes) -> None:
        await self.gate.wait()
        self.frames.append(frame)


class Socket:
    """What the outbox uses of ``FlowControl``."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self._writable = asyncio.Event()
        self._writable.set()
        self.closed = False

    def is_writable(self) -> bool:
        return self._writable.is_set() and not self.closed

    def is_closed(self) -> bool:
        return self.closed

    async def wait_writable(self) -> None:
        await self._writable.wait()

    def write_text(self, frame: bytes) -> None:
        self.written.append(frame)

    def pause(self) -> None:
        self._writable.clear()

    def resume(self) -> None:
        self._writable.set()


async def never_called(frame: bytes) -> None:
    raise AssertionError("the direct path must not use the ASGI send")


async def turns(count: int = 10) -> None:
    for _ in range(count):
        await asyncio.sleep(0)


async def test_asgi_path_sends_queued_frames_as_one_array_in_order():
    sink = AsgiSink()
    outbox = Outbox(sink.send, limit_bytes=10_000_000)
    outbox.start()
    outbox.put([b'[{"n":1}]'])
    await asyncio.sleep(0)  # the writer takes the first frame and waits on the socket
    outbox.put([b'[{"n":2}]', b'[{"n":3},{"n":4}]'])
    outbox.put(['[{"ev":"status","message":"…"}]'.encode()])
    sink.gate.set()
    await turns()
    outbox.stop()
    assert sink.frames[0] == b'[{"n":1}]'
    assert sink.frames[1:] == ['[{"n":2},{"n":3},{"n":4},{"ev":"status","message":"…"}]'.encode()]
    assert outbox.queued_bytes == 0


async def test_merged_frames_stay_under_the_frame_limit():
    sink = AsgiSink()
    outbox = Outbox(sink.send, limit_bytes=100_000_000)
    big = b"[" + b",".join([b'{"pad":"' + b"x" * 1000 + b'"}'] * 400) + b"]"  # ~400 KB each
    outbox.put([big] * 6)
    sink.gate.set()
    outbox.start()
    await turns(20)
    outbox.stop()
    assert all(len(frame) < MAX_FRAME_BYTES for frame in sink.frames)
    assert sum(len(orjson.loads(frame)) for frame in sink.frames) == 6 * 400
    assert len(sink.frames) == 3


async def test_direct_path_writes_once_per_turn_what_was_queued_in_it():
    socket = Socket()
    outbox = Outbox(never_called, limit_bytes=10_000, flow_control=socket)
    outbox.start()
    outbox.put([b'[{"n":1}]'])
    outbox.put([b'[{"n":2}]'])
    assert socket.written == []  # nothing is written from inside the caller's turn
    await asyncio.sleep(0)
    assert socket.written == [b'[{"n":1},{"n":2}]']
    outbox.put([b'[{"n":3}]'])
    await asyncio.sleep(0)
    assert socket.written[1:] == [b'[{"n":3}]']
    assert outbox.queued_bytes == 0
    assert (outbox.frames_sent, outbox.bytes_sent) == (2, sum(map(len, socket.written)))


async def test_one_turn_writes_every_outbox_in_the_order_they_were_given_frames():
    written: list[tuple[str, bytes]] = []

    class Named(Socket):
        def __init__(self, name: str) -> None:
            super().__init__()
            self.name = name

        def write_text(self, frame: bytes) -> None:
            if self.name == "broken":
                raise RuntimeError("this client's socket write failed")
            written.append((self.name, frame))

    outboxes = {name: Outbox(never_called, limit_bytes=1_000, flow_control=Named(name))
                for name in ("a", "broken", "b")}
    for outbox in outboxes.values():
        outbox.start()
    outboxes["b"].put([b'[{"n":1}]'])
    outboxes["broken"].put([b'[{"n":2}]'])
    outboxes["a"].put([b'[{"n":3}]'])
    outboxes["b"].put([b'[{"n":4}]'])  # already due this turn: merged into b's one write
    await asyncio.sleep(0)
    assert written == [("b", b'[{"n":1},{"n":4}]'), ("a", b'[{"n":3}]')]
    assert [outbox.frames_sent for outbox in outboxes.values()] == [1, 0, 1]


async def test_the_asgi_path_counts_what_it_sent():
    sink = AsgiSink()
    outbox = Outbox(sink.send, limit_bytes=1_000)
    outbox.start()
    sink.gate.set()
    outbox.put([b'[{"n":1}]', b'[{"n":22}]'])
    await turns()
    outbox.stop()
    assert (outbox.frames_sent, outbox.bytes_sent) == (len(sink.frames), sum(map(len, sink.frames)))
    assert sink.frames == [b'[{"n":1},{"n":22}]']  # merged: the count is of what left, not of what came in


async def test_direct_path_holds_frames_while_the_socket_does_not_drain():
    socket = Socket()
    outbox = Outbox(never_called, limit_bytes=100, flow_control=socket)
    outbox.start()
    socket.pause()
    assert outbox.put([b'[{"n":1}]', b'[{"n":2}]'])
    await turns()
    assert socket.written == [] and outbox.queued_bytes == 18
    assert not outbox.put([b"[" + b"x" * 90 + b"]"])  # over the budget: refused whole, nothing queued
    assert outbox.queued_bytes == 18
    socket.resume()
    await turns()
    assert socket.written == [b'[{"n":1},{"n":2}]'] and outbox.queued_bytes == 0


async def outbox_holding_a_frame() -> tuple[Outbox, Socket]:
    """A direct-path outbox with one frame queued behind a socket that stopped draining."""
    socket = Socket()
    outbox = Outbox(never_called, limit_bytes=100, flow_control=socket)
    outbox.start()
    socket.pause()
    outbox.put([b'[{"n":1}]'])
    await turns()
    return outbox, socket


async def test_direct_path_stop_drops_queued_frames_and_later_puts():
    outbox, socket = await outbox_holding_a_frame()
    outbox.stop()
    socket.resume()
    outbox.put([b'[{"n":2}]'])
    await turns()
    assert socket.written == [] and outbox.queued_bytes == 0


async def test_direct_path_gives_up_when_the_socket_closes():
    outbox, socket = await outbox_holding_a_frame()
    socket.closed = True
    socket.resume()
    await turns()
    assert socket.written == []


class Clock:
    """``time.monotonic`` as the outbox sees it, moved by the test."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> Clock:
    clock = Clock(100.0)
    monkeypatch.setattr(outbox_module, "monotonic", clock)
    return clock


def bucket(upper_bound: float) -> int:
    """The slot of ``send_delay_counts`` whose bucket ends at *upper_bound* (``inf``: the last)."""
    return len(SEND_DELAY_BOUNDS) if upper_bound == float("inf") else SEND_DELAY_BOUNDS.index(upper_bound)


def delays(outbox: Outbox) -> dict[int, int]:
    return {slot: count for slot, count in enumerate(outbox.send_delay_counts) if count}


async def test_each_write_counts_its_delay_since_the_hub_received_the_frame_in_its_bucket(clock):
    socket = Socket()
    outbox = Outbox(never_called, limit_bytes=10_000, flow_control=socket)
    outbox.start()
    for received_at, written_at in ((100.0, 100.003), (101.0, 101.25), (102.0, 108.0)):
        outbox.put([b'[{"n":1}]'], 1, received_at)
        clock.now = written_at
        await asyncio.sleep(0)
    assert len(socket.written) == 3
    # 3 ms is in the bucket up to 5 ms; 0.25 s exactly in the one up to 0.25 s (bounds are inclusive); 6 s past all.
    assert delays(outbox) == {bucket(0.005): 1, bucket(0.25): 1, bucket(float("inf")): 1}
    assert outbox.send_delay_seconds == pytest.approx(0.003 + 0.25 + 6.0)


async def test_a_merged_write_counts_once_with_its_oldest_upstream_frame_and_statuses_alone_not_at_all(clock):
    socket = Socket()
    outbox = Outbox(never_called, limit_bytes=10_000, flow_control=socket)
    outbox.start()
    outbox.put([b'[{"ev":"status"}]'])  # the consumer's own: no upstream frame behind it
    outbox.put([b'[{"n":1}]'], 1, 99.992)
    outbox.put([b'[{"n":2}]', b'[{"n":3}]'], 2, 99.999)
    clock.now = 100.0
    await asyncio.sleep(0)
    outbox.put([b'[{"ev":"status"}]'])
    await asyncio.sleep(0)
    assert len(socket.written) == 2 and outbox.frames_sent == 2
    assert delays(outbox) == {bucket(0.01): 1}  # the write's oldest upstream frame waited 8 ms
    assert outbox.send_delay_seconds == pytest.approx(0.008)


async def test_frames_held_behind_a_socket_that_does_not_drain_count_the_wait(clock):
    socket = Socket()
    outbox = Outbox(never_called, limit_bytes=10_000, flow_control=socket)
    outbox.start()
    socket.pause()
    outbox.put([b'[{"n":1}]'], 1, 100.0)
    await turns()
    clock.now = 100.7
    socket.resume()
    await turns()
    assert socket.written == [b'[{"n":1}]']
    assert delays(outbox) == {bucket(1.0): 1}


async def test_the_asgi_path_counts_send_delays_too(clock):
    sink = AsgiSink()
    outbox = Outbox(sink.send, limit_bytes=1_000)
    outbox.start()
    outbox.put([b'[{"n":1}]'], 1, 99.9996)
    sink.gate.set()
    await turns()
    outbox.stop()
    assert sink.frames == [b'[{"n":1}]']
    assert delays(outbox) == {bucket(0.0005): 1}
