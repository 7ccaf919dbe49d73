"""The simulator speaks the upstream protocol to the letter: handshake, auth, subscriptions, errors and limits."""

from __future__ import annotations

import asyncio

import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from streaming.simulator import FeedSimulator

from . import (
    AUTH_SUCCESS,
    EVERYTHING,
    KEY,
    authenticate,
    open_client,
    receive,
    receive_count,
    receive_until,
    subscribe,
)

AUTH_FAILED = [{"ev": "status", "status": "auth_failed", "message": "authentication failed"}]
AUTH_TIMEOUT = [{"ev": "status", "status": "auth_timeout", "message": "No authentication request received."}]
INVALID_JSON = [{"ev": "status", "status": "error", "message": "Invalid JSON"}]
MAX_CONNECTIONS = [
    {
        "ev": "status",
        "status": "max_connections",
        "message": "Maximum number of websocket connections exceeded. You have reached the connection limit for "
        "your account. Please contact support at https://massive.com/contact to increase your limit.",
    }
]


def success(message: str) -> list[dict[str, str]]:
    return [{"ev": "status", "status": "success", "message": message}]


@pytest.fixture
async def sim():
    async with FeedSimulator(api_key=KEY, rate=0, seed=1) as simulator:
        yield simulator


async def assert_closed_with(client, code: int) -> None:
    with pytest.raises(ConnectionClosed):
        await asyncio.wait_for(client.recv(), 5)
    assert client.close_code == code


async def test_connected_then_auth_success_exact_frames(sim):
    for cluster in ("stocks", "options"):
        async with connect(sim.url(cluster)) as client:
            assert await client.recv() == '[{"ev":"status","status":"connected","message":"Connected Successfully"}]'
            await client.send(f'{{"action":"auth","params":"{KEY}"}}')
            assert await client.recv() == '[{"ev":"status","status":"auth_success","message":"authenticated"}]'
    assert sim.connections_opened("stocks") == 1
    assert sim.connections_opened("options") == 1


def test_url_names_the_cluster(sim):
    assert sim.url("options") == f"ws://127.0.0.1:{sim.port}/options"
    assert sim.port > 0


async def test_unknown_path_is_refused_at_the_handshake(sim):
    for path in ("crypto", "", "stocks/extra"):
        with pytest.raises(InvalidStatus) as refused:
            async with connect(f"ws://127.0.0.1:{sim.port}/{path}"):
                pass
        assert refused.value.response.status_code == 404
    assert sim.connections_opened("stocks") == 0


async def test_wrong_key_fails_and_closes_with_1008(sim):
    async with open_client(sim, "stocks", authenticated=False) as client:
        assert await authenticate(client, "wrong-key") == AUTH_FAILED
        await assert_closed_with(client, 1008)
    await sim.wait_for(lambda: sim.open_connections("stocks") == 0)


async def test_no_auth_within_the_timeout_closes_with_1008():
    async with FeedSimulator(api_key=KEY, auth_timeout=0.2) as sim:
        async with open_client(sim, "options", authenticated=False) as client:
            assert await receive(client) == AUTH_TIMEOUT
            await assert_closed_with(client, 1008)


async def test_authenticated_connection_outlives_the_auth_timeout():
    async with FeedSimulator(api_key=KEY, auth_timeout=0.2) as sim:
        async with open_client(sim, "stocks", subscribed="T.AAPL") as client:
            # Well past the timeout, the connection still serves data.
            await asyncio.sleep(0.4)
            await sim.send_events("stocks", [{"ev": "T", "sym": "AAPL", "p": 1.0}])
            assert await receive(client) == [{"ev": "T", "sym": "AAPL", "p": 1.0}]


async def test_subscribe_acks_each_item_splitting_on_the_first_dot(sim):
    async with open_client(sim, "stocks") as client:
        acks = await subscribe(client, "T.AAPL, Q.AAPL,AM.*,T.BRK.B")
        assert acks == [
            success("subscribed to: T.AAPL"),
            success("subscribed to: Q.AAPL"),
            success("subscribed to: AM.*"),
            success("subscribed to: T.BRK.B"),
        ]
        assert sim.subscriptions("stocks") == {"T.AAPL", "Q.AAPL", "AM.*", "T.BRK.B"}
        await sim.send_events("stocks", [{"ev": "T", "sym": "BRK.B", "p": 500.0}])
        assert await receive(client) == [{"ev": "T", "sym": "BRK.B", "p": 500.0}]

        assert await subscribe(client, "T.AAPL", action="unsubscribe") == [success("unsubscribed to: T.AAPL")]
        assert sim.subscriptions("stocks") == {"Q.AAPL", "AM.*", "T.BRK.B"}
    await sim.wait_for(lambda: sim.subscriptions("stocks") == set())


async def test_option_symbols_subscribe_like_stocks(sim):
    async with open_client(sim, "options") as client:
        assert await subscribe(client, "T.O:SPY260515C00500000") == [success("subscribed to: T.O:SPY260515C00500000")]


