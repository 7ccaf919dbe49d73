"""What deploy/prometheus/alerts.yml and deploy/grafana/cutemarkets.json use is what the processes export: every
gateway metric name against a real daphne gateway's /metrics after traffic that creates its labelled series, every
relay metric name against a real feed relay's probe port; and the send path's histogram through real daphne.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.accounts.factories import make_key, make_user
from tests.deployment.observability import (
    alert_expressions,
    dashboard_expressions,
    gateway_names,
    label_problems,
    names_used,
    relay_names,
    unexported,
)
from tests.e2e.clients import TIMEOUT, bearer, rejected
from tests.e2e.conftest import SIMULATOR_KEY
from tests.e2e.processes import GatewayProcess
from tests.e2e.test_deployment import scrape, value
from tests.e2e.test_relay import RelayProcess
from tests.e2e.test_streaming import open_client

pytestmark = pytest.mark.e2e

MARKET = "stocks"
TRADES = [{"ev": "T", "sym": "AAPL", "p": 100.0 + number, "s": 1, "t": number} for number in range(3)]
HISTOGRAM = "cutemarkets_stream_send_delay_seconds"


@pytest.fixture
def stocks_key(transactional_db) -> str:
    return make_key(make_user("observed", plans={"stocks": "expert"}), MARKET)[1]


def series_names(samples: dict) -> set[str]:
    return {name for name, _ in samples}


def series_labels(samples: dict) -> dict[str, set[str]]:
    labels: dict[str, set[str]] = {}
    for name, pairs in samples:
        labels.setdefault(name, set()).update(label for label, _ in pairs)
    return labels


def expressions() -> dict[str, str]:
    return {**alert_expressions(), **dashboard_expressions()}


async def scrape_until(port: int, predicate) -> dict:
    """Scrape until *predicate* holds for the samples (the server counts a close after the client has seen it)."""
    async with asyncio.timeout(TIMEOUT):
        while True:
            samples = await asyncio.to_thread(scrape, port)
            if predicate(samples):
                return samples
            await asyncio.sleep(0.05)


async def stream_and_get_rejected(gateway: GatewayProcess, simulator, key: str) -> None:
    """Traffic creating the labelled series: a client streams events and closes; its second connection gets 4409,
    an unknown key 4401."""
    client = await open_client(gateway, key, MARKET)
    assert [ack["status"] for ack in await client.subscribe("T.AAPL")] == ["success"]
    await simulator.send_events(MARKET, TRADES)
    assert len(await client.read_data(len(TRADES))) == len(TRADES)
    assert (await rejected(gateway.url(f"/v1/ws/{MARKET}/"), bearer(key))).close_code == 4409
    unknown = "cms_" + "x" * 12 + "_" + "y" * 40
    assert (await rejected(gateway.url(f"/v1/ws/{MARKET}/"), bearer(unknown))).close_code == 4401
    await client.websocket.close()


def histogram_count(samples: dict) -> float:
    return value(samples, f"{HISTOGRAM}_count", market=MARKET)


async def test_the_send_delay_histogram_counts_the_writes_a_client_received(streaming_gateway, simulator, stocks_key):
    before = await asyncio.to_thread(scrape, streaming_gateway.port)
    assert histogram_count(before) == 0  # exported, for each market, before any send
    client = await open_client(streaming_gateway, stocks_key, MARKET)
    await client.subscribe("T.AAPL")
    for trade in TRADES:  # one at a time: each frame is its own write
        await simulator.send_events(MARKET, [trade])
        await client.read_data(len(client.data) + 1)
    samples = await scrape_until(streaming_gateway.port, lambda samples: histogram_count(samples) == len(TRADES))
    buckets = {labels: count for (name, labels), count in samples.items() if name == f"{HISTOGRAM}_bucket"}
    inf = (("le", "+Inf"), ("market", MARKET))
    assert buckets[inf] == len(TRADES)
    stocks = sorted(
        (float(dict(labels)["le"]), count) for labels, count in buckets.items() if dict(labels)["market"] == MARKET
    )
    assert [count for _, count in stocks] == sorted(count for _, count in stocks)  # cumulative
    assert 0 < value(samples, f"{HISTOGRAM}_sum", market=MARKET) <= 5.0 * len(TRADES)
    assert value(samples, "cutemarkets_stream_forwarded_frames_total", market=MARKET) > len(TRADES)  # and the acks
    await client.websocket.close()


async def test_every_gateway_metric_the_alerts_and_the_dashboard_use_is_exported(
    streaming_gateway, simulator, stocks_key
):
    await stream_and_get_rejected(streaming_gateway, simulator, stocks_key)
    samples = await scrape_until(
        streaming_gateway.port,
        lambda samples: value(samples, "cutemarkets_stream_closes_total", market=MARKET, code="1000") == 1,
    )
    exported = series_names(samples)
    used = names_used(expressions())
    names = gateway_names(used)
    assert unexported(names, exported) == [], {name: used[name] for name in unexported(names, exported)}
    assert label_problems(expressions(), series_labels(samples)) == []
    # The same check fails for a name nobody exports, and for a histogram used by its bare name.
    assert unexported(names | {"cutemarkets_stream_imaginary_total", HISTOGRAM}, exported) == [
        "cutemarkets_stream_imaginary_total", HISTOGRAM
    ]


@pytest.fixture
async def probed_relay(simulator, transactional_db):
    """A feed relay of the stocks market, streaming from the simulator, its probes on a free loopback port."""
    relay = RelayProcess("observed-relay", MARKET, {
        "STREAM_RELAY_PREFIX": "cm:relay-observed:",
        "UPSTREAM_STOCKS_URL": simulator.url(MARKET),
        "UPSTREAM_OPTIONS_URL": "",
        "UPSTREAM_API_KEY": SIMULATOR_KEY,
    }, args=("--probe-port", "0", "--probe-host", "127.0.0.1")).start()
    yield relay
    await relay.stop()


async def test_every_relay_metric_the_alerts_and_the_dashboard_use_is_exported(probed_relay):
    port = await probed_relay.probe_port()
    samples = await scrape_until(port, lambda samples: value(samples, "cutemarkets_relay_lease_held", market=MARKET))
    exported = series_names(samples)
    names = relay_names(names_used(expressions()))
    assert unexported(names, exported) == []
    assert label_problems(expressions(), series_labels(samples)) == []
    assert unexported(names | {"cutemarkets_relay_imaginary_total"}, exported) == ["cutemarkets_relay_imaginary_total"]
