"""UpstreamHub through its public API, against a real upstream: a scripted websockets feed on loopback
(tests/streaming/scripted_feed.py) that sends exactly the frames each test wants.

The subscribers are plain objects recording what the hub tells them (``deliver``, ``upstream_failed``) and when it
acknowledges their subscriptions. Nothing here reaches into the hub's private members. To show that a client did
*not* get an event, a test waits until another client got something the hub routed from the same frame or a later
one: the hub routes each frame in one go, in the order the feed sent them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import orjson
import pytest

from streaming.exceptions import SubscriptionRefused, UpstreamUnavailable
from streaming.hub.hub import UpstreamHub
from streaming.hub.index import MAX_FRAME_BYTES, Subscription
from streaming.runtime.backoff import Backoff
from tests.streaming.scripted_feed import TIMEOUT, FeedSession, ScriptedFeed, acks, answering, polygon_handshake

MARKET = "stocks"
KEY = "hub-upstream-key"
IDLE = 0.3
ACKNOWLEDGED = "acknowledged"


class Client:
    """A hub subscriber recording, in order, its acknowledgements, the frames delivered and the failures told."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.received_at: list[float] = []  # per delivery: when the hub read the upstream frame it came from
        self.failures: list[str] = []
        self.log: list[object] = []
        self._changed = asyncio.Event()

    def deliver(self, frames: list[bytes], events: int = 0, received_at: float = 0.0) -> None:
        self.frames.extend(frames)
        self.received_at.append(received_at)
        self.log.extend(frames)
        self._notify()

    def upstream_failed(self, message: str) -> None:
        self.failures.append(message)
        self.log.append(("failed", message))
        self._notify()

    def acknowledge(self) -> None:
        self.log.append(ACKNOWLEDGED)

    def events(self) -> list[dict]:
        return [event for frame in self.frames for event in orjson.loads(frame)]

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        async with asyncio.timeout(TIMEOUT):
            while not predicate():
                await self._changed.wait()

    async def received(self, count: int) -> list[bytes]:
        """The frames delivered so far, once there are at least *count*."""
        await self.wait_for(lambda: len(self.frames) >= count)
        return self.frames

    async def failed(self) -> str:
        await self.wait_for(lambda: bool(self.failures))
        return self.failures[0]

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()


def items(*texts: str) -> list[Subscription]:
    return [Subscription(*text.split(".", 1)) for text in texts]


def trade(symbol: str, price: float = 1.0, **fields: object) -> dict:
    return {"ev": "T", "sym": symbol, "p": price, **fields}


def quote(symbol: str, bid: float = 1.0) -> dict:
    return {"ev": "Q", "sym": symbol, "bp": bid}


def frame(*events: dict) -> bytes:
    return orjson.dumps(list(events))


def status(value: str, message: str) -> dict:
    return {"ev": "status", "status": value, "message": message}


async def subscribe(hub: UpstreamHub, client: Client, *texts: str) -> None:
    await hub.subscribe(client, items(*texts), client.acknowledge)


def queued_actions(session: FeedSession) -> list[dict]:
    """The actions the feed has read and nobody took yet."""
    actions = []
    while not session.actions.empty():
        actions.append(session.actions.get_nowait())
    return actions


@pytest.fixture(autouse=True)
def process_fanout(settings):
    """The hub opens its own connection to the feed (not the relay)."""
    settings.STREAM_FANOUT = "process"


@pytest.fixture
async def feed() -> AsyncIterator[ScriptedFeed]:
    async with ScriptedFeed() as server:
        yield server


@pytest.fixture
async def manual_feed() -> AsyncIterator[ScriptedFeed]:
    """A feed that acknowledges nothing unless the test sends the acks."""
    async with ScriptedFeed(auto_ack=False) as server:
        yield server


@pytest.fixture
def hub(feed) -> UpstreamHub:
    return UpstreamHub(MARKET, feed.url, KEY, idle_seconds=IDLE)


# --- subscriptions ----------------------------------------------------------------------------------------------------


