"""Load against real daphne processes: a connection storm, a same-user race, and a soak with sequence checks.

`make test` runs short variants; `RELIABILITY_SCALE=full make test PYTEST_ARGS="-m reliability"` runs the long
ones (thousands of handshakes, many race rounds, a long soak). Figures are recorded, not asserted as timings.
"""

from __future__ import annotations

import asyncio
import os
import random
import resource
import time
from collections import Counter
from pathlib import Path

import orjson
import pytest
from websockets.asyncio.client import connect

from streaming.runtime import lock
from streaming.simulator import FeedSimulator
from tests.accounts.factories import make_key, make_user
from tests.e2e.clients import bearer
from tests.e2e.conftest import ONE_ADDRESS_STORM, SIMULATOR_KEY, simulator_env
from tests.reliability.figures import record

pytestmark = [pytest.mark.reliability, pytest.mark.e2e]

FULL = os.environ.get("RELIABILITY_SCALE") == "full"
STORM_USERS = 1000 if FULL else 120
RACE_HANDSHAKES = 200
RACE_ROUNDS = 20 if FULL else 3
SOAK_SECONDS = float(os.environ.get("RELIABILITY_SOAK_SECONDS", 600 if FULL else 12))
SOAK_CLIENTS = 40 if FULL else 12
SOAK_RATE = 2000


def raise_file_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise LookupError("VmRSS")


async def decision(url: str, key: str, hold: asyncio.Event | None = None) -> tuple[str, int | None]:
    """Open a socket, read its verdict, keep admitted ones open until *hold* is set; (status, close code)."""
    async with connect(url, additional_headers=bearer(key), open_timeout=60, close_timeout=5) as websocket:
        async with asyncio.timeout(60):
            assert orjson.loads(await websocket.recv())[0]["status"] == "connected"
            status = orjson.loads(await websocket.recv())[0]["status"]
            if status == "auth_success":
                if hold is not None:
                    await hold.wait()
                return status, None
            try:
                await websocket.recv()
            except Exception:
                pass
            return status, websocket.close_code


@pytest.fixture
def storm_users(transactional_db):
    raise_file_limit()
    users = [make_user(f"storm-{n}", plans={"stocks": "expert"}) for n in range(STORM_USERS)]
    return [make_key(user, "stocks")[1] for user in users]


