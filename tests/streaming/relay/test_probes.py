"""A feed relay's probe port on a real socket, with the relay in this event loop against the suite's real Redis and
the real feed simulator: readiness as active and as standby, and why not; metrics; what the port answers and what
hostile clients cannot do to it. The relay process itself (``manage.py run_feed_relay``) is in
tests/e2e/test_relay_probes.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import orjson
import pytest
import redis.asyncio

from devstack.ports import free_port
from streaming.conf import Upstream
from streaming.relay.leader import FeedRelay
from streaming.relay.metrics import relay_registry
from streaming.relay.probes import HEAD_TIMEOUT_SECONDS, MAX_CONNECTIONS, MAX_HEAD_BYTES, ProbeServer
from streaming.relay.source import RelaySource
from streaming.relay.wire import RelayNames
from streaming.runtime.redis_client import redis_client
from streaming.simulator import FeedSimulator
from tests.streaming.relay.probe_client import ProbeResponse, metrics, parse_response, request, until

KEY = "relay-probe-test-key"
PREFIX = "cm:relay-probe-test:"
MARKET = "stocks"
NAMES = RelayNames(PREFIX, MARKET)
LEASE_TTL = 2.0
GRACE = 0.5
TIMEOUT = 10.0
HOST = "127.0.0.1"
TRADE = {"ev": "T", "sym": "AAPL", "p": 1.0, "s": 1, "t": 1, "q": 1}
READY_ACTIVE = {"status": "ready", "checks": {"redis": "ok", "lease": "held", "upstream": "connected"}, "failed": []}
READY_STANDBY = {
    "status": "ready",
    "checks": {"redis": "ok", "lease": "held by another relay", "upstream": "not needed"},
    "failed": [],
}


class ProbedRelay:
    def __init__(self, relay: FeedRelay, probes: ProbeServer, host: str) -> None:
        self.relay = relay
        self.probes = probes
        self.host = host
        self.task: asyncio.Task[None] = asyncio.ensure_future(relay.run())

    async def get(self, path: str, **options) -> ProbeResponse:
        return await request(self.host, self.probes.port, path, **options)

    async def metrics(self) -> dict[str, float]:
        return await metrics(self.host, self.probes.port, MARKET)

    async def ready_as(self, body: dict) -> bool:
        response = await request(self.host, self.probes.port, "/readyz")
        return response.status == 200 and response.json() == body


Start = Callable[..., Awaitable[ProbedRelay]]



@pytest.fixture
async def simulator() -> AsyncIterator[FeedSimulator]:
    async with FeedSimulator(api_key=KEY, rate=0, seed=4, max_connections=1) as sim:
        yield sim


@pytest.fixture
async def probed_relays(simulator, relay_settings) -> AsyncIterator[Start]:
    """Start relays with their probe port on a free port of *host*; all are stopped (cleanly) at the end."""
    running: list[ProbedRelay] = []

    async def start(host: str = HOST, client: redis.asyncio.Redis | None = None,
                    url: str | None = None) -> ProbedRelay:
        relay = FeedRelay(MARKET, Upstream(url or simulator.url(MARKET), KEY), NAMES, client or redis_client(),
                          LEASE_TTL, GRACE)
        probes = ProbeServer(relay.status, relay_registry(relay.status))
        await probes.start(host, 0)
        running.append(ProbedRelay(relay, probes, host))
        return running[-1]

    yield start
    for probed in running:
        probed.relay.stop()
    async with asyncio.timeout(TIMEOUT):
        await asyncio.gather(*(probed.task for probed in running))
    for probed in running:
        await probed.probes.close()


async def read_until(frames: AsyncIterator[bytes], wanted: dict) -> None:
    async with asyncio.timeout(TIMEOUT):
        while wanted not in orjson.loads(await anext(frames)):
            pass


def async_check(read: Callable[[], Awaitable[dict[str, float]]],
                predicate: Callable[[dict[str, float]], bool]) -> Callable[[], Awaitable[bool]]:
    """A check for `until`: *predicate* of what *read* answers now."""
    async def check() -> bool:
        return predicate(await read())

    return check


async def subscribed(source: RelaySource, simulator: FeedSimulator, items: list[str]) -> None:
    await source.subscribe(items)
    await simulator.wait_for(lambda: simulator.subscriptions(MARKET) == set(items), timeout=TIMEOUT)


async def test_the_lease_holder_is_ready_and_counts_what_it_publishes_and_the_standby_is_ready(
    probed_relays, simulator
):
    active = await probed_relays()
    await until(lambda: active.ready_as(READY_ACTIVE))
    healthz = await active.get("/healthz")
    assert (healthz.status, healthz.json()) == (200, {"status": "ok"})
    assert healthz.headers["content-type"] == "application/json"
    before = await active.metrics()
    assert before["cutemarkets_relay_lease_held"] == 1
    assert before["cutemarkets_relay_upstream_connected"] == 1
    assert before["cutemarkets_relay_registered_items"] == 0
    assert before["cutemarkets_relay_lease_acquisitions_total"] == 1
    assert before["cutemarkets_relay_upstream_failures_total"] == 0

    source = await RelaySource.open(MARKET)
    frames = source.frames()
    await subscribed(source, simulator, ["T.AAPL", "Q.AAPL"])
    await until(async_check(active.metrics, lambda now: now["cutemarkets_relay_registered_items"] == 2))
    await simulator.send_events(MARKET, [TRADE])
    await read_until(frames, TRADE)
    await until(async_check(active.metrics, lambda now: now["cutemarkets_relay_frames_published_total"]
                            > before["cutemarkets_relay_frames_published_total"]))

    standby = await probed_relays()
    await until(lambda: standby.ready_as(READY_STANDBY))
    waiting = await standby.metrics()
    assert (waiting["cutemarkets_relay_lease_held"], waiting["cutemarkets_relay_upstream_connected"]) == (0, 0)
    assert waiting["cutemarkets_relay_lease_acquisitions_total"] == 0

    active.relay.stop()
    await until(lambda: standby.ready_as(READY_ACTIVE))
    took_over = await standby.metrics()
    assert took_over["cutemarkets_relay_lease_held"] == 1
    assert took_over["cutemarkets_relay_lease_acquisitions_total"] == 1
    await source.close()


async def test_a_relay_that_cannot_reach_redis_is_alive_but_not_ready_and_says_why(probed_relays):
    nowhere = redis.asyncio.Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=1.0)
    relay = await probed_relays(client=nowhere)
    unreachable = {
        "status": "unavailable",
        "checks": {"redis": "unreachable", "lease": "unknown", "upstream": "not needed"},
        "failed": ["redis"],
    }

    async def says_unreachable() -> bool:
        response = await relay.get("/readyz")
        return response.status == 503 and response.json() == unreachable

    await until(says_unreachable)
    assert (await relay.get("/healthz")).status == 200
    assert (await relay.metrics())["cutemarkets_relay_lease_held"] == 0
    await nowhere.aclose()


async def test_a_lease_holder_without_its_upstream_is_not_ready(probed_relays):
    relay = await probed_relays(url=f"ws://127.0.0.1:{free_port()}/stocks")
    down = {
        "status": "unavailable",
        "checks": {"redis": "ok", "lease": "held", "upstream": "not connected"},
        "failed": ["upstream"],
    }

    async def says_upstream_down() -> bool:
        response = await relay.get("/readyz")
        return response.status == 503 and response.json() == down

    await until(says_upstream_down)
    await until(async_check(relay.metrics, lambda now: now["cutemarkets_relay_upstream_failures_total"] >= 2))
    samples = await relay.metrics()
    assert (samples["cutemarkets_relay_lease_held"], samples["cutemarkets_relay_upstream_connected"]) == (1, 0)


async def test_a_holder_whose_lease_is_taken_leaves_the_upstream_and_stands_by_ready(probed_relays, simulator):
    relay = await probed_relays()
    await until(lambda: relay.ready_as(READY_ACTIVE))
    source = await RelaySource.open(MARKET)
    await subscribed(source, simulator, ["T.AAPL"])
    await until(async_check(relay.metrics, lambda now: now["cutemarkets_relay_registered_items"] == 1))

    await redis_client().set(NAMES.lease, "someone-else", px=60_000)  # e.g. taken over after a Redis failover
    await until(lambda: relay.ready_as(READY_STANDBY))
    samples = await relay.metrics()
    assert (samples["cutemarkets_relay_lease_held"], samples["cutemarkets_relay_upstream_connected"]) == (0, 0)
    assert samples["cutemarkets_relay_registered_items"] == 0
    await simulator.wait_for(lambda: simulator.open_connections(MARKET) == 0, timeout=TIMEOUT)
    await source.close()
    await redis_client().delete(NAMES.lease)


async def test_the_port_answers_get_on_its_three_paths_only(probed_relays):
    relay = await probed_relays()
    await until(lambda: relay.ready_as(READY_ACTIVE))
    for method in ("POST", "HEAD", "DELETE"):
        refused = await relay.get("/healthz", method=method)
        assert (refused.status, refused.headers["allow"]) == (405, "GET")
    assert (await relay.get("/")).status == 404
    assert (await relay.get("/metrics/extra")).status == 404
    assert (await relay.get("/healthz?verbose=1")).status == 200
    text = await relay.get("/metrics")
    assert text.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert b"process_resident_memory_bytes" in text.body  # the process's own series come along
    assert b"cutemarkets_stream_" not in text.body  # the relay's registry, not the gateway's
    openmetrics = await relay.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert openmetrics.headers["content-type"].startswith("application/openmetrics-text")
    assert openmetrics.body.endswith(b"# EOF\n")

    relay.relay.stop()
    await relay.task
    stopped = await relay.get("/healthz")
    assert (stopped.status, stopped.json()) == (503, {"status": "stopped"})


async def raw_exchange(host: str, port: int, data: bytes) -> bytes:
    """Send *data* as it is and read until the server closes."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(data)
        async with asyncio.timeout(TIMEOUT):
            return await reader.read()
    finally:
        writer.close()


