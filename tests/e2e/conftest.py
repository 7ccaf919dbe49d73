"""End-to-end fixtures: real daphne processes serving the gateway, the test database and the suite's Redis."""

from __future__ import annotations

import pytest

from tests.accounts.factories import ISSUED_KEYS
from tests.e2e.processes import GatewayProcess

pytestmark = pytest.mark.e2e

UNUSED_UPSTREAM_ENV = {
    "UPSTREAM_OPTIONS_URL": "ws://127.0.0.1:9/options",
    "UPSTREAM_STOCKS_URL": "ws://127.0.0.1:9/stocks",
    "UPSTREAM_API_KEY": "upstream-key",
    "STREAM_REJECT_GRACE": "0.2",
}


def assert_no_key_in(process: GatewayProcess) -> None:
    log = process.log()
    leaked = [key for key in ISSUED_KEYS if key in log]
    assert not leaked, f"{process.name} logged an API key"


@pytest.fixture
def gateway_factory(transactional_db):
    """Start daphne gateways with extra environment; each is stopped and its log checked for keys afterwards."""
    started: list[GatewayProcess] = []

    def start(name: str = "gateway", args: tuple[str, ...] = (), **env: str) -> GatewayProcess:
        process = GatewayProcess(name, {**UNUSED_UPSTREAM_ENV, **env}, args=args).start()
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()
        assert_no_key_in(process)


@pytest.fixture
def gateway(gateway_factory):
    return gateway_factory()


SIMULATOR_KEY = "simulator-upstream-key"

ONE_ADDRESS_STORM = {
    "STREAM_ADDRESS_HANDSHAKE_BURST": "100000",
    "STREAM_ADDRESS_PENDING_SOCKETS": "100000",
    "STREAM_ADDRESS_FAILURES_PER_MINUTE": "100000",
}
"""Address budgets for a test that storms one gateway from one address on purpose (admission decisions under load,
not fairness, which tests/e2e/test_isolation.py tests)."""


@pytest.fixture
async def simulator():
    """The feed simulator in the test's event loop, driven by the test (rate 0)."""
    from streaming.simulator import FeedSimulator

    async with FeedSimulator(api_key=SIMULATOR_KEY, rate=0, seed=1) as sim:
        yield sim


def simulator_env(sim) -> dict[str, str]:
    return {
        "UPSTREAM_OPTIONS_URL": sim.url("options"),
        "UPSTREAM_STOCKS_URL": sim.url("stocks"),
        "UPSTREAM_API_KEY": SIMULATOR_KEY,
    }


@pytest.fixture
def streaming_gateway(gateway_factory, simulator):
    return gateway_factory("streaming", **simulator_env(simulator))
