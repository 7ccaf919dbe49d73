"""Streaming through a real daphne process from the feed simulator to real `websockets` clients."""

from __future__ import annotations

import asyncio

import orjson
import pytest
from websockets.asyncio.client import connect

from tests.accounts.factories import make_key, make_user
from tests.e2e.clients import TIMEOUT, bearer, expect_statuses, read_until_closed

pytestmark = pytest.mark.e2e


@pytest.fixture
def keys(transactional_db):
    """One stocks and one options key for each of three users on Expert."""
    issued = {}
    for name in ("ann", "bob", "cyd"):
        user = make_user(name, plans={"stocks": "expert", "options": "expert"})
        issued[name] = {"stocks": make_key(user, "stocks")[1], "options": make_key(user, "options")[1]}
    return issued


class Client:
    """A connected, admitted client that separates status events from market data."""

    def __init__(self, websocket):
        self.websocket = websocket
        self.data: list[dict] = []
        self.raw_events: list[bytes] = []
        self.statuses: list[dict] = []
        self.frame_sizes: list[int] = []

    async def read_frame(self) -> None:
        frame = await self.websocket.recv()
        self.frame_sizes.append(len(frame.encode() if isinstance(frame, str) else frame))
        for event in orjson.loads(frame):
            (self.statuses if event["ev"] == "status" else self.data).append(event)

    async def send(self, message) -> None:
        await self.websocket.send(message if isinstance(message, (str, bytes)) else orjson.dumps(message).decode())

    async def request(self, message, replies: int) -> list[dict]:
        """Send a message and return the next *replies* status events."""
        before = len(self.statuses)
        await self.send(message)
        async with asyncio.timeout(TIMEOUT):
            while len(self.statuses) < before + replies:
                await self.read_frame()
        return self.statuses[before:]

    async def subscribe(self, params: str) -> list[dict]:
        items = [item.strip() for item in params.split(",") if item.strip()]
        return await self.request({"action": "subscribe", "params": params}, len(items))

    async def unsubscribe(self, params: str) -> list[dict]:
        items = [item.strip() for item in params.split(",") if item.strip()]
        return await self.request({"action": "unsubscribe", "params": params}, len(items))

    async def read_data(self, count: int) -> list[dict]:
        async with asyncio.timeout(TIMEOUT):
            while len(self.data) < count:
                await self.read_frame()
        return self.data


async def open_client(gateway, key: str, market: str) -> Client:
    websocket = await connect(gateway.url(f"/v1/ws/{market}/"), additional_headers=bearer(key), max_size=None)
    await expect_statuses(websocket, "connected", "auth_success")
    return Client(websocket)


def matching(events: list[dict], items: set[str]) -> list[dict]:
    def matches(event):
        symbol = event.get("sym", event.get("T"))
        return f"{event['ev']}.*" in items or f"{event['ev']}.{symbol}" in items

    return [event for event in events if matches(event)]


async def test_overlapping_and_wildcard_subscriptions_get_exactly_their_events(streaming_gateway, simulator, keys):
    wide = await open_client(streaming_gateway, keys["ann"]["stocks"], "stocks")
    narrow = await open_client(streaming_gateway, keys["bob"]["stocks"], "stocks")
    acks = await wide.subscribe("T.*, Q.AAPL,T.AAPL")
    assert [ack["message"] for ack in acks] == ["subscribed to: T.*", "subscribed to: Q.AAPL", "subscribed to: T.AAPL"]
    await narrow.subscribe("T.AAPL,Q.AAPL,LULD.*,T.BRK.B")
    await simulator.wait_for(
        lambda: {"T.*", "Q.AAPL", "T.AAPL", "LULD.*", "T.BRK.B"} <= simulator.subscriptions("stocks")
    )

    simulator.start_recording("stocks")
    await simulator.emit("stocks", 5000)
    await simulator.send_events(
        "stocks", [{"ev": "LULD", "T": "AAPL", "h": 200.5, "l": 180.25, "i": [], "z": 3, "t": 1, "q": 1}]
    )
    sent = simulator.recorded("stocks")
    expected_wide = matching(sent, {"T.*", "Q.AAPL"})
    expected_narrow = matching(sent, {"T.AAPL", "Q.AAPL", "LULD.*", "T.BRK.B"})
    assert len(expected_narrow) > 10 and any(event["ev"] == "LULD" for event in expected_narrow)

    assert await wide.read_data(len(expected_wide)) == expected_wide
    assert await narrow.read_data(len(expected_narrow)) == expected_narrow
    # Unchanged means the same fields in the same order, not just equal values.
    assert [list(event) for event in narrow.data] == [list(event) for event in expected_narrow]
    assert max(wide.frame_sizes + narrow.frame_sizes) < 1_000_000
    assert simulator.connections_opened("stocks") == 1


