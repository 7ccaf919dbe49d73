"""Fault injection does what it says: dropped connections, stalls, refused connects and malformed frames."""

from __future__ import annotations

import asyncio

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from streaming.simulator import FeedSimulator

from . import AUTH_SUCCESS, KEY, authenticate, open_client, receive

# How long a test watches for frames that must not arrive.
QUIET_SECONDS = 0.3


@pytest.fixture
async def sim():
    async with FeedSimulator(api_key=KEY, rate=0, seed=5) as simulator:
        yield simulator


async def assert_quiet(client) -> None:
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(client.recv(), QUIET_SECONDS)


async def test_unclean_drop_aborts_without_a_close_frame(sim):
    async with open_client(sim, "stocks") as client:
        await sim.drop_connections("stocks")
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(client.recv(), 5)
        assert closed.value.rcvd is None
    assert sim.open_connections("stocks") == 0


async def test_clean_drop_closes_with_1001_and_only_the_given_cluster(sim):
    async with open_client(sim, "stocks") as stocks, open_client(sim, "options", subscribed="T.*") as options:
        await sim.drop_connections("stocks", clean=True)
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(stocks.recv(), 5)
        assert stocks.close_code == 1001
        assert sim.open_connections("stocks") == 0
        assert sim.open_connections("options") == 1
        await sim.send_events("options", [{"ev": "T", "sym": "O:SPY260515C00500000", "p": 1.0}])
        assert await receive(options) == [{"ev": "T", "sym": "O:SPY260515C00500000", "p": 1.0}]
    assert sim.connections_opened("stocks") == 1


async def test_drop_without_cluster_drops_every_connection(sim):
    async with open_client(sim, "stocks"), open_client(sim, "options"):
        await sim.drop_connections()
        assert sim.open_connections("stocks") == sim.open_connections("options") == 0


async def test_pause_stalls_everything_and_resume_delivers_what_was_held(sim):
    async with open_client(sim, "stocks", subscribed="T.AAPL") as client:
        sim.pause()
        await sim.send_events("stocks", [{"ev": "T", "sym": "AAPL", "p": 1.0}])
        await client.send('{"action":"subscribe","params":"Q.AAPL"}')
        await assert_quiet(client)
        assert sim.open_connections("stocks") == 1
        sim.resume()
        assert await receive(client) == [{"ev": "T", "sym": "AAPL", "p": 1.0}]
        assert await receive(client) == [{"ev": "status", "status": "success", "message": "subscribed to: Q.AAPL"}]


async def test_pause_stops_generation_at_the_configured_rate():
    async with FeedSimulator(api_key=KEY, rate=2000, seed=5) as sim:
        async with open_client(sim, "stocks", subscribed="T.*,Q.*") as client:
            assert await receive(client)
            sim.pause()
            sim.start_recording("stocks")
            await assert_quiet(client)
            assert sim.recorded("stocks") == []
            sim.resume()
            await sim.wait_for(lambda: len(sim.recorded("stocks")) > 0)


async def test_refused_connects_fail_until_connections_are_accepted_again(sim):
    port = sim.port
    async with open_client(sim, "stocks", subscribed="T.MSFT") as established:
        await sim.refuse_connections()
        with pytest.raises(ConnectionRefusedError):
            async with connect(sim.url("stocks")):
                pass
        await sim.send_events("stocks", [{"ev": "T", "sym": "MSFT", "p": 2.0}])
        assert await receive(established) == [{"ev": "T", "sym": "MSFT", "p": 2.0}]

        await sim.accept_connections()
        assert sim.port == port
        async with open_client(sim, "stocks"):
            assert sim.open_connections("stocks") == 2


async def test_send_raw_reaches_authenticated_connections_verbatim(sim):
    async with open_client(sim, "options") as authenticated, open_client(
        sim, "options", authenticated=False
    ) as anonymous, open_client(sim, "stocks") as other_cluster:
        await sim.send_raw("options", '[{"ev":"T","sym":broken')
        assert await asyncio.wait_for(authenticated.recv(), 5) == '[{"ev":"T","sym":broken'
        assert await authenticate(anonymous) == AUTH_SUCCESS
        await assert_quiet(other_cluster)


async def test_wait_for_times_out_when_the_condition_never_holds(sim):
    with pytest.raises(TimeoutError):
        await sim.wait_for(lambda: sim.open_connections("stocks") > 0, timeout=0.05)



async def test_a_drop_during_a_stall_completes(sim):
    async with open_client(sim, "stocks", authenticated=False) as client:
        sim.pause()
        await client.send('{"action":"auth","params":"wrong-key"}')
        await sim.drop_connections()
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(client.recv(), 5)
    assert sim.open_connections("stocks") == 0


async def test_stop_closes_connections_with_1001_and_stops_listening():
    sim = FeedSimulator(api_key=KEY)
    await sim.start()
    async with open_client(sim, "stocks") as client:
        await sim.stop()
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(client.recv(), 5)
        assert client.close_code == 1001
    with pytest.raises(ConnectionRefusedError):
        async with connect(sim.url("stocks")):
            pass
