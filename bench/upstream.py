"""Bench-only upstream: the feed simulator's own generator, with a send timestamp embedded in every event.

Latency is measured from the moment this upstream hands a frame to its socket to the moment a load client receives
the event. Each generated event gets a ``"bt"`` field (bench time) holding a fixed-width placeholder when it is
encoded, and the placeholder is replaced by ``time.time_ns()`` right before the frame is sent (one ``bytes.replace``
per frame). Every event of an upstream frame therefore carries its frame's send time, and a client frame, which the
gateway builds from one upstream frame, can be timed by its first event. Server and clients run on the same machine
and read the same clock.

To leave the machine's two cores to the server and the clients, the events are generated once at start-up (two
seconds of feed, ``POOL_BATCHES`` batches of ``rate * TICK_SECONDS`` events) and replayed in a loop, the frames for
each subscription computed once per batch. Unlike the simulator, a connection that does not drain slows this
upstream down (``await send``) instead of being buffered; the events actually sent per second are written to a stats
file so the harness can report them.
The protocol is the simulator's (``connected``, ``auth``, one ``subscribed to:`` per item, in one frame).

``python -m bench.upstream --port P --api-key K --rate N --stats-file PATH [--market stocks]`` (one cluster per
process: options unless told).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import time

import orjson
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from streaming.simulator.fanout import Subscription
from streaming.simulator.feed import ClusterFeed
from streaming.simulator.market import OptionMarket, StockMarket
from streaming.simulator.protocol import AUTH_SUCCESS_FRAME, CONNECTED_FRAME, split_params
from streaming.simulator.universe import OPTION_CONTRACTS, STOCKS

STAMP_FIELD = "bt"
PLACEHOLDER = 1_000_000_000_000_000_000  # 19 digits, as time.time_ns() until 2286
PLACEHOLDER_BYTES = b'"bt":1000000000000000000'
STAMP_PREFIX = b'"bt":'
TICK_SECONDS = 0.01  # as the simulator: at most 100 frames per second
POOL_BATCHES = 100  # one second of feed, replayed
POOL_EVENTS = 400_000
MAX_DEBT_BATCHES = 20
MAX_CACHED_FRAME_LISTS = 250_000
"""Frames per (pool batch, subscription): enough for 1,000 clients of distinct subscriptions connected directly (the
selective scenario's baseline) over the pool's 100 batches, so that the replay costs one lookup per client and tick."""
STATS_INTERVAL_SECONDS = 0.25


class StampedFeed(ClusterFeed):
    """The simulator's options feed, each event carrying the send-time placeholder as its last field."""

    def _encode_generated(self, events):
        for event in events:
            event[STAMP_FIELD] = PLACEHOLDER
        return super()._encode_generated(events)


def stamp(frame: bytes) -> bytes:
    return frame.replace(PLACEHOLDER_BYTES, b'"bt":%d' % time.time_ns())


def read_stamp(frame: bytes) -> int | None:
    """The send time (ns) of the first event of a frame, or None if it carries none."""
    position = frame.find(STAMP_PREFIX)
    if position < 0:
        return None
    return int(frame[position + 5:position + 24])


class Client:
    __slots__ = ("connection", "items", "subscription")

    def __init__(self, connection: ServerConnection) -> None:
        self.connection = connection
        self.items: set[str] = set()
        self.subscription = Subscription()


class BenchUpstream:
    def __init__(self, api_key: str, rate: float, seed: str, market: str = "options") -> None:
        self.api_key = api_key
        self.rate = rate
        self.market = market
        self.feed = StampedFeed(StockMarket(STOCKS, f"{seed}:stocks") if market == "stocks"
                                else OptionMarket(OPTION_CONTRACTS, f"{seed}:options"))
        self.clients: list[Client] = []
        self.events_sent = 0
        self.frames_sent = 0

    async def converse(self, connection: ServerConnection) -> None:
        client = Client(connection)
        await connection.send(CONNECTED_FRAME, text=True)
        try:
            async for message in connection:
                request = orjson.loads(message)
                action, params = request.get("action"), request.get("params") or ""
                if action == "auth":
                    if params != self.api_key:
                        await connection.close(1008, "authentication failed")
                        return
                    await connection.send(AUTH_SUCCESS_FRAME, text=True)
                    self.clients.append(client)
                elif action in ("subscribe", "unsubscribe"):
                    items = split_params(params)
                    verb = "subscribed to" if action == "subscribe" else "unsubscribed to"
                    if action == "subscribe":
                        client.items.update(items)
                    else:
                        client.items.difference_update(items)
                    client.subscription = Subscription(client.items)
                    acks = [{"ev": "status", "status": "success", "message": f"{verb}: {item}"} for item in items]
                    await connection.send(orjson.dumps(acks), text=True)
        except ConnectionClosed:
            pass
        finally:
            if client in self.clients:
                self.clients.remove(client)

    def prepare(self) -> None:
        """Generate the pool of batches up front, so sending costs this process almost nothing."""
        self.batch_size = max(1, round(self.rate * TICK_SECONDS))
        count = max(1, min(POOL_BATCHES, POOL_EVENTS // self.batch_size)) if self.rate else 0
        now_ms = time.time_ns() // 1_000_000
        self.pool = [self.feed.generate(self.batch_size, now_ms) for _ in range(count)]
        self.frames: dict[tuple[int, frozenset[str]], list[bytes]] = {}

    def frames_for(self, index: int, client: Client) -> list[bytes]:
        key = (index, client.subscription.items)
        frames = self.frames.get(key)
        if frames is None:
            if len(self.frames) > MAX_CACHED_FRAME_LISTS:
                self.frames.clear()
            frames = self.frames[key] = self.pool[index].frames_for(client.subscription)
        return frames

    async def clock(self) -> None:
        """Send the pool's batches in a loop at ``rate`` events/s; a connection that does not drain slows it."""
        if not self.pool:
            return
        sent_batches = 0
        started = time.monotonic()
        while True:
            due = int((time.monotonic() - started) * self.rate / self.batch_size)
            if due - sent_batches > MAX_DEBT_BATCHES:  # fell behind: forget it rather than burst
                sent_batches = due - MAX_DEBT_BATCHES
            if not self.clients:
                sent_batches = due
            while sent_batches < due:
                index = sent_batches % len(self.pool)
                sent_batches += 1
                for client in list(self.clients):
                    if not client.subscription.items:
                        continue
                    for frame in self.frames_for(index, client):
                        try:
                            await client.connection.send(stamp(frame), text=True)
                        except ConnectionClosed:
                            break
                        self.frames_sent += 1
                        self.events_sent += frame.count(STAMP_PREFIX)
            await asyncio.sleep(TICK_SECONDS / 2)

    async def write_stats(self, path: str) -> None:
        while True:
            temporary = f"{path}.tmp"
            with open(temporary, "w") as handle:
                json.dump({"time": time.time(), "events_sent": self.events_sent, "frames_sent": self.frames_sent},
                          handle)
            os.replace(temporary, path)
            await asyncio.sleep(STATS_INTERVAL_SECONDS)


async def serve_until_signalled(options: argparse.Namespace) -> None:
    upstream = BenchUpstream(options.api_key, options.rate, options.seed, options.market)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopping.set)
    async with serve(upstream.converse, "127.0.0.1", options.port, compression=None, max_size=None) as server:
        port = server.sockets[0].getsockname()[1]
        upstream.prepare()
        tasks = [asyncio.ensure_future(upstream.clock())]
        if options.stats_file:
            tasks.append(asyncio.ensure_future(upstream.write_stats(options.stats_file)))
        print(f"bench upstream listening on ws://127.0.0.1:{port}/{options.market}", flush=True)
        await stopping.wait()
        for task in tasks:
            task.cancel()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.upstream")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--api-key", default="bench-upstream")
    parser.add_argument("--rate", type=float, default=10_000)
    parser.add_argument("--seed", default="1")
    parser.add_argument("--stats-file", default="")
    parser.add_argument("--market", choices=("options", "stocks"), default="options")
    asyncio.run(serve_until_signalled(parser.parse_args()))


if __name__ == "__main__":
    main()