async def test_one_upstream_connection_per_market_however_many_clients(streaming_gateway, simulator, keys):
    clients = [await open_client(streaming_gateway, keys[name]["options"], "options") for name in keys]
    for client in clients:
        await client.subscribe("T.*")
    simulator.start_recording("options")
    await simulator.emit("options", 300)
    expected = matching(simulator.recorded("options"), {"T.*"})
    for client in clients:
        assert await client.read_data(len(expected)) == expected
    assert simulator.connections_opened("options") == 1
    assert simulator.open_connections("options") == 1
    assert simulator.connections_opened("stocks") == 0


async def test_unsubscribe_by_one_client_does_not_affect_another(streaming_gateway, simulator, keys):
    first = await open_client(streaming_gateway, keys["ann"]["stocks"], "stocks")
    second = await open_client(streaming_gateway, keys["bob"]["stocks"], "stocks")
    await first.subscribe("T.AAPL")
    await second.subscribe("T.AAPL")
    acks = await first.unsubscribe("T.AAPL")
    assert acks[0]["message"] == "unsubscribed to: T.AAPL"
    simulator.start_recording("stocks")
    await simulator.send_events("stocks", [{"ev": "T", "sym": "AAPL", "p": 1.5, "s": 10, "t": 1, "q": 1}])
    assert await second.read_data(1) == simulator.recorded("stocks")
    assert "T.AAPL" in simulator.subscriptions("stocks")
    await second.unsubscribe("T.AAPL")
    await simulator.wait_for(lambda: "T.AAPL" not in simulator.subscriptions("stocks"))
    # The first client got nothing after its unsubscribe: its next frame is the ack of a new request.
    acks = await first.subscribe("Q.MSFT")
    assert first.data == [] and acks[0]["message"] == "subscribed to: Q.MSFT"


async def test_wildcard_and_symbol_on_one_client_no_duplicates_nothing_lost(streaming_gateway, simulator, keys):
    client = await open_client(streaming_gateway, keys["ann"]["stocks"], "stocks")
    await client.subscribe("T.*,T.AAPL")
    simulator.start_recording("stocks")
    trade = {"ev": "T", "sym": "AAPL", "p": 2.0, "s": 1, "t": 1, "q": 1}
    other = {"ev": "T", "sym": "MSFT", "p": 3.0, "s": 1, "t": 1, "q": 2}
    await simulator.send_events("stocks", [trade, other])
    assert await client.read_data(2) == [trade, other]
    await client.unsubscribe("T.*")
    await simulator.wait_for(lambda: simulator.subscriptions("stocks") == {"T.AAPL"})
    await simulator.send_events("stocks", [other, trade])
    assert await client.read_data(3) == [trade, other, trade]