async def test_the_first_subscriber_opens_the_upstream_and_is_acknowledged_once_the_feed_is(hub, feed):
    client = Client()
    await subscribe(hub, client, "T.MSFT", "T.AAPL")
    session = await feed.next_session()
    assert session.auth == {"action": "auth", "params": KEY}
    assert await session.next_action() == {"action": "subscribe", "params": "T.AAPL,T.MSFT"}
    assert client.log == [ACKNOWLEDGED]
    assert hub.subscriptions_of(client) == frozenset(items("T.AAPL", "T.MSFT"))


async def test_concurrent_first_subscribers_share_one_upstream_connection(hub, feed):
    clients = [Client() for _ in range(3)]
    await asyncio.gather(*(subscribe(hub, client, f"T.S{n}") for n, client in enumerate(clients)))
    assert len(feed.sessions) == 1
    session = feed.sessions[0]
    subscribed = [item for action in queued_actions(session) for item in action["params"].split(",")]
    assert sorted(subscribed) == ["T.S0", "T.S1", "T.S2"]  # each item once
    assert [client.log for client in clients] == [[ACKNOWLEDGED]] * 3


async def test_an_item_already_upstream_is_not_subscribed_again_and_is_acknowledged_at_once(manual_feed):
    hub = UpstreamHub(MARKET, manual_feed.url, KEY, idle_seconds=IDLE)
    first, second, third = Client(), Client(), Client()
    subscribing = asyncio.ensure_future(subscribe(hub, first, "T.AAPL"))
    session = await manual_feed.next_session()
    action = await session.next_action()
    await session.send(acks(action))
    await subscribing
    async with asyncio.timeout(1):  # no ack is coming: waiting for one would run into this
        await subscribe(hub, second, "T.AAPL")
    assert second.log == [ACKNOWLEDGED]
    asking = asyncio.ensure_future(subscribe(hub, third, "T.MSFT"))
    assert await session.next_action() == {"action": "subscribe", "params": "T.MSFT"}  # nothing in between
    asking.cancel()


async def test_unsubscribe_drops_upstream_only_what_nobody_else_holds(hub, feed):
    first, second = Client(), Client()
    await subscribe(hub, first, "T.AAPL", "T.MSFT")
    await subscribe(hub, second, "T.AAPL")
    session = feed.sessions[0]
    queued_actions(session)

    await hub.unsubscribe(first, items("T.AAPL"))
    assert hub.subscriptions_of(first) == frozenset(items("T.MSFT"))
    await hub.unsubscribe(first, items("T.MSFT"))
    assert hub.subscriptions_of(first) == frozenset()
    assert await session.next_action() == {"action": "unsubscribe", "params": "T.MSFT"}  # T.AAPL stayed
    assert hub.subscriptions_of(second) == frozenset(items("T.AAPL"))

    await session.send(frame(trade("AAPL"), trade("MSFT")))
    assert await second.received(1) == [frame(trade("AAPL"))]
    assert first.frames == []


async def test_detach_forgets_the_client_and_drops_its_items_upstream(hub, feed):
    leaving, staying, stranger = Client(), Client(), Client()
    await subscribe(hub, leaving, "T.AAPL", "Q.*")
    await subscribe(hub, staying, "T.AAPL")
    session = feed.sessions[0]
    queued_actions(session)

    hub.detach(stranger)  # never subscribed: nothing to do
    hub.detach(leaving)
    assert hub.subscriptions_of(leaving) == frozenset()
    assert await session.next_action() == {"action": "unsubscribe", "params": "Q.*"}

    await session.send(frame(quote("AAPL"), trade("AAPL")))
    assert await staying.received(1) == [frame(trade("AAPL"))]
    assert leaving.frames == [] and stranger.frames == []


async def test_subscriptions_of_a_client_without_any_is_empty(hub):
    assert hub.subscriptions_of(Client()) == frozenset()


# --- the feed's limit per connection ----------------------------------------------------------------------------------