async def test_an_options_connection_gets_quotes_of_1000_contracts_at_most_and_one_error_for_the_rest(sim):
    contracts = [f"Q.O:SPY260515C{strike:08d}" for strike in range(1002)]
    async with open_client(sim, "options") as client:
        await client.send(orjson.dumps({"action": "subscribe", "params": ",".join(contracts[:999])}).decode())
        await receive_count(client, 999)
        await client.send(orjson.dumps({"action": "subscribe", "params": ",".join(contracts[998:])}).decode())
        assert await receive_count(client, 3) == [
            *success(f"subscribed to: {contracts[998]}"),  # held already: not counted again
            *success(f"subscribed to: {contracts[999]}"),
            {"ev": "status", "status": "error",
             "message": "Subscription limit reached for feed. Please remove some subscriptions and try again."},
        ]
        assert sim.subscriptions("options") == set(contracts[:1000])
        assert await subscribe(client, "T.O:SPY260515C00000001") == [success("subscribed to: T.O:SPY260515C00000001")]
    async with open_client(sim, "stocks") as client:  # stock quotes are not limited
        await client.send(orjson.dumps({"action": "subscribe", "params": ",".join(
            f"Q.S{n}" for n in range(1001))}).decode())
        assert (await receive_count(client, 1001))[-1] == success("subscribed to: Q.S1000")[0]


async def test_malformed_items_get_an_error_and_valid_ones_are_still_acked(sim):
    async with open_client(sim, "stocks") as client:
        replies = await subscribe(client, "AAPL,T.,.AAPL,Q.MSFT")
        assert [reply[0]["status"] for reply in replies] == ["error", "error", "error", "success"]
        assert all(reply[0]["ev"] == "status" for reply in replies)
        assert replies[3] == success("subscribed to: Q.MSFT")
        assert sim.subscriptions("stocks") == {"Q.MSFT"}


async def test_invalid_json_gets_an_error_and_the_connection_stays_open(sim):
    async with open_client(sim, "stocks", authenticated=False) as client:
        for bad in ("{not json", "[1, 2]", '"auth"'):
            await client.send(bad)
            assert await receive(client) == INVALID_JSON
        assert await authenticate(client) == AUTH_SUCCESS


async def test_subscribe_before_auth_is_refused_without_closing(sim):
    async with open_client(sim, "stocks", authenticated=False) as client:
        replies = await subscribe(client, "T.AAPL")
        assert replies == [[{"ev": "status", "status": "error", "message": "not authorized"}]]
        assert sim.subscriptions("stocks") == set()
        assert await authenticate(client) == AUTH_SUCCESS


async def test_unknown_action_gets_an_error(sim):
    async with open_client(sim, "stocks") as client:
        await client.send('{"action":"dance","params":"T.AAPL"}')
        assert await receive(client) == [{"ev": "status", "status": "error", "message": "unknown action: dance"}]


async def test_connection_limit_counts_authenticated_connections_per_cluster():
    async with FeedSimulator(api_key=KEY, max_connections=1) as sim:
        async with open_client(sim, "stocks"):
            async with open_client(sim, "stocks", authenticated=False) as second:
                assert await authenticate(second) == MAX_CONNECTIONS
                await assert_closed_with(second, 1008)
            async with open_client(sim, "options"):
                assert sim.authenticated_connections("options") == 1
        await sim.wait_for(lambda: sim.open_connections("stocks") == 0)
        async with open_client(sim, "stocks"):
            assert sim.authenticated_connections("stocks") == 1


async def test_wildcard_subscriber_receives_everything_in_order(sim):
    sim.start_recording("stocks")
    async with open_client(sim, "stocks", subscribed=EVERYTHING) as client:
        await sim.emit("stocks", 3000)
        await sim.flush_aggregates("stocks")
        recorded = sim.recorded("stocks")
        received = await receive_until(client, lambda event: event == recorded[-1])
    assert received == recorded


async def test_per_symbol_subscription_receives_only_its_events(sim):
    sim.start_recording("stocks")
    async with open_client(sim, "stocks", subscribed="T.AAPL,Q.MSFT,LULD.*") as client:
        await sim.emit("stocks", 5000)
        await sim.send_events("stocks", [{"ev": "Q", "sym": "MSFT", "bp": -1.0}])
        received = await receive_until(client, lambda event: event.get("bp") == -1.0)
    wanted = [
        event
        for event in sim.recorded("stocks")
        if (event["ev"], event.get("sym")) in {("T", "AAPL"), ("Q", "MSFT")} or event["ev"] == "LULD"
    ]
    assert received == wanted
    assert {event["ev"] for event in received} >= {"T", "Q"}


async def test_unsubscribe_stops_delivery(sim):
    async with open_client(sim, "stocks", subscribed="T.*,Q.AAPL") as client:
        await sim.emit("stocks", 500)
        await sim.send_events("stocks", [{"ev": "Q", "sym": "AAPL", "bp": -1.0}])
        before = await receive_until(client, lambda event: event.get("bp") == -1.0)
        assert {event["ev"] for event in before} == {"T", "Q"}

        assert await subscribe(client, "T.*", action="unsubscribe") == [success("unsubscribed to: T.*")]
        await sim.emit("stocks", 2000)
        await sim.send_events("stocks", [{"ev": "Q", "sym": "AAPL", "bp": -2.0}])
        after = await receive_until(client, lambda event: event.get("bp") == -2.0)
    assert after and all((event["ev"], event["sym"]) == ("Q", "AAPL") for event in after)


async def test_identical_subscriptions_get_identical_frames(sim):
    async with open_client(sim, "options", subscribed="Q.*") as first, open_client(
        sim, "options", subscribed="Q.*"
    ) as second:
        await sim.emit("options", 1000)
        await sim.send_events("options", [{"ev": "Q", "sym": "END"}])
        end = lambda event: event.get("sym") == "END"  # noqa: E731
        assert await receive_until(first, end) == await receive_until(second, end)
