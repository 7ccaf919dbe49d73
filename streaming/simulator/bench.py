"""``python -m streaming.simulator.bench``: measure the simulator's maximum event rate on this machine.

It prints two figures: events/s the generator alone produces (no sockets), and events/s one wildcard client
receives from a simulator running in its own process at an unreachable rate, i.e. generation plus sending.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import subprocess
import sys
import time

from websockets.asyncio.client import connect

from .fanout import Subscription
from .feed import cluster_feed
from .protocol import CLUSTER_STOCKS

BENCH_KEY = "bench"
UNREACHABLE_RATE = 100_000_000
EVERYTHING = "T.*,Q.*,A.*,AM.*,LULD.*"
EVENT_MARKER = b'"ev":'
LISTENING_PORT = re.compile(r":(\d+)/")


def generation_rate(cluster: str, seconds: float) -> float:
    """Events/s generated, encoded and framed for a wildcard subscriber, in this process, without sockets."""
    feed = cluster_feed(cluster, seed=1)
    everything = Subscription(EVERYTHING.split(","))
    events = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        batch = feed.generate(10_000, time.time_ns() // 1_000_000)
        batch.frames_for(everything)
        events += len(batch)
    return events / (time.perf_counter() - started)


async def delivery_rate(cluster: str, seconds: float) -> float:
    """Events/s one wildcard client receives from ``python -m streaming.simulator`` at full speed."""
    server = subprocess.Popen(
        [sys.executable, "-m", "streaming.simulator", "--port", "0", "--api-key", BENCH_KEY,
         "--rate", f"{cluster}={UNREACHABLE_RATE}"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        listening = LISTENING_PORT.search(server.stdout.readline())
        assert listening, "the simulator did not announce its port"
        port = int(listening.group(1))
        async with connect(f"ws://127.0.0.1:{port}/{cluster}") as client:
            await client.recv()
            await client.send(f'{{"action":"auth","params":"{BENCH_KEY}"}}')
            await client.recv()
            await client.send(f'{{"action":"subscribe","params":"{EVERYTHING}"}}')
            events = 0
            started = time.perf_counter()
            while time.perf_counter() - started < seconds:
                events += (await client.recv(decode=False)).count(EVENT_MARKER)
            return events / (time.perf_counter() - started)
    finally:
        server.terminate()
        server.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cluster", default=CLUSTER_STOCKS)
    parser.add_argument("--seconds", type=float, default=5.0)
    options = parser.parse_args()
    print(f"generation only:        {generation_rate(options.cluster, options.seconds):>12,.0f} events/s")
    delivered = asyncio.run(delivery_rate(options.cluster, options.seconds))
    print(f"delivered to 1 client:  {delivered:>12,.0f} events/s")


if __name__ == "__main__":
    main()