def limited_hub(feed: ScriptedFeed, quotes: int) -> UpstreamHub:
    return UpstreamHub(MARKET, feed.url, KEY, idle_seconds=IDLE, item_limits={"Q": quotes})


async def test_clients_share_the_feeds_limit_and_a_subscribe_over_it_changes_nothing(feed):
    hub = limited_hub(feed, quotes=3)
    first, second = Client(), Client()
    await subscribe(hub, first, "Q.A", "Q.B", "T.A")
    session = feed.sessions[0]
    queued_actions(session)
    with pytest.raises(SubscriptionRefused) as refused:
        await subscribe(hub, second, "Q.B", "Q.C", "Q.D", "T.B")  # Q.B counts once: 2 held + 2 new > 3
    assert str(refused.value) == (
        "Subscription limit reached for feed. Please remove some subscriptions and try again. (the feed allows 3 Q "
        "items per connection, which every client of this gateway shares: 2 held + 2 new; nothing was subscribed)"
    )
    assert hub.subscriptions_of(second) == frozenset() and second.log == []
    await subscribe(hub, second, "Q.B", "Q.C", "T.B")  # exactly the limit, and other event types are not limited
    assert hub.capacity.held("Q") == 3
    assert [action["params"] for action in queued_actions(session)] == ["Q.C,T.B"]  # nothing of the refused one


async def test_what_clients_stop_holding_frees_the_feeds_limit(feed):
    hub = limited_hub(feed, quotes=2)
    leaving, unsubscribing, waiting = Client(), Client(), Client()
    await subscribe(hub, leaving, "Q.A")
    await subscribe(hub, unsubscribing, "Q.A", "Q.B")
    with pytest.raises(SubscriptionRefused):
        await subscribe(hub, waiting, "Q.C")
    hub.detach(leaving)  # Q.A is still held by the other
    with pytest.raises(SubscriptionRefused):
        await subscribe(hub, waiting, "Q.C")
    await hub.unsubscribe(unsubscribing, items("Q.B"))
    await subscribe(hub, waiting, "Q.C")
    hub.detach(unsubscribing)
    await subscribe(hub, waiting, "Q.D")
    assert hub.subscriptions_of(waiting) == frozenset(items("Q.C", "Q.D"))
    assert hub.capacity.held("Q") == 2


async def test_a_request_claiming_the_feeds_limit_holds_it_for_all_its_steps(feed):
    hub = limited_hub(feed, quotes=2)
    claimant, other = Client(), Client()
    with hub.claiming(items("Q.A", "Q.B")):
        await subscribe(hub, claimant, "Q.A")  # the first step; Q.B still to come
        with pytest.raises(SubscriptionRefused):
            await subscribe(hub, other, "Q.C")
        await subscribe(hub, claimant, "Q.B")
    with pytest.raises(SubscriptionRefused):
        hub.claiming(items("Q.C")).__enter__()
    assert hub.capacity.held("Q") == 2
    hub.detach(claimant)
    with hub.claiming(items("Q.C", "Q.D")):
        pass  # a request that ended without subscribing gives its claim back
    assert hub.capacity.held("Q") == 0


async def test_a_lost_upstream_frees_the_feeds_limit_of_the_clients_it_forgets(feed):
    hub = limited_hub(feed, quotes=1)
    client = Client()
    await subscribe(hub, client, "Q.A")
    await (await feed.next_session()).close(1011)
    await client.failed()
    assert hub.capacity.held("Q") == 0
    await subscribe(hub, client, "Q.B")


# --- routing ----------------------------------------------------------------------------------------------------------


async def test_each_group_of_identical_subscriptions_gets_its_events_encoded_once(hub, feed):
    apple, apple_too, mixed, quotes = Client(), Client(), Client(), Client()
    await subscribe(hub, apple, "T.AAPL")
    await subscribe(hub, apple_too, "T.AAPL")
    await subscribe(hub, mixed, "T.MSFT", "Q.AAPL")
    await subscribe(hub, quotes, "Q.*")
    session = feed.sessions[0]

    await session.send(frame(trade("AAPL"), trade("MSFT"), quote("AAPL"), quote("MSFT"), trade("NVDA")))
    await quotes.received(1)
    assert apple.frames == [frame(trade("AAPL"))]
    assert apple_too.frames[0] is apple.frames[0]  # one frame for the group, not one per client
    assert mixed.frames == [frame(trade("MSFT"), quote("AAPL"))]  # in the feed's order
    assert quotes.frames == [frame(quote("AAPL"), quote("MSFT"))]  # nobody asked for NVDA


