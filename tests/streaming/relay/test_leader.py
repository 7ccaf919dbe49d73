"""Feed relays and relay sources in one event loop, against the suite's real Redis and the real feed simulator:
acks, data, gaps, registration expiry, lease hand-over. The source on its own, fed envelopes by the test, is in
test_source.py; processes and daphne are covered in tests/e2e/test_relay.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import orjson
import pytest
import redis.asyncio
from django.conf import settings as django_settings

from streaming.conf import Upstream
from streaming.exceptions import RelayGap, UpstreamUnavailable
from streaming.hub.source import open_upstream
from streaming.relay.leader import FeedRelay
from streaming.relay.source import Registration, RelaySource
from streaming.relay.wire import RelayNames
from streaming.runtime.redis_client import redis_client
from streaming.simulator import FeedSimulator
from streaming.upstream.connection import UpstreamConnection

KEY = "relay-test-key"
PREFIX = "cm:relay-test:"
MARKET = "stocks"
LEASE_TTL = 2.0
GRACE = 0.5
TIMEOUT = 10.0
NAMES = RelayNames(PREFIX, MARKET)
NOT_SILENCE = "missed|lost the Redis subscription"  # seen at once, not after the relay's silence limit



@pytest.fixture
async def simulator() -> AsyncIterator[FeedSimulator]:
    async with FeedSimulator(api_key=KEY, rate=0, seed=3, max_connections=1) as sim:
        yield sim


@pytest.fixture
async def relays(simulator, relay_settings) -> AsyncIterator[Callable[[], Awaitable[FeedRelay]]]:
    """Start feed relays for the stocks market in this loop; all are stopped (cleanly) at the end."""
    running: list[tuple[FeedRelay, asyncio.Task]] = []

    async def start() -> FeedRelay:
        relay = FeedRelay(MARKET, Upstream(simulator.url(MARKET), KEY), NAMES, redis_client(), LEASE_TTL, GRACE)
        running.append((relay, asyncio.ensure_future(relay.run())))
        return relay

    yield start
    for relay, _ in running:
        relay.stop()
    async with asyncio.timeout(TIMEOUT):
        await asyncio.gather(*(task for _, task in running))


async def streaming(simulator: FeedSimulator) -> None:
    """Wait until a relay streams (its upstream connection is authenticated and it announced itself)."""
    client = redis_client()
    async with asyncio.timeout(TIMEOUT):
        while not (simulator.authenticated_connections(MARKET) and await client.exists(NAMES.live)):
            await asyncio.sleep(0.02)


async def read(frames, count: int) -> list[dict]:
    """The next events (statuses and data) from a source, at least *count* of them."""
    events: list[dict] = []
    async with asyncio.timeout(TIMEOUT):
        while len(events) < count:
            events.extend(orjson.loads(await anext(frames)))
    return events


def ack(item: str) -> dict:
    return {"ev": "status", "status": "success", "message": f"subscribed to: {item}"}


@contextlib.asynccontextmanager
async def monitored() -> AsyncIterator[list[str]]:
    """Every command Redis runs meanwhile, scripts' own included (MONITOR), as "NAME arg arg..." strings."""
    commands: list[str] = []
    end = f"end-of-monitoring-{time.monotonic_ns()}"
    watching = threading.Event()

    def watch() -> None:
        with redis.Redis.from_url(django_settings.REDIS_URL).monitor() as monitor:
            watching.set()
            for entry in monitor.listen():
                if end in entry["command"]:
                    return
                commands.append(entry["command"])

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    await asyncio.to_thread(watching.wait, TIMEOUT)
    try:
        yield commands
    finally:
        await redis_client().echo(end)
        await asyncio.to_thread(watcher.join, TIMEOUT)


async def test_relay_mode_opens_a_source_and_process_mode_the_feed(relay_settings, relays, simulator):
    await relays()
    await streaming(simulator)
    source = await open_upstream(MARKET, "unused", "unused")
    assert isinstance(source, RelaySource)
    await source.close()
    relay_settings.STREAM_FANOUT = "process"
    connection = await open_upstream(MARKET, simulator.url("options"), KEY)
    assert isinstance(connection, UpstreamConnection)
    await connection.close()


def test_in_relay_mode_a_market_is_served_with_its_url_alone(relay_settings):
    from streaming.conf import stream_settings

    assert stream_settings().upstream(MARKET) is not None  # the key stays with the relays
    relay_settings.STREAM_FANOUT = "process"
    assert stream_settings().upstream(MARKET) is None  # its own connection needs the key too


