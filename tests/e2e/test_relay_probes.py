"""The feed relay's probe port through the real command (``manage.py run_feed_relay``), with the feed simulator
allowing one connection per market, a real daphne gateway in relay mode and a real client: readiness of the holder
and of the standby, the metrics following a subscription and a takeover after SIGKILL, a relay without Redis, and
docker-compose.yml's health check run as the container runs it.

The port itself (methods, paths, hostile clients) is tested with the relay in-process:
tests/streaming/relay/test_probes.py.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys

import pytest

from devstack.ports import free_port
from tests.accounts.factories import make_key, make_user
from tests.deployment import compose
from tests.e2e.conftest import SIMULATOR_KEY
from tests.e2e.processes import PROJECT_DIR
from tests.e2e.test_relay import GATEWAY_ENV, MARKET, RELAY_ENV, RelayProcess, wait_until
from tests.e2e.test_streaming import open_client
from tests.streaming.relay.probe_client import ProbeResponse, metrics, request, until

pytestmark = pytest.mark.e2e

HOST = "127.0.0.1"
FREE_PROBE_PORT = ("--probe-host", HOST, "--probe-port", "0")
TIMEOUT = 30.0  # generous: two cores shared with other test runs
TRADE = {"ev": "T", "sym": "AAPL", "p": 1.0, "s": 1, "t": 1, "q": 1}
READY_ACTIVE = {"status": "ready", "checks": {"redis": "ok", "lease": "held", "upstream": "connected"}, "failed": []}
READY_STANDBY = {
    "status": "ready",
    "checks": {"redis": "ok", "lease": "held by another relay", "upstream": "not needed"},
    "failed": [],
}
REDIS_UNREACHABLE = {
    "status": "unavailable",
    "checks": {"redis": "unreachable", "lease": "unknown", "upstream": "not needed"},
    "failed": ["redis"],
}


@pytest.fixture
async def simulator():
    from streaming.simulator import FeedSimulator

    async with FeedSimulator(api_key=SIMULATOR_KEY, rate=0, seed=6, max_connections=1) as sim:
        yield sim


@pytest.fixture
async def relays(simulator):
    started: list[RelayProcess] = []

    def start(name: str, args: tuple[str, ...] = FREE_PROBE_PORT, **env: str) -> RelayProcess:
        relay = RelayProcess(name, MARKET, {
            **RELAY_ENV,
            "UPSTREAM_STOCKS_URL": simulator.url(MARKET),
            "UPSTREAM_OPTIONS_URL": "",
            "UPSTREAM_API_KEY": SIMULATOR_KEY,
            **env,
        }, args=args).start()
        started.append(relay)
        return relay

    yield start
    for relay in started:
        await relay.stop()


class Probes:
    """A relay process's probe port."""

    def __init__(self, port: int) -> None:
        self.port = port

    async def get(self, path: str) -> ProbeResponse:
        return await request(HOST, self.port, path)

    async def metrics(self) -> dict[str, float]:
        return await metrics(HOST, self.port, MARKET)

    async def answer(self, path: str, status: int, body: dict) -> bool:
        response = await self.get(path)
        return response.status == status and response.json() == body

    async def wait_for(self, path: str, status: int, body: dict) -> None:
        await until(lambda: self.answer(path, status, body), TIMEOUT)

    async def wait_for_metric(self, name: str, value: float) -> None:
        async def reached() -> bool:
            return (await self.metrics())[name] == value

        await until(reached, TIMEOUT)


async def probes_of(relay: RelayProcess) -> Probes:
    return Probes(await relay.probe_port())


@pytest.fixture
def stocks_key(transactional_db) -> str:
    return make_key(make_user("relay-probes", plans={"stocks": "expert"}), "stocks")[1]