async def test_a_group_taking_every_event_gets_the_upstream_frame_unchanged(hub, feed):
    whole, whole_too, narrow = Client(), Client(), Client()
    await subscribe(hub, whole, "T.*", "Q.*")
    await subscribe(hub, whole_too, "T.*", "Q.*")
    await subscribe(hub, narrow, "T.AAPL")
    session = feed.sessions[0]

    sent = b'[{"ev":"T","sym":"AAPL","p":1.5},  {"ev":"Q","sym":"MSFT","bp":2}]'  # spacing orjson would not write
    await session.send(sent)
    assert await whole.received(1) == [sent]
    assert whole_too.frames[0] is whole.frames[0]
    assert narrow.frames == [b'[{"ev":"T","sym":"AAPL","p":1.5}]']

    only_trades = b'[{"ev":"T","sym":"MSFT","p":1}]'  # T.* alone covers it too
    await session.send(only_trades)
    assert (await whole.received(2))[-1] == only_trades
    assert whole_too.frames[-1] == only_trades
    assert len(narrow.frames) == 1


async def test_every_delivery_of_a_frame_carries_the_moment_the_hub_read_it(hub, feed):
    """Where the send path's delay starts (``cutemarkets_stream_send_delay_seconds``): one clock reading per upstream
    frame, the same for the frame passed whole, the frames built from its events and the statuses in it."""
    whole, narrow = Client(), Client()
    await subscribe(hub, whole, "T.*", "Q.*")
    await subscribe(hub, narrow, "T.AAPL")
    session = feed.sessions[0]
    before = time.monotonic()
    await session.send(frame(trade("AAPL"), status("error", "something about T.AAPL")))
    await narrow.received(2)
    await whole.received(2)
    received_at = {*whole.received_at, *narrow.received_at}
    assert len(received_at) == 1 and before < received_at.pop() <= time.monotonic()


async def test_a_frame_too_large_to_pass_whole_is_split_into_frames_under_the_limit(hub, feed):
    everything = Client()
    await subscribe(hub, everything, "T.*")
    events = [trade(f"S{n:05d}", n, c=[14, 41], x="x" * 60) for n in range(12_000)]
    sent = frame(*events)
    assert len(sent) >= MAX_FRAME_BYTES
    await feed.sessions[0].send(sent)
    await everything.wait_for(lambda: len(everything.events()) >= len(events))
    assert len(everything.frames) >= 2
    assert all(len(delivered) < MAX_FRAME_BYTES for delivered in everything.frames)
    assert everything.events() == events


async def test_non_ascii_events_are_forwarded_as_utf8(hub, feed):
    narrow = Client()
    await subscribe(hub, narrow, "T.AAPL")
    await feed.sessions[0].send('[{"ev":"T","sym":"AAPL","x":"é"},{"ev":"T","sym":"MSFT"}]')
    (delivered,) = await narrow.received(1)
    assert delivered == '[{"ev":"T","sym":"AAPL","x":"é"}]'.encode()
    assert orjson.loads(delivered) == [{"ev": "T", "sym": "AAPL", "x": "é"}]


