"""Relay mode end to end: the feed simulator allowing one connection per market, two feed relays
(``manage.py run_feed_relay``) and several daphne gateways with ``STREAM_FANOUT=relay``, real clients on each.

The upstream must see one connection per market however many gateway processes serve clients; every client gets
exactly its events; killing the active relay hands over to the standby, and the affected clients are closed with
1011 and stream again after reconnecting; killing a gateway lets its subscriptions expire upstream.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable

import pytest
import redis
from django.conf import settings

from streaming.relay.wire import RelayNames
from streaming.runtime.lock import KEY_PREFIX as LOCK_PREFIX
from tests.accounts.factories import make_key, make_user
from tests.e2e import processes
from tests.e2e.clients import read_until_closed
from tests.e2e.conftest import SIMULATOR_KEY
from tests.e2e.processes import LOG_DIR, PROJECT_DIR, GatewayProcess
from tests.e2e.test_streaming import Client, matching, open_client
from tests.reliability.figures import record

pytestmark = pytest.mark.e2e

MARKET = "stocks"
PREFIX = "cm:relay-e2e:"
NAMES = RelayNames(PREFIX, MARKET)
LEASE_TTL = 3.0
REGISTRATION_TTL = 3.0
GRACE = 1.0
WAIT_SECONDS = 30.0  # generous: two cores shared with other test runs
POLL_SECONDS = 0.05
RELAY_ENV = {
    "STREAM_RELAY_PREFIX": PREFIX,
    "STREAM_RELAY_LEASE_TTL": str(LEASE_TTL),
    "STREAM_RELAY_UNSUBSCRIBE_GRACE": str(GRACE),
}
GATEWAY_ENV = {
    "STREAM_FANOUT": "relay",
    "STREAM_RELAY_PREFIX": PREFIX,
    "STREAM_RELAY_REGISTRATION_TTL": str(REGISTRATION_TTL),
}
LULD = {"ev": "LULD", "T": "AAPL", "h": 2.5, "l": 1.25, "i": [], "z": 3, "t": 1, "q": 1}
# Overlapping, wildcard and symbol subscriptions, two clients per gateway.
SUBSCRIPTIONS = [
    "T.*,Q.AAPL",
    "T.AAPL,Q.AAPL,LULD.*",
    "Q.*",
    "T.MSFT,T.BRK.B,T.AAPL",
    "T.*,Q.MSFT,T.AAPL",
    "AM.*,A.AAPL,T.AAPL",
]


PROBE_PORT_LINE = re.compile(r"probes on http://.*:(\d+)/")


class RelayProcess:
    """``manage.py run_feed_relay --market M`` in a child process, logging to var/test-logs; by default its probe
    port is a free one on loopback (``--probe-port 0``), as several run on this machine."""

    def __init__(self, name: str, market: str, env: dict[str, str],
                 args: tuple[str, ...] = ("--probe-host", "127.0.0.1", "--probe-port", "0")) -> None:
        self.name = name
        self.market = market
        self.args = args
        self.env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "cutemarkets.settings",
            "DJANGO_DEBUG": "1",
            "DATABASE_URL": processes.test_database_url(),
            "REDIS_URL": settings.REDIS_URL,
            "PYTHONUNBUFFERED": "1",
            **env,
        }
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        self.log_path = LOG_DIR / f"{name}-{os.getpid()}-{time.monotonic_ns()}.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> RelayProcess:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "manage.py", "run_feed_relay", "--market", self.market, *self.args],
                cwd=PROJECT_DIR, env=self.env, stdout=log, stderr=subprocess.STDOUT,
            )
        return self

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait()

    async def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, and wait without blocking the event loop (the simulator lives in it)."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await wait_until(lambda: self.process.poll() is not None, timeout)
            except TimeoutError:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    async def probe_port(self) -> int:
        """The port its start-up line names, once it printed it."""
        await wait_until(lambda: PROBE_PORT_LINE.search(self.log()) or self.process.poll() is not None)
        found = PROBE_PORT_LINE.search(self.log())
        assert found, self.log()[-3000:]
        return int(found[1])


async def wait_until(predicate: Callable[[], object], timeout: float = WAIT_SECONDS) -> float:
    """Poll *predicate* (state in another process) until true; the seconds it took."""
    started = time.monotonic()
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(POLL_SECONDS)
    return time.monotonic() - started


class OpenConnectionsWatch:
    """The most upstream connections the simulator ever had open at once, checked on each of its state changes."""

    def __init__(self, simulator) -> None:
        self.simulator = simulator
        self.most = 0
        self._task = asyncio.ensure_future(simulator.wait_for(self._observe, timeout=3600))

    def _observe(self) -> bool:
        self.most = max(self.most, self.simulator.open_connections(MARKET))
        return False

    def stop(self) -> None:
        self._task.cancel()


@pytest.fixture
def redis_client():
    client = redis.Redis.from_url(settings.REDIS_URL)
    yield client
    client.close()


@pytest.fixture
def stocks_keys(transactional_db) -> list[str]:
    return [
        make_key(make_user(f"relay-{number}", plans={"stocks": "expert"}), "stocks")[1]
        for number in range(len(SUBSCRIPTIONS))
    ]


@pytest.fixture
async def relays(simulator):
    started: list[RelayProcess] = []

    def start(name: str) -> RelayProcess:
        relay = RelayProcess(name, MARKET, {
            **RELAY_ENV,
            "UPSTREAM_STOCKS_URL": simulator.url(MARKET),
            "UPSTREAM_OPTIONS_URL": "",
            "UPSTREAM_API_KEY": SIMULATOR_KEY,
        }).start()
        started.append(relay)
        return relay

    yield start
    for relay in started:
        assert await relay.stop() in (0, -signal.SIGKILL), relay.log()[-3000:]


@pytest.fixture
async def simulator():
    from streaming.simulator import FeedSimulator

    async with FeedSimulator(api_key=SIMULATOR_KEY, rate=0, seed=5, max_connections=1) as sim:
        yield sim


def streaming_relay(simulator, redis_client) -> Callable[[], bool]:
    return lambda: simulator.authenticated_connections(MARKET) == 1 and redis_client.exists(NAMES.live)


async def clients_on(gateways: list[GatewayProcess], keys: list[str]) -> list[Client]:
    """One client per key, spread over the gateways, each subscribed to its entry of SUBSCRIPTIONS."""
    clients = []
    for number, (key, params) in enumerate(zip(keys, SUBSCRIPTIONS, strict=True)):
        client = await open_client(gateways[number % len(gateways)], key, MARKET)
        acks = await client.subscribe(params)
        assert [ack["status"] for ack in acks] == ["success"] * len(acks)
        clients.append(client)
    return clients


def all_items() -> set[str]:
    return {item for params in SUBSCRIPTIONS for item in params.split(",")}


async def assert_each_client_gets_exactly_its_events(simulator, clients: list[Client]) -> None:
    for client in clients:
        client.data.clear()
    simulator.start_recording(MARKET)
    await simulator.emit(MARKET, 4000)
    await simulator.send_events(MARKET, [LULD])
    await simulator.flush_aggregates(MARKET)
    sent = simulator.recorded(MARKET)
    simulator.stop_recording(MARKET)
    for client, params in zip(clients, SUBSCRIPTIONS, strict=True):
        expected = matching(sent, set(params.split(",")))
        assert expected, params
        received = await client.read_data(len(expected))
        assert received == expected, params
        assert [list(event) for event in received] == [list(event) for event in expected]


def locks_released(redis_client) -> Callable[[], bool]:
    return lambda: not redis_client.keys(f"{LOCK_PREFIX}*")


def registrations_gone(redis_client) -> Callable[[], bool]:
    """No gateway registration left: each one's items are gone and the relay pruned it from the index."""
    return lambda: not redis_client.keys(f"{NAMES.items_prefix}*") and not redis_client.scard(NAMES.sources)