async def test_acks_are_per_client(streaming_gateway, simulator, keys):
    first = await open_client(streaming_gateway, keys["ann"]["options"], "options")
    second = await open_client(streaming_gateway, keys["bob"]["options"], "options")
    await first.subscribe("T.O:SPY260515C00500000")
    acks = await second.subscribe("T.O:SPY260515C00500000")  # already subscribed upstream: acked all the same
    assert [ack["message"] for ack in acks] == ["subscribed to: T.O:SPY260515C00500000"]
    acks = await first.subscribe("Q.O:SPY260515C00500000")
    assert [ack["message"] for ack in acks] == ["subscribed to: Q.O:SPY260515C00500000"]
    # The second client never saw the first client's acks: its next status answers its own request.
    acks = await second.unsubscribe("T.O:SPY260515C00500000")
    assert [ack["message"] for ack in acks] == ["unsubscribed to: T.O:SPY260515C00500000"]
    assert len(second.statuses) == 2


@pytest.mark.parametrize(
    ("message", "error"),
    [
        ("not json", "Invalid JSON"),
        ("[1,2]", "message must be a JSON object"),
        ('"subscribe"', "message must be a JSON object"),
        ('{"params":"T.AAPL"}', 'missing "action"'),
        ('{"action":"buy","params":"T.AAPL"}', "unknown action 'buy'"),
        ('{"action":"subscribe"}', "params must be a string"),
        ('{"action":"subscribe","params":["T.AAPL"]}', "params must be a string"),
        ('{"action":"subscribe","params":"X.AAPL"}', "unknown event type 'X'"),
        ('{"action":"subscribe","params":"T."}', "empty symbol"),
        ('{"action":"subscribe","params":"AAPL"}', "expected EVENT.SYMBOL"),
        ('{"action":"subscribe","params":" , "}', "params holds no subscriptions"),
        (b"\x00\x01binary", "binary frames are not supported"),
        ('{"action":"subscribe","params":"' + "T.A," * 20_000 + '"}', "message too large"),
    ],
)
async def test_bad_input_gets_an_error_status_and_the_socket_stays_open(
    streaming_gateway, simulator, keys, message, error
):
    client = await open_client(streaming_gateway, keys["ann"]["stocks"], "stocks")
    statuses = await client.request(message, 1)
    assert statuses[0]["status"] == "error"
    assert error in statuses[0]["message"]
    acks = await client.subscribe("T.AAPL")
    assert acks[0]["message"] == "subscribed to: T.AAPL"


async def test_options_reject_stock_only_event_types(streaming_gateway, simulator, keys):
    client = await open_client(streaming_gateway, keys["ann"]["options"], "options")
    statuses = await client.request({"action": "subscribe", "params": "LULD.*,T.O:SPY260515C00500000"}, 2)
    assert [status["status"] for status in statuses] == ["success", "error"]
    assert "unknown event type 'LULD'" in statuses[1]["message"]


async def test_one_clients_bad_input_never_touches_another(streaming_gateway, simulator, keys):
    good = await open_client(streaming_gateway, keys["ann"]["stocks"], "stocks")
    bad = await open_client(streaming_gateway, keys["bob"]["stocks"], "stocks")
    await good.subscribe("T.*")
    await bad.request("{{{{", 1)
    simulator.start_recording("stocks")
    await simulator.emit("stocks", 500)
    expected = matching(simulator.recorded("stocks"), {"T.*"})
    assert await good.read_data(len(expected)) == expected
    assert good.statuses[-1]["message"] == "subscribed to: T.*"


async def test_upstream_drop_closes_its_clients_1011_and_the_next_ones_stream(streaming_gateway, simulator, keys):
    affected = await open_client(streaming_gateway, keys["ann"]["stocks"], "stocks")
    idle = await open_client(streaming_gateway, keys["bob"]["stocks"], "stocks")
    await affected.subscribe("T.*")
    await simulator.drop_connections("stocks", clean=False)
    outcome = await read_until_closed(affected.websocket)
    assert outcome.close_code == 1011
    assert outcome.events[-1]["status"] == "error" and "upstream" in outcome.events[-1]["message"]
    # A client that had no subscription was not using the upstream and stays connected.
    acks = await idle.subscribe("T.MSFT")
    assert acks[0]["message"] == "subscribed to: T.MSFT"
    await simulator.wait_for(lambda: "T.MSFT" in simulator.subscriptions("stocks"), timeout=TIMEOUT)
    simulator.start_recording("stocks")
    await simulator.send_events("stocks", [{"ev": "T", "sym": "MSFT", "p": 1.0, "s": 1, "t": 1, "q": 1}])
    assert await idle.read_data(1) == simulator.recorded("stocks")
    # The user whose stream failed can reconnect at once: its lock was released.
    again = await open_client(streaming_gateway, keys["ann"]["stocks"], "stocks")
    await again.subscribe("T.MSFT")