async def test_events_carrying_their_ticker_in_t_are_routed_and_events_without_a_symbol_dropped(hub, feed):
    """LULD and NOI name the ticker in ``T``; an event the hub cannot route also keeps the frame from passing whole,
    so a wildcard group never gets an event nobody can have asked for."""
    halts, trades = Client(), Client()
    await subscribe(hub, halts, "LULD.AAPL")
    await subscribe(hub, trades, "T.*")
    luld = {"ev": "LULD", "T": "AAPL", "h": 1.1, "l": 0.9}
    unroutable = [{"ev": "T"}, {"sym": "AAPL"}, {"ev": 7, "sym": "AAPL"}, {"ev": "T", "sym": 7}]
    await feed.sessions[0].send(frame(luld, *unroutable, trade("AAPL")))
    await halts.received(1)
    await trades.received(1)
    assert halts.frames == [frame(luld)]
    assert trades.frames == [frame(trade("AAPL"))]


# --- statuses and acknowledgements ------------------------------------------------------------------------------------


async def test_a_status_goes_to_the_clients_of_the_item_it_names_or_else_to_everyone(hub, feed):
    apple, microsoft, trades, quotes = Client(), Client(), Client(), Client()
    await subscribe(hub, apple, "T.AAPL")
    await subscribe(hub, microsoft, "T.MSFT")
    await subscribe(hub, trades, "T.*")
    await subscribe(hub, quotes, "Q.*")
    session = feed.sessions[0]

    about_apple = status("error", "too many subscriptions for T.AAPL")
    upstream_ack = status("success", "subscribed to: T.AAPL")  # the hub's own: clients got theirs from the hub
    about_nothing_held = status("error", "unknown item T.NVDA")
    for_everyone = status("max_connections", "Maximum number of connections exceeded.")
    for event in (about_apple, upstream_ack, about_nothing_held, for_everyone):
        await session.send(frame(event))

    everyone = [frame(about_nothing_held), frame(for_everyone)]
    for client in (apple, microsoft, trades, quotes):
        await client.wait_for(lambda client=client: frame(for_everyone) in client.frames)
    assert apple.frames == [frame(about_apple), *everyone]
    assert trades.frames == [frame(about_apple), *everyone]  # T.* delivers T.AAPL's events
    assert microsoft.frames == everyone
    assert quotes.frames == everyone


async def test_a_frame_mixing_statuses_and_data_gets_each_routed_and_never_passes_whole(hub, feed):
    trades = Client()
    await subscribe(hub, trades, "T.*")
    warning = status("error", "slow down on T.AAPL")
    await feed.sessions[0].send(b'[{"ev":"status","status":"error","message":"slow down on T.AAPL"},  '
                                b'{"ev":"T","sym":"AAPL","p":1.0}]')
    assert await trades.received(2) == [frame(warning), frame(trade("AAPL"))]


async def test_a_client_is_acknowledged_after_the_feed_acknowledged_and_before_any_of_its_data(manual_feed):
    """Events the feed sends before its ack precede the client's ack, so the client never gets them."""
    hub = UpstreamHub(MARKET, manual_feed.url, KEY, idle_seconds=IDLE)
    witness, client = Client(), Client()
    watching = asyncio.ensure_future(subscribe(hub, witness, "T.*"))
    session = await manual_feed.next_session()
    await session.send(acks(await session.next_action()))
    await watching

    subscribing = asyncio.ensure_future(subscribe(hub, client, "T.AAPL"))
    action = await session.next_action()
    assert action == {"action": "subscribe", "params": "T.AAPL"}
    await session.send(frame(trade("AAPL", 1)))
    await witness.received(1)
    assert not subscribing.done() and client.log == []

    await session.send(acks(action))
    await subscribing
    assert client.log == [ACKNOWLEDGED]
    await session.send(frame(trade("AAPL", 2)))
    await client.received(1)
    assert client.log == [ACKNOWLEDGED, frame(trade("AAPL", 2))]


async def test_a_feed_that_never_acknowledges_delays_the_client_ack_by_the_ack_timeout(
    manual_feed, monkeypatch, caplog
):
    monkeypatch.setattr("streaming.hub.hub.UPSTREAM_ACK_TIMEOUT_SECONDS", 0.3)
    hub = UpstreamHub(MARKET, manual_feed.url, KEY, idle_seconds=IDLE)
    client = Client()
    started = time.monotonic()
    await subscribe(hub, client, "T.AAPL")
    assert time.monotonic() - started >= 0.3
    assert client.log == [ACKNOWLEDGED]
    assert "upstream stocks did not acknowledge 1 item(s) in time" in caplog.text
    await manual_feed.sessions[0].send(frame(trade("AAPL")))
    assert await client.received(1) == [frame(trade("AAPL"))]