async def test_the_holder_and_the_standby_are_ready_and_the_standby_takes_over_after_sigkill(
    gateway_factory, relays, simulator, stocks_key
):
    active_process = relays("probes-active")
    active = await probes_of(active_process)
    await active.wait_for("/readyz", 200, READY_ACTIVE)
    healthz = await active.get("/healthz")
    assert (healthz.status, healthz.json()) == (200, {"status": "ok"})
    idle = await active.metrics()
    assert idle["cutemarkets_relay_lease_held"] == idle["cutemarkets_relay_upstream_connected"] == 1
    assert idle["cutemarkets_relay_lease_acquisitions_total"] == 1
    assert idle["cutemarkets_relay_registered_items"] == 0

    gateway = gateway_factory("probes-gateway", **GATEWAY_ENV)
    client = await open_client(gateway, stocks_key, MARKET)
    assert [ack["status"] for ack in await client.subscribe("T.AAPL")] == ["success"]
    await active.wait_for_metric("cutemarkets_relay_registered_items", 1)
    before = (await active.metrics())["cutemarkets_relay_frames_published_total"]
    await simulator.send_events(MARKET, [TRADE] * 3)
    assert await client.read_data(3) == [TRADE] * 3

    async def frames_published() -> bool:
        return (await active.metrics())["cutemarkets_relay_frames_published_total"] > before

    await until(frames_published, TIMEOUT)

    standby = await probes_of(relays("probes-standby"))
    await standby.wait_for("/readyz", 200, READY_STANDBY)
    waiting = await standby.metrics()
    assert waiting["cutemarkets_relay_lease_held"] == waiting["cutemarkets_relay_upstream_connected"] == 0
    assert waiting["cutemarkets_relay_lease_acquisitions_total"] == 0

    active_process.kill()
    await standby.wait_for_metric("cutemarkets_relay_lease_acquisitions_total", 1)
    await standby.wait_for("/readyz", 200, READY_ACTIVE)
    assert (await standby.metrics())["cutemarkets_relay_lease_held"] == 1
    await client.websocket.close()


async def run_health_check(port: int) -> int:
    """docker-compose.yml's health check of the relays, as the container runs it (``python`` is this venv's)."""
    test = compose.service("relay-stocks")["healthcheck"]["test"]
    assert test[:2] == ["CMD", "python"]
    checked = await asyncio.to_thread(
        subprocess.run, [sys.executable, *test[2:]], cwd=PROJECT_DIR, env={"RELAY_PROBE_PORT": str(port)},
        capture_output=True, timeout=TIMEOUT,
    )
    return checked.returncode


async def test_a_relay_without_redis_is_alive_but_not_ready_and_fails_the_compose_health_check(relays):
    ready_port, unready_port = free_port(), free_port()
    # Both take their probe address from the environment, as in docker-compose.yml.
    ready = Probes(await relays("probes-ready", args=(), RELAY_PROBE_HOST=HOST,
                                RELAY_PROBE_PORT=str(ready_port)).probe_port())
    unready = Probes(await relays("probes-no-redis", args=(), RELAY_PROBE_HOST=HOST, RELAY_PROBE_PORT=str(unready_port),
                                  REDIS_URL=f"redis://127.0.0.1:{free_port()}/0").probe_port())
    assert (ready.port, unready.port) == (ready_port, unready_port)

    await unready.wait_for("/readyz", 503, REDIS_UNREACHABLE)
    assert (await unready.get("/healthz")).status == 200
    assert (await unready.metrics())["cutemarkets_relay_lease_held"] == 0
    assert await run_health_check(unready.port) != 0

    await ready.wait_for("/readyz", 200, READY_ACTIVE)
    assert await run_health_check(ready.port) == 0


async def test_a_relay_whose_probe_port_is_taken_or_invalid_stops_at_once_naming_the_setting(relays):
    with socket.socket() as taken:
        taken.bind((HOST, 0))
        taken.listen()
        relay = relays("probes-port-taken", args=("--probe-host", HOST, "--probe-port", str(taken.getsockname()[1])))
        await wait_until(lambda: relay.process.poll() is not None, TIMEOUT)
    assert relay.process.returncode == 1
    assert "RELAY_PROBE_PORT" in relay.log() and "--probe-port" in relay.log()
    assert "started" not in relay.log()

    beyond = relays("probes-port-invalid", args=("--probe-port", "65536"))
    await wait_until(lambda: beyond.process.poll() is not None, TIMEOUT)
    assert beyond.process.returncode == 1
    assert "--probe-port must be a port number from 0 to 65535" in beyond.log()