async def test_acks_come_once_subscribed_upstream_then_exactly_the_data(relays, simulator):
    await relays()
    await streaming(simulator)
    source = await RelaySource.open(MARKET)
    frames = source.frames()
    await source.subscribe(["T.AAPL", "Q.*"])
    assert sorted(await read(frames, 2), key=str) == sorted([ack("T.AAPL"), ack("Q.*")], key=str)
    assert simulator.subscriptions(MARKET) == {"T.AAPL", "Q.*"}

    simulator.start_recording(MARKET)
    await simulator.emit(MARKET, 2000)
    sent = simulator.recorded(MARKET)
    expected = [event for event in sent if event["ev"] == "Q" or (event["ev"] == "T" and event["sym"] == "AAPL")]
    assert await read(frames, len(expected)) == expected
    await source.close()


async def test_a_second_process_gets_its_own_ack_for_an_item_already_upstream(relays, simulator):
    await relays()
    await streaming(simulator)
    first, second = await RelaySource.open(MARKET), await RelaySource.open(MARKET)
    first_frames, second_frames = first.frames(), second.frames()
    await first.subscribe(["T.AAPL"])
    assert await read(first_frames, 1) == [ack("T.AAPL")]
    await second.subscribe(["T.AAPL", "T.MSFT"])
    assert sorted(await read(second_frames, 2), key=str) == [ack("T.AAPL"), ack("T.MSFT")]
    # The first process never sees the second one's acks: its next events are data.
    trade = {"ev": "T", "sym": "MSFT", "p": 1.0, "s": 1, "t": 1, "q": 1}
    await simulator.send_events(MARKET, [trade])
    assert await read(first_frames, 1) == [trade]
    assert await read(second_frames, 1) == [trade]
    await first.close()
    await second.close()


async def test_items_nobody_needs_are_unsubscribed_upstream_after_the_grace(relays, simulator):
    await relays()
    await streaming(simulator)
    source = await RelaySource.open(MARKET)
    frames = source.frames()
    await source.subscribe(["T.AAPL", "T.MSFT"])
    await read(frames, 2)
    started = time.monotonic()
    await source.unsubscribe(["T.AAPL"])
    await simulator.wait_for(lambda: simulator.subscriptions(MARKET) == {"T.MSFT"}, timeout=TIMEOUT)
    assert time.monotonic() - started >= GRACE
    await source.close()
    await simulator.wait_for(lambda: simulator.subscriptions(MARKET) == set(), timeout=TIMEOUT)


async def test_a_registration_nobody_refreshes_expires_and_its_items_go(relays, simulator):
    """What a gateway process killed with SIGKILL leaves behind: a registration without a keeper."""
    await relays()
    await streaming(simulator)
    orphan = Registration(redis_client(), NAMES, "dead-process", ttl=1.0)
    await orphan.add(["T.NVDA"], "dead-process/1")
    await simulator.wait_for(lambda: "T.NVDA" in simulator.subscriptions(MARKET), timeout=TIMEOUT)
    await simulator.wait_for(lambda: "T.NVDA" not in simulator.subscriptions(MARKET), timeout=TIMEOUT)
    assert not await redis_client().sismember(NAMES.sources, "dead-process")


async def test_a_change_costs_the_relay_its_own_items_and_no_read_of_what_others_hold(relays, simulator):
    """The relay follows announced changes: one process holding thousands of items costs nothing to another
    process's one-item subscription (no re-read of the registrations, no rebuild of the union)."""
    await relays()
    await streaming(simulator)
    holder, newcomer = await RelaySource.open(MARKET), await RelaySource.open(MARKET)
    holder_frames, newcomer_frames = holder.frames(), newcomer.frames()
    held = [f"T.S{number}" for number in range(5000)]
    await holder.subscribe(held)
    await read(holder_frames, len(held))
    async with monitored() as commands:
        await newcomer.subscribe(["T.ONE"])
        assert await read(newcomer_frames, 1) == [ack("T.ONE")]
    assert any(command.upper().startswith("PUBLISH") for command in commands)  # the monitor saw the ack go out
    reads = [command for command in commands
             if command.split(" ", 1)[0].upper() in {"SMEMBERS", "SUNION", "SSCAN", "SINTER"}
             and NAMES.items_prefix in command]
    assert reads == []
    assert simulator.subscriptions(MARKET) == set(held) | {"T.ONE"}
    await holder.close()
    await newcomer.close()