# --- upstream failures ------------------------------------------------------------------------------------------------


async def test_a_refused_authentication_fails_the_subscribe():
    refusal = frame(status("auth_failed", "authentication failed"))
    async with ScriptedFeed(handshake=answering(refusal)) as feed:
        hub = UpstreamHub(MARKET, feed.url, KEY, idle_seconds=IDLE)
        client = Client()
        refused = "^upstream feed unavailable: auth_failed: authentication failed$"
        with pytest.raises(UpstreamUnavailable, match=refused):
            await subscribe(hub, client, "T.AAPL")
        assert client.log == []
        assert hub.subscriptions_of(client) == frozenset()


async def test_an_unreachable_upstream_fails_the_subscribe():
    hub = UpstreamHub(MARKET, "ws://127.0.0.1:9/stocks", KEY, idle_seconds=IDLE)
    client = Client()
    with pytest.raises(UpstreamUnavailable, match="^upstream feed unavailable: upstream unreachable"):
        await subscribe(hub, client, "T.AAPL")
    assert client.log == []


async def test_losing_the_upstream_tells_and_forgets_every_client_and_the_next_subscribe_reconnects(hub, feed):
    first, second = Client(), Client()
    await subscribe(hub, first, "T.AAPL")
    await subscribe(hub, second, "T.MSFT")
    lost = await feed.next_session()
    await lost.close(1011)
    message = "upstream feed unavailable: upstream connection lost (close code 1011)"
    assert await first.failed() == message
    assert await second.failed() == message
    assert hub.subscriptions_of(first) == hub.subscriptions_of(second) == frozenset()

    await subscribe(hub, first, "T.AAPL")  # after the backoff
    session = await feed.next_session()
    assert session is not lost
    assert await session.next_action() == {"action": "subscribe", "params": "T.AAPL"}  # not the forgotten T.MSFT
    await session.send(frame(trade("MSFT"), trade("AAPL")))
    assert (await first.received(1))[-1] == frame(trade("AAPL"))
    assert second.frames == [] and second.failures == [message]


@pytest.mark.parametrize(
    ("sent", "problem"),
    [
        ("Connected Successfully", "upstream sent a frame that is not JSON"),
        ('{"ev":"T","sym":"AAPL"}', "upstream sent a frame that is not an array of events"),
        ('[{"ev":"T","sym":"AAPL"}, 1]', "upstream sent an event that is not an object"),
    ],
)
async def test_a_malformed_frame_fails_every_client_and_closes_the_upstream(hub, feed, sent, problem):
    first, second = Client(), Client()
    await subscribe(hub, first, "T.AAPL")
    await subscribe(hub, second, "T.*")
    session = feed.sessions[0]
    await session.send(sent)
    for client in (first, second):
        assert await client.failed() == f"upstream feed unavailable: {problem}"
        assert client.frames == []  # not even the valid part of the frame
    await session.wait_closed()


async def test_an_upstream_silent_for_the_silence_limit_counts_as_stalled(feed):
    silence = 0.3
    hub = UpstreamHub(MARKET, feed.url, KEY, idle_seconds=IDLE, silence_seconds=silence)
    client = Client()
    await subscribe(hub, client, "T.AAPL")
    session = feed.sessions[0]
    for number in range(4):  # a feed that keeps talking is not stalled, however long it talks
        last_sent = time.monotonic()
        await session.send(frame(trade("AAPL", number)))
        await client.received(number + 1)
        await asyncio.sleep(silence / 2)  # pacing the feed, not waiting for the hub
    assert client.failures == []
    assert await client.failed() == "upstream feed unavailable: upstream sent nothing for 0.3 s (stalled)"
    assert time.monotonic() - last_sent >= silence
    await session.wait_closed()