async def stop_all(gateways: list[GatewayProcess], relays: list[RelayProcess], redis_client) -> None:
    """Stop the gateways, let the relays drop their registrations, stop the relays: nothing may be left behind."""
    for gateway in gateways:
        await asyncio.to_thread(gateway.stop)
    await wait_until(registrations_gone(redis_client))
    for relay in relays:
        await relay.stop()
    assert locks_released(redis_client)()
    assert not redis_client.exists(NAMES.lease)


async def test_three_gateways_share_one_upstream_connection_and_clients_get_exactly_their_events(
    gateway_factory, relays, simulator, stocks_keys, redis_client
):
    watch = OpenConnectionsWatch(simulator)
    gateways = [gateway_factory(f"relay-gateway-{number}", **GATEWAY_ENV) for number in range(3)]
    standing = [relays("relay-a"), relays("relay-b")]
    await wait_until(streaming_relay(simulator, redis_client))

    clients = await clients_on(gateways, stocks_keys)
    await simulator.wait_for(lambda: simulator.subscriptions(MARKET) == all_items(), timeout=WAIT_SECONDS)
    await assert_each_client_gets_exactly_its_events(simulator, clients)

    assert simulator.connections_opened(MARKET) == 1
    assert simulator.connections_opened("options") == 0
    for client in clients:
        await client.websocket.close()
    await stop_all(gateways, standing, redis_client)
    watch.stop()
    assert watch.most == 1