async def test_slow_and_garbage_clients_hold_up_neither_the_probes_nor_the_feed(probed_relays, simulator):
    relay = await probed_relays(host="127.0.0.2")
    host, port = relay.host, relay.probes.port
    await until(lambda: relay.ready_as(READY_ACTIVE))
    source = await RelaySource.open(MARKET)
    frames = source.frames()
    await subscribed(source, simulator, ["T.AAPL"])

    # A client trickling a head that never ends, and one that sends half a head and goes silent.
    trickler_reader, trickler = await asyncio.open_connection(host, port)
    trickler.write(b"GET /healthz HTTP/1.1\r\n")
    silent_reader, silent = await asyncio.open_connection(host, port)
    silent.write(b"GET /readyz HTTP/1.1\r\nHost: x\r\n")
    opened_at = time.monotonic()

    async def trickle() -> None:
        while True:
            trickler.write(b"X")
            await asyncio.sleep(0.1)  # the pace of the attack, not a synchronisation

    trickling = asyncio.ensure_future(trickle())
    try:
        garbage = parse_response(await raw_exchange(host, port, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\r\n\r\n"))
        assert garbage.status == 400
        oversized = parse_response(await raw_exchange(host, port, b"GET /healthz HTTP/1.1\r\n" + b"X" * MAX_HEAD_BYTES))
        assert oversized.status == 431
        for _ in range(5):
            answered_at = time.monotonic()
            assert (await relay.get("/healthz", timeout=2.0)).status == 200
            assert time.monotonic() - answered_at < 1.0
            await simulator.send_events(MARKET, [TRADE])
            await read_until(frames, TRADE)

        # The head deadline ends both slow clients: each gets 408 and the connection closes.
        for reader in (trickler_reader, silent_reader):
            async with asyncio.timeout(HEAD_TIMEOUT_SECONDS + TIMEOUT):
                assert parse_response(await reader.read()).status == 408
        assert time.monotonic() - opened_at >= HEAD_TIMEOUT_SECONDS
    finally:
        trickling.cancel()
        trickler.close()
        silent.close()
        await source.close()
    assert (await relay.get("/healthz")).status == 200


async def test_connections_beyond_the_cap_are_dropped_on_arrival(probed_relays):
    relay = await probed_relays()
    host, port = relay.host, relay.probes.port
    idle = [await asyncio.open_connection(host, port) for _ in range(MAX_CONNECTIONS)]
    try:
        # Accepted after the idle ones, so its handler starts once theirs have taken every place.
        extra_reader, extra = await asyncio.open_connection(host, port)
        async with asyncio.timeout(HEAD_TIMEOUT_SECONDS / 2):  # a served one would get its 408 only later
            try:
                assert await extra_reader.read() == b""
            except ConnectionResetError:
                pass
        extra.close()
    finally:
        for _, writer in idle:
            writer.close()
    await until(lambda: relay.ready_as(READY_ACTIVE))