async def test_reconnecting_to_a_flapping_upstream_backs_off_exponentially():
    """A feed that authenticates and hangs up at once: each new attempt waits longer than the one before."""

    async def authenticate_then_hang_up(session: FeedSession) -> bool:
        await polygon_handshake(session)
        await session.close(1011)
        return False

    async with ScriptedFeed(handshake=authenticate_then_hang_up) as feed:
        hub = UpstreamHub(MARKET, feed.url, KEY, idle_seconds=IDLE)
        base = 0.1
        hub.backoff = Backoff(base=base, cap=10.0)
        client = Client()
        attempts = 5
        for _ in range(attempts):
            with pytest.raises(UpstreamUnavailable, match="^upstream feed unavailable: upstream connection lost"):
                await subscribe(hub, client, "T.AAPL")
        assert client.log == []
        opened = [session.opened_at for session in feed.sessions]
        assert len(opened) == attempts
        # The k-th failure allows the next attempt after a random delay between half and all of base * 2**k.
        for failure, (earlier, later) in enumerate(zip(opened, opened[1:], strict=False)):
            assert later - earlier >= base * 2**failure / 2


# --- idle upstream ----------------------------------------------------------------------------------------------------


async def test_the_upstream_closes_once_nobody_needed_it_for_the_idle_period(hub, feed):
    client = Client()
    await subscribe(hub, client, "T.AAPL")
    session = await feed.next_session()
    assert await session.next_action() == {"action": "subscribe", "params": "T.AAPL"}
    left_at = time.monotonic()
    hub.detach(client)
    assert await session.next_action() == {"action": "unsubscribe", "params": "T.AAPL"}
    assert await session.wait_closed() - left_at >= IDLE
    assert session.connection.close_code == 1000

    newcomer = Client()
    await subscribe(hub, newcomer, "T.MSFT")  # a new connection for the next client
    reopened = await feed.next_session()
    assert reopened is not session
    assert await reopened.next_action() == {"action": "subscribe", "params": "T.MSFT"}
    assert newcomer.log == [ACKNOWLEDGED]


async def test_a_subscriber_within_the_idle_period_keeps_the_upstream_connection(hub, feed):
    leaving, arriving = Client(), Client()
    await subscribe(hub, leaving, "T.AAPL")
    session = await feed.next_session()
    queued_actions(session)
    hub.detach(leaving)
    await subscribe(hub, arriving, "T.MSFT")
    actions = [await session.next_action(), await session.next_action()]
    assert sorted(actions, key=str) == sorted(
        [{"action": "unsubscribe", "params": "T.AAPL"}, {"action": "subscribe", "params": "T.MSFT"}], key=str
    )
    await session.send(frame(trade("MSFT")))
    assert await arriving.received(1) == [frame(trade("MSFT"))]
    assert len(feed.sessions) == 1 and not session.is_closed


# --- one hub per market -----------------------------------------------------------------------------------------------


async def test_for_market_gives_one_hub_per_market_configured_from_the_settings(feed, settings):
    settings.STREAM_UPSTREAMS = {"stocks": {"URL": feed.url, "API_KEY": KEY}, "options": {"URL": "", "API_KEY": ""}}
    settings.STREAM_UPSTREAM_IDLE_SECONDS = 7.0
    settings.STREAM_UPSTREAM_SILENCE_SECONDS = 3.0
    hub = UpstreamHub.for_market("stocks")
    assert UpstreamHub.for_market("stocks") is hub
    assert (hub.market, hub.url, hub.api_key, hub.idle_seconds, hub.silence_seconds) == ("stocks", feed.url, KEY, 7, 3)
    assert hub.capacity.limited(items("Q.A", "T.A")) == []  # the feed limits option quotes only
    with pytest.raises(LookupError, match="no upstream configured for options"):
        UpstreamHub.for_market("options")

    client = Client()
    await subscribe(hub, client, "T.AAPL")
    assert (await feed.next_session()).auth == {"action": "auth", "params": KEY}
    assert client.log == [ACKNOWLEDGED]