async def test_killing_the_active_relay_hands_over_and_clients_reconnect(
    gateway_factory, relays, simulator, stocks_keys, redis_client
):
    watch = OpenConnectionsWatch(simulator)
    gateways = [gateway_factory(f"relay-gateway-{number}", **GATEWAY_ENV) for number in range(3)]
    active = relays("relay-active")
    await wait_until(streaming_relay(simulator, redis_client))
    standby = relays("relay-standby")
    await wait_until(lambda: "standing by" in standby.log())
    clients = await clients_on(gateways, stocks_keys)
    await assert_each_client_gets_exactly_its_events(simulator, clients)

    active.kill()
    killed_at = time.monotonic()
    outcomes = await asyncio.gather(*(read_until_closed(client.websocket) for client in clients))
    closed_after = time.monotonic() - killed_at
    assert [outcome.close_code for outcome in outcomes] == [1011] * len(clients)
    assert all(outcome.statuses[-1:] == ["error"] for outcome in outcomes)
    await wait_until(lambda: simulator.connections_opened(MARKET) == 2 and streaming_relay(simulator, redis_client)())
    takeover = time.monotonic() - killed_at
    record("relay takeover after SIGKILL", takeover, "s", lease_ttl=LEASE_TTL)
    record("relay clients closed after SIGKILL", closed_after, "s")

    # A client may reconnect at once; here all reconnect with the same keys, so wait for their old locks to go.
    await wait_until(locks_released(redis_client))
    clients = await clients_on(gateways, stocks_keys)
    await assert_each_client_gets_exactly_its_events(simulator, clients)
    assert simulator.connections_opened(MARKET) == 2
    assert "lease acquired" in standby.log()
    for client in clients:
        await client.websocket.close()
    await stop_all(gateways, [standby], redis_client)
    watch.stop()
    assert watch.most == 1


async def test_a_killed_gateways_items_expire_and_leave_the_upstream(
    gateway_factory, relays, simulator, stocks_keys, redis_client
):
    doomed = gateway_factory("relay-gateway-doomed", **GATEWAY_ENV)
    survivor = gateway_factory("relay-gateway-survivor", **GATEWAY_ENV)
    relay = relays("relay")
    await wait_until(streaming_relay(simulator, redis_client))
    lost = await open_client(doomed, stocks_keys[0], MARKET)
    await lost.subscribe("T.AAPL,Q.*")
    lost_lock = redis_client.keys(f"{LOCK_PREFIX}*")
    kept = await open_client(survivor, stocks_keys[1], MARKET)
    await kept.subscribe("T.MSFT,Q.AAPL")
    assert simulator.subscriptions(MARKET) == {"T.AAPL", "Q.*", "T.MSFT", "Q.AAPL"}

    await asyncio.to_thread(doomed.stop, signal.SIGKILL)
    killed_at = time.monotonic()
    await simulator.wait_for(lambda: simulator.subscriptions(MARKET) == {"T.MSFT", "Q.AAPL"}, timeout=WAIT_SECONDS)
    record("relay dead gateway items unsubscribed after", time.monotonic() - killed_at, "s",
           registration_ttl=REGISTRATION_TTL, grace=GRACE)
    await wait_until(lambda: redis_client.scard(NAMES.sources) == 1)  # the dead one is pruned, the survivor stays

    simulator.start_recording(MARKET)
    await simulator.emit(MARKET, 500)
    await simulator.send_events(MARKET, [{"ev": "T", "sym": "MSFT", "p": 1.0, "s": 1, "t": 1, "q": 1}])
    expected = matching(simulator.recorded(MARKET), {"T.MSFT", "Q.AAPL"})
    assert await kept.read_data(len(expected)) == expected
    await kept.websocket.close()
    await lost.websocket.close()
    await asyncio.to_thread(survivor.stop)
    redis_client.delete(*lost_lock)  # the killed gateway's connection lock expires by its own TTL (30 s)
    await stop_all([], [relay], redis_client)
