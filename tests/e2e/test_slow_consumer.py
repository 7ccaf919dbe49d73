"""A client that stops reading is cut off at its buffer budget under real daphne; other clients keep streaming."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import orjson
import pytest
from websockets.asyncio.client import connect

from streaming.simulator import FeedSimulator
from tests.accounts.factories import make_key, make_user
from tests.e2e.clients import bearer, expect_statuses, read_until_closed
from tests.e2e.conftest import SIMULATOR_KEY, simulator_env

pytestmark = pytest.mark.e2e

CLIENT_BUFFER_BYTES = 256 * 1024


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise LookupError("VmRSS")


@pytest.fixture
def two_users(transactional_db):
    return [
        make_key(make_user(name, plans={"options": "expert"}), "options")[1] for name in ("slow-user", "fast-user")
    ]


async def test_slow_consumer_is_closed_1008_within_its_budget(gateway_factory, two_users):
    slow_key, fast_key = two_users
    async with FeedSimulator(api_key=SIMULATOR_KEY, rate={"options": 8_000, "stocks": 0}, seed=3) as simulator:
        gateway = gateway_factory(
            "slow-consumer", **simulator_env(simulator), STREAM_CLIENT_BUFFER_BYTES=str(CLIENT_BUFFER_BYTES)
        )
        baseline = rss_bytes(gateway.process.pid)
        # max_queue=1: once one frame waits unread, the client stops reading its socket, like a stuck bot.
        slow = await connect(gateway.url("/v1/ws/options/"), additional_headers=bearer(slow_key), max_queue=1)
        fast = await connect(gateway.url("/v1/ws/options/"), additional_headers=bearer(fast_key), max_size=None)
        for websocket in (slow, fast):
            await expect_statuses(websocket, "connected", "auth_success")
            await websocket.send('{"action":"subscribe","params":"T.*,Q.*"}')
            await expect_statuses(websocket, "success", "success")

        fast_events = 0

        async def read_fast():
            nonlocal fast_events
            async for frame in fast:
                fast_events += len(orjson.loads(frame))

        reader = asyncio.ensure_future(read_fast())
        deadline = time.monotonic() + 30
        while "status=slow_consumer" not in gateway.log():
            assert time.monotonic() < deadline, "the slow client was never cut off"
            await asyncio.sleep(0.05)
        growth = rss_bytes(gateway.process.pid) - baseline

        outcome = await read_until_closed(slow)  # reading again drains the socket up to the close frame
        assert outcome.close_code == 1008
        assert outcome.statuses[-1] == "slow_consumer"

        delivered_before = fast_events
        async with asyncio.timeout(10):
            while fast_events < delivered_before + 5_000:
                await asyncio.sleep(0.05)
        reader.cancel()
        await fast.close()
    # Kernel socket buffers hold a few MB; daphne holds at most 64 KiB plus one frame; the outbox its budget.
    assert growth < 40 * 1024 * 1024, f"gateway grew by {growth / 1e6:.1f} MB"