async def test_connection_storm_every_decision_right(gateway_factory, storm_users, clean_redis):
    gateways = [gateway_factory(f"storm-{n}", STREAM_LOCK_WAIT="0", STREAM_REJECT_GRACE="0.05", **ONE_ADDRESS_STORM)
                for n in range(2)]
    rng = random.Random(11)
    attempts = []
    for key in storm_users:  # every user twice (one must be refused), on random processes
        attempts += [("valid", key), ("duplicate", key)]
    attempts += [("invalid", f"cms_{'x' * 12}_{n:040d}") for n in range(STORM_USERS // 2)]
    attempts += [("malformed", f"garbage-{n}") for n in range(STORM_USERS // 2)]
    rng.shuffle(attempts)
    hold = asyncio.Event()
    started = time.monotonic()
    tasks = [
        asyncio.ensure_future(decision(rng.choice(gateways).url("/v1/ws/stocks/"), key, hold)) for _, key in attempts
    ]
    while sum(task.done() for task in tasks) < len(tasks) - STORM_USERS:  # all but the admitted ones decided
        await asyncio.sleep(0.05)
    elapsed = time.monotonic() - started
    hold.set()
    outcomes = Counter(await asyncio.gather(*tasks))
    expected = Counter({
        ("auth_success", None): STORM_USERS,
        ("max_connections", 4409): STORM_USERS,
        ("auth_failed", 4401): STORM_USERS,
    })
    assert outcomes == expected
    record("connection storm decisions per second", len(attempts) / elapsed, "handshakes/s",
           handshakes=len(attempts), processes=2)
    async with asyncio.timeout(15):
        while clean_redis.keys(f"{lock.KEY_PREFIX}*"):
            await asyncio.sleep(0.05)


@pytest.fixture
def racer(transactional_db):
    user = make_user("racer", plans={"stocks": "expert", "options": "expert"})
    keys = [make_key(user, "stocks")[1], make_key(user, "stocks")[1], make_key(user, "options")[1]]
    return user, keys


async def test_same_user_race_admits_exactly_one_every_round(gateway_factory, racer, clean_redis):
    raise_file_limit()
    user, keys = racer
    gateways = [gateway_factory(f"race-{n}", STREAM_LOCK_WAIT="0", STREAM_REJECT_GRACE="0.05", **ONE_ADDRESS_STORM)
                for n in range(2)]
    rng = random.Random(5)
    for round_number in range(RACE_ROUNDS):
        hold = asyncio.Event()
        tasks = []
        for n in range(RACE_HANDSHAKES):
            key = keys[n % len(keys)]
            market = "options" if key.startswith("cmo_") else "stocks"
            tasks.append(asyncio.ensure_future(decision(rng.choice(gateways).url(f"/v1/ws/{market}/"), key, hold)))
        while sum(task.done() for task in tasks) < RACE_HANDSHAKES - 1:
            await asyncio.sleep(0.02)
        hold.set()
        outcomes = Counter(await asyncio.gather(*tasks))
        assert outcomes == Counter({("auth_success", None): 1, ("max_connections", 4409): RACE_HANDSHAKES - 1}), (
            f"round {round_number}: {outcomes}"
        )
        async with asyncio.timeout(10):
            while clean_redis.exists(f"{lock.KEY_PREFIX}{user.pk}"):
                await asyncio.sleep(0.02)
    record("same-user race rounds with exactly one admitted", RACE_ROUNDS, "rounds",
           handshakes_per_round=RACE_HANDSHAKES, processes=2)


@pytest.fixture
def soak_keys(transactional_db):
    raise_file_limit()
    return [make_key(make_user(f"soak-{n}", plans={"stocks": "expert"}), "stocks")[1] for n in range(SOAK_CLIENTS)]


async def test_soak_no_loss_no_reorder_flat_memory(gateway_factory, soak_keys):
    rng = random.Random(3)
    async with FeedSimulator(api_key=SIMULATOR_KEY, rate={"stocks": SOAK_RATE, "options": 0}, seed=9) as sim:
        gateway = gateway_factory("soak", **simulator_env(sim))
        symbols = ["AAPL", "MSFT", "NVDA", "TSLA", "AMZN", "META", "SPY", "BRK.B", "GOOGL", "JPM"]
        plans = []
        for n, key in enumerate(soak_keys):
            if n % 4 == 0:
                items = ["T.*", "Q.*"]
            else:
                items = [f"{ev}.{sym}" for ev in ("T", "Q") for sym in rng.sample(symbols, 3)]
            plans.append((key, items))
        sim.start_recording("stocks")
        received: list[list[dict]] = [[] for _ in plans]
        stop = asyncio.Event()
        ready = 0

        async def run_client(index: int, key: str, items: list[str]) -> None:
            nonlocal ready
            async with connect(gateway.url("/v1/ws/stocks/"), additional_headers=bearer(key), max_size=None) as ws:
                await ws.recv()
                await ws.recv()
                await ws.send(orjson.dumps({"action": "subscribe", "params": ",".join(items)}).decode())
                acks = 0
                ready_counted = False
                while not stop.is_set():
                    try:
                        frame = await asyncio.wait_for(ws.recv(), 0.5)
                    except TimeoutError:
                        continue
                    for event in orjson.loads(frame):
                        if event["ev"] == "status":
                            acks += 1
                        else:
                            received[index].append(event)
                    if acks == len(items) and not ready_counted:
                        ready_counted = True
                        ready += 1

        tasks = [asyncio.ensure_future(run_client(n, key, items)) for n, (key, items) in enumerate(plans)]
        async with asyncio.timeout(30):
            while ready < len(plans):
                await asyncio.sleep(0.05)
        start_rss = rss_bytes(gateway.process.pid)
        samples = []
        end = time.monotonic() + SOAK_SECONDS
        while time.monotonic() < end:
            await asyncio.sleep(min(1.0, SOAK_SECONDS / 10))
            samples.append(rss_bytes(gateway.process.pid))
        # Close the window, keep the feed running, and wait until every client has received the last event of the
        # window it subscribed to (events recorded at the end may still be on their way, so no fixed drain time).
        sim.stop_recording("stocks")
        sent = sim.recorded("stocks")
        expected_per_client = []
        for _, items in plans:
            wanted = set(items)
            expected_per_client.append([
                event for event in sent
                if f"{event['ev']}.*" in wanted or f"{event['ev']}.{event.get('sym', event.get('T'))}" in wanted
            ])
        async with asyncio.timeout(30):
            while not all(
                expected[-1] in events for expected, events in zip(expected_per_client, received, strict=True)
            ):
                await asyncio.sleep(0.1)
        stop.set()
        await asyncio.gather(*tasks)

    total = 0
    for expected, events in zip(expected_per_client, received, strict=True):
        assert events, "a client received nothing"
        start = expected.index(events[0])
        window = expected[start:]
        assert events[: len(window)] == window, "loss, reorder or duplicate"
        total += len(window)
    growth = max(samples) - start_rss
    record("soak delivered events", total, "events", seconds=SOAK_SECONDS, clients=len(plans), rate=SOAK_RATE)
    record("soak gateway RSS growth", growth / 1e6, "MB", seconds=SOAK_SECONDS)
    assert growth < 30 * 1024 * 1024, f"memory grew by {growth / 1e6:.1f} MB"