async def test_upstream_refused_closes_the_subscriber_1011(streaming_gateway, simulator, keys):
    await simulator.refuse_connections()
    client = await open_client(streaming_gateway, keys["ann"]["options"], "options")
    await client.send({"action": "subscribe", "params": "T.*"})
    outcome = await read_until_closed(client.websocket)
    assert outcome.close_code == 1011
    assert "upstream feed unavailable" in outcome.events[-1]["message"]
    await simulator.accept_connections()
    client = await open_client(streaming_gateway, keys["ann"]["options"], "options")
    await client.subscribe("T.*")
    simulator.start_recording("options")
    await simulator.emit("options", 100)
    expected = matching(simulator.recorded("options"), {"T.*"})
    assert await client.read_data(len(expected)) == expected


async def test_upstream_auth_failure_is_1011(gateway_factory, simulator, keys):
    from tests.e2e.conftest import simulator_env

    gateway = gateway_factory("bad-upstream-key", **{**simulator_env(simulator), "UPSTREAM_API_KEY": "wrong"})
    client = await open_client(gateway, keys["ann"]["stocks"], "stocks")
    await client.send({"action": "subscribe", "params": "T.AAPL"})
    outcome = await read_until_closed(client.websocket)
    assert outcome.close_code == 1011 and "auth_failed" in outcome.events[-1]["message"]


async def test_subscription_cap_of_the_plan(streaming_gateway, simulator, keys, transactional_db):
    from channels.db import database_sync_to_async

    from accounts.models import Plan

    await database_sync_to_async(lambda: Plan.objects.filter(slug="expert").update(max_subscriptions=2))()
    await database_sync_to_async(lambda: Plan.objects.get(slug="expert").save())()  # evicts cached resolutions
    client = await open_client(streaming_gateway, keys["cyd"]["stocks"], "stocks")
    refused = await client.request({"action": "subscribe", "params": "T.AAPL,T.MSFT,T.NVDA"}, 1)
    assert [status["status"] for status in refused] == ["error"]  # one answer: the message changed nothing
    assert refused[0]["message"].startswith("Subscription limit reached for feed.")
    assert "0 held + 3 new > 2 items per connection" in refused[0]["message"]
    assert [status["status"] for status in await client.subscribe("T.AAPL,T.MSFT")] == ["success", "success"]
    statuses = await client.subscribe("T.AAPL")  # already held: does not count twice
    assert statuses[0]["status"] == "success"
    assert simulator.subscriptions("stocks") == {"T.AAPL", "T.MSFT"}


async def test_flooding_client_is_rate_limited_then_closed_1008(gateway_factory, simulator, keys):
    from tests.e2e.conftest import simulator_env

    gateway = gateway_factory(
        "flood", **simulator_env(simulator), STREAM_CLIENT_MESSAGE_RATE="5", STREAM_CLIENT_MESSAGE_BURST="5",
        STREAM_CLIENT_REFUSALS_BEFORE_CLOSE="10",
    )
    client = await open_client(gateway, keys["ann"]["stocks"], "stocks")
    for _ in range(40):
        await client.send("garbage")
    outcome = await read_until_closed(client.websocket)
    messages = [event["message"] for event in outcome.events]
    assert outcome.close_code == 1008
    assert any("rate limit exceeded" in message for message in messages)
    assert "too many messages" in messages[-1]
    # The flooder was closed; another user's stream is untouched.
    other = await open_client(gateway, keys["bob"]["stocks"], "stocks")
    await other.subscribe("T.AAPL")