async def test_a_starting_relay_subscribes_what_was_registered_before_it(relays, simulator):
    """A relay taking over (or restarting) reads the registrations once, then follows their changes."""
    earlier = Registration(redis_client(), NAMES, "earlier-process", ttl=30.0)
    await earlier.add(["T.NVDA", "Q.NVDA"], "earlier-process/1")
    await relays()
    await simulator.wait_for(lambda: simulator.subscriptions(MARKET) == {"T.NVDA", "Q.NVDA"}, timeout=TIMEOUT)
    await earlier.remove(["Q.NVDA"])
    await simulator.wait_for(lambda: simulator.subscriptions(MARKET) == {"T.NVDA"}, timeout=TIMEOUT)
    await earlier.release()
    await simulator.wait_for(lambda: simulator.subscriptions(MARKET) == set(), timeout=TIMEOUT)


async def test_a_relay_ignores_requests_that_are_not_registration_changes(relays, simulator):
    await relays()
    await streaming(simulator)
    await redis_client().publish(NAMES.requests, "T.AAPL please")
    source = await RelaySource.open(MARKET)
    frames = source.frames()
    await source.subscribe(["T.AAPL"])
    assert await read(frames, 1) == [ack("T.AAPL")]
    assert simulator.subscriptions(MARKET) == {"T.AAPL"}
    await source.close()


async def test_a_slow_subscriber_is_disconnected_by_redis_and_sees_a_gap(relays, simulator):
    """Redis bounds what it buffers for a subscriber (client-output-buffer-limit pubsub); the relay never waits."""
    await relays()
    await streaming(simulator)
    config = redis.asyncio.Redis.from_url(django_settings.REDIS_URL)
    original = (await config.config_get("client-output-buffer-limit"))["client-output-buffer-limit"]
    await config.config_set("client-output-buffer-limit", "pubsub 262144 131072 1")
    try:
        slow = await RelaySource.open(MARKET)
        slow_frames = slow.frames()
        await slow.subscribe(["T.*", "Q.*"])
        await read(slow_frames, 2)
        for _ in range(20):  # about 2 MB, while the slow source reads nothing
            await simulator.emit(MARKET, 1000)
            await asyncio.sleep(0.05)
        with pytest.raises(RelayGap, match=NOT_SILENCE):
            await read(slow_frames, 1_000_000)
            await slow.close()
    finally:
        await config.config_set("client-output-buffer-limit", original)
        await config.aclose()


async def test_a_stopping_relay_ends_the_stream_and_hands_over(relays, simulator):
    active = await relays()
    await streaming(simulator)
    source = await RelaySource.open(MARKET)
    frames = source.frames()
    await source.subscribe(["T.AAPL"])
    await read(frames, 1)
    standby = await relays()
    epoch = int(await redis_client().get(NAMES.epoch))
    active.stop()
    with pytest.raises(UpstreamUnavailable, match="feed relay: relay stopped streaming"):
        await read(frames, 1_000_000)
    await source.close()
    async with asyncio.timeout(TIMEOUT):
        while int(await redis_client().get(NAMES.epoch) or 0) == epoch or not await redis_client().exists(NAMES.live):
            await asyncio.sleep(0.02)
    assert simulator.connections_opened(MARKET) == 2
    assert simulator.open_connections(MARKET) == 1
    assert standby.stopping.is_set() is False


async def test_only_the_lease_holder_connects_upstream(relays, simulator):
    for _ in range(3):
        await relays()
    await streaming(simulator)
    await asyncio.sleep(LEASE_TTL)  # standbys keep polling the lease meanwhile
    assert simulator.connections_opened(MARKET) == 1
    assert simulator.open_connections(MARKET) == 1


async def test_a_relay_that_loses_its_lease_leaves_the_upstream(relays, simulator):
    await relays()
    await streaming(simulator)
    client = redis_client()
    await client.set(NAMES.lease, "someone-else", px=60_000)  # e.g. taken over after a Redis failover
    await simulator.wait_for(lambda: simulator.open_connections(MARKET) == 0, timeout=LEASE_TTL)
    await asyncio.sleep(LEASE_TTL / 2)
    assert simulator.open_connections(MARKET) == 0
    await client.delete(NAMES.lease)
    await streaming(simulator)
    assert simulator.connections_opened(MARKET) == 2
