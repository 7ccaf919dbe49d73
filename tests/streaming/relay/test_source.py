"""streaming.relay.source, the gateway side of the relay, against the suite's real Redis with no relay running: the
test publishes the relay's envelopes itself (``streaming.relay.wire.encode``) and reads what the source asks for on
the requests channel. Relays and sources together are in test_leader.py; processes in tests/e2e/test_relay.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import orjson
import pytest
import redis.asyncio
from django.conf import settings as django_settings

from devstack.redis_server import RedisServer
from streaming.exceptions import LeaseUnavailable, RelayGap, UpstreamUnavailable
from streaming.relay.source import Registration, RelaySource
from streaming.relay.wire import (
    KIND_ACK,
    KIND_END,
    KIND_FRAME,
    KIND_HEARTBEAT,
    Change,
    RelayNames,
    decode_change,
    encode,
    encode_ack,
)
from streaming.runtime.redis_client import redis_client

PREFIX = "cm:relay-source-test:"
MARKET = "stocks"
NAMES = RelayNames(PREFIX, MARKET)
TTL = 3.0
TIMEOUT = 5.0
DATA = b'[{"ev":"T","sym":"AAPL","p":1.5}]'


def ack(item: str) -> dict:
    return {"ev": "status", "status": "success", "message": f"subscribed to: {item}"}


class ScriptedRelay:
    """Says on the market's frames channel what a feed relay would, numbering its envelopes itself."""

    def __init__(self, client: redis.asyncio.Redis, epoch: int = 1) -> None:
        self.redis = client
        self.epoch = epoch
        self.seq = 0

    async def announce(self) -> None:
        """What makes `RelaySource.open` find a relay streaming."""
        await self.redis.set(NAMES.live, self.epoch, px=60_000)

    async def publish(
        self, kind: bytes, payload: bytes = b"", epoch: int | None = None, seq: int | None = None
    ) -> None:
        self.seq = self.seq + 1 if seq is None else seq
        await self.redis.publish(NAMES.frames, encode(self.epoch if epoch is None else epoch, self.seq, kind, payload))

    async def frame(self, payload: bytes) -> None:
        await self.publish(KIND_FRAME, payload)

    async def ack(self, token: str, items: list[str]) -> None:
        await self.publish(KIND_ACK, encode_ack(token, items).encode())


@pytest.fixture(autouse=True)
def relay_settings(settings):
    settings.STREAM_FANOUT = "relay"
    settings.STREAM_RELAY_PREFIX = PREFIX
    settings.STREAM_RELAY_REGISTRATION_TTL = TTL
    return settings


@pytest.fixture
async def relay() -> ScriptedRelay:
    relay = ScriptedRelay(redis_client())
    await relay.announce()
    return relay


@pytest.fixture
async def source(relay) -> AsyncIterator[RelaySource]:
    source = await RelaySource.open(MARKET)
    yield source
    await source.close()


@pytest.fixture
async def requests() -> AsyncIterator[redis.asyncio.client.PubSub]:
    """A subscriber to the requests channel, as the relay listens to it."""
    pubsub = redis_client().pubsub()
    await pubsub.subscribe(NAMES.requests)
    while await pubsub.get_message(timeout=None) is None:  # subscribed
        pass
    yield pubsub
    await pubsub.aclose()


@pytest.fixture
def dead_redis(settings, tmp_path) -> RedisServer:
    """The URL of a Redis that is no longer running, as this test's REDIS_URL."""
    server = RedisServer(directory=tmp_path).start()
    settings.REDIS_URL = server.url
    server.kill()
    return server


async def next_change(pubsub: redis.asyncio.client.PubSub) -> tuple[Change, str, list[str]]:
    """The next registration change announced on the requests channel."""
    async with asyncio.timeout(TIMEOUT):
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=None)
            if message is not None and message["type"] == "message":
                return decode_change(message["data"].decode())


async def next_request(pubsub: redis.asyncio.client.PubSub) -> tuple[str, list[str]]:
    """The token and items of the next announced change, which must be an addition."""
    change, token, items = await next_change(pubsub)
    assert change is Change.ADDED
    return token, items


async def next_frame(frames: AsyncIterator[bytes]) -> bytes:
    async with asyncio.timeout(TIMEOUT):
        return await anext(frames)


async def source_id(client: redis.asyncio.Redis) -> str:
    """The id of the one source registered for the market."""
    (member,) = await client.smembers(NAMES.sources)
    return member.decode()


def registration(ttl: float = TTL, source: str = "gateway-1") -> Registration:
    return Registration(redis_client(), NAMES, source, ttl)


# --- opening ----------------------------------------------------------------------------------------------------------


async def test_open_refuses_when_no_relay_is_streaming():
    with pytest.raises(UpstreamUnavailable, match="^no feed relay is streaming stocks$"):
        await RelaySource.open(MARKET)


async def test_open_refuses_when_redis_is_unreachable(dead_redis):
    with pytest.raises(UpstreamUnavailable, match="^feed relay unreachable: Redis .*Connection refused"):
        await RelaySource.open(MARKET)


async def test_open_gives_up_on_a_redis_that_never_answers(settings, monkeypatch):
    monkeypatch.setattr("streaming.relay.source.OPEN_TIMEOUT_SECONDS", 0.3)
    held: list[asyncio.StreamWriter] = []

    async def accept_and_hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(accept_and_hold, "127.0.0.1", 0)
    settings.REDIS_URL = f"redis://127.0.0.1:{server.sockets[0].getsockname()[1]}/0"
    started = time.monotonic()
    try:
        with pytest.raises(UpstreamUnavailable, match="^feed relay unreachable: Redis timed out$"):
            await RelaySource.open(MARKET)
    finally:
        for writer in held:
            writer.close()
        server.close()
    assert time.monotonic() - started < 0.3 + 1.0  # its own timeout, not the Redis client's socket timeout


async def test_open_leaves_no_subscription_behind_when_it_refuses():
    with pytest.raises(UpstreamUnavailable):
        await RelaySource.open(MARKET)
    assert await redis_client().pubsub_numsub(NAMES.frames) == [(NAMES.frames.encode(), 0)]


# --- the registration -------------------------------------------------------------------------------------------------


async def test_add_registers_the_items_with_a_ttl_and_announces_them_with_its_token(requests):
    client = redis_client()
    held = registration()
    before = time.monotonic()
    await held.add(["Q.*", "T.AAPL"], "gateway-1/1")
    assert await client.smembers(NAMES.items("gateway-1")) == {b"T.AAPL", b"Q.*"}
    assert 0 < await client.pttl(NAMES.items("gateway-1")) <= TTL * 1000
    assert await client.smembers(NAMES.sources) == {b"gateway-1"}
    assert await next_request(requests) == ("gateway-1/1", ["Q.*", "T.AAPL"])
    assert held.items == {"T.AAPL", "Q.*"}
    assert held.confirmed_at >= before
    assert held.refresh_interval == pytest.approx(TTL / 3)


async def test_remove_unregisters_the_items_keeps_the_rest_expiring_and_announces_the_removal(requests):
    client = redis_client()
    held = registration()
    await held.add(["T.AAPL", "T.MSFT"], "gateway-1/1")
    await held.remove(["T.AAPL"])
    assert await client.smembers(NAMES.items("gateway-1")) == {b"T.MSFT"}
    assert 0 < await client.pttl(NAMES.items("gateway-1")) <= TTL * 1000
    assert held.items == {"T.MSFT"}
    assert await next_change(requests) == (Change.ADDED, "gateway-1/1", ["T.AAPL", "T.MSFT"])
    assert await next_change(requests) == (Change.REMOVED, "gateway-1", ["T.AAPL"])


async def test_removing_the_last_item_empties_the_registration_without_reporting_it_lost():
    """Redis deletes a set with its last member; with nothing held, that is no loss."""
    client = redis_client()
    held = registration()
    await held.add(["T.AAPL"], "gateway-1/1")
    await held.remove(["T.AAPL"])
    assert not await client.exists(NAMES.items("gateway-1"))
    assert held.items == set()
    assert await held.refresh() is True


async def test_refresh_extends_the_registration():
    client = redis_client()
    held = registration()
    await held.add(["T.AAPL"], "gateway-1/1")
    await client.pexpire(NAMES.items("gateway-1"), 100)
    before = time.monotonic()
    assert await held.refresh() is True
    assert await client.pttl(NAMES.items("gateway-1")) > 100
    assert held.confirmed_at >= before


async def test_refresh_reports_the_registration_lost_when_it_vanished_while_items_were_held():
    client = redis_client()
    held = registration()
    await held.add(["T.AAPL"], "gateway-1/1")
    confirmed_at = held.confirmed_at
    await client.delete(NAMES.items("gateway-1"))  # expired, or Redis lost its data
    assert await held.refresh() is False
    assert held.confirmed_at == confirmed_at
    assert not await client.exists(NAMES.items("gateway-1"))  # refresh does not bring it back


async def test_a_registration_that_expired_and_was_recreated_by_an_addition_is_still_lost():
    """Between two refreshes, the set may expire and an addition re-create it with only the new items."""
    client = redis_client()
    held = registration()
    await held.add(["T.AAPL"], "gateway-1/1")
    await client.delete(NAMES.items("gateway-1"))
    await held.add(["T.MSFT"], "gateway-1/2")
    assert await client.smembers(NAMES.items("gateway-1")) == {b"T.MSFT"}
    assert await held.refresh() is False


async def test_an_addition_after_removing_everything_is_no_loss():
    held = registration()
    await held.add(["T.AAPL"], "gateway-1/1")
    await held.remove(["T.AAPL"])
    await held.add(["T.MSFT"], "gateway-1/2")
    assert await held.refresh() is True


async def test_refresh_of_a_registration_holding_nothing_is_never_a_loss():
    assert await registration().refresh() is True


async def test_refresh_raises_lease_unavailable_when_redis_is_unreachable(dead_redis):
    with pytest.raises(LeaseUnavailable, match=f"cannot refresh {NAMES.items('gateway-1')}"):
        await registration().refresh()


async def test_release_removes_the_registration_and_the_source_and_announces_it(requests):
    client = redis_client()
    held, other = registration(), registration(source="gateway-2")
    await held.add(["T.AAPL"], "gateway-1/1")
    await other.add(["T.AAPL"], "gateway-2/1")
    await held.release()
    assert not await client.exists(NAMES.items("gateway-1"))
    assert await client.smembers(NAMES.sources) == {b"gateway-2"}
    assert await client.smembers(NAMES.items("gateway-2")) == {b"T.AAPL"}
    assert held.items == set()
    assert [(await next_change(requests))[0] for _ in range(3)] == [Change.ADDED, Change.ADDED, Change.RELEASED]


# --- subscribing through the source -----------------------------------------------------------------------------------


async def test_subscribe_registers_the_items_and_asks_the_relay_to_confirm_them(source, requests):
    client = redis_client()
    await source.subscribe({"T.MSFT", "T.AAPL"})
    token, items = await next_request(requests)
    assert items == ["T.AAPL", "T.MSFT"]
    registered = await source_id(client)
    assert token.startswith(f"{registered}/")
    assert await client.smembers(NAMES.items(registered)) == {b"T.AAPL", b"T.MSFT"}

    await source.subscribe(["Q.*"])
    second_token, second_items = await next_request(requests)
    assert second_items == ["Q.*"] and second_token.startswith(f"{registered}/") and second_token != token
    assert await client.smembers(NAMES.items(registered)) == {b"T.AAPL", b"T.MSFT", b"Q.*"}


async def test_subscribe_to_nothing_registers_and_asks_nothing(source, requests):
    await source.subscribe([])
    assert await redis_client().smembers(NAMES.sources) == set()
    await source.subscribe(["T.NEXT"])
    assert (await next_request(requests))[1] == ["T.NEXT"]  # the first request the relay hears


async def test_unsubscribe_unregisters_the_items_and_announces_the_removal(source, requests):
    client = redis_client()
    await source.subscribe(["T.AAPL", "T.MSFT"])
    await next_request(requests)
    await source.unsubscribe(["T.AAPL"])
    await source.unsubscribe([])
    registered = await source_id(client)
    assert await client.smembers(NAMES.items(registered)) == {b"T.MSFT"}
    assert await next_change(requests) == (Change.REMOVED, registered, ["T.AAPL"])
    await source.subscribe(["T.NEXT"])
    assert (await next_request(requests))[1] == ["T.NEXT"]  # unsubscribing nothing announced nothing


async def test_close_unregisters_and_unsubscribes_from_the_relay(relay):
    client = redis_client()
    source = await RelaySource.open(MARKET)
    await source.subscribe(["T.AAPL"])
    registered = await source_id(client)
    assert await client.pubsub_numsub(NAMES.frames) == [(NAMES.frames.encode(), 1)]
    await source.close()
    assert not await client.exists(NAMES.items(registered))
    assert await client.smembers(NAMES.sources) == set()
    assert await client.pubsub_numsub(NAMES.frames) == [(NAMES.frames.encode(), 0)]


# --- frames -----------------------------------------------------------------------------------------------------------


async def test_frames_yields_the_relays_upstream_frames_verbatim(source, relay):
    frames = source.frames()
    spaced = b'[{"ev":"T",  "sym":"MSFT"}]'
    await relay.frame(DATA)
    await relay.publish(KIND_HEARTBEAT)  # alive, nothing to yield
    await relay.frame(spaced)
    assert await next_frame(frames) == DATA
    assert await next_frame(frames) == spaced


async def test_frames_leaves_out_the_upstreams_own_acks(source, relay):
    """A gateway takes its acks from the relay, addressed to it: the upstream's are for the relay's requests."""
    frames = source.frames()
    error = {"ev": "status", "status": "error", "message": "not authorized for T.X"}
    await relay.frame(orjson.dumps([ack("T.AAPL"), ack("T.MSFT")]))  # acks only: nothing left
    await relay.frame(orjson.dumps([ack("T.AAPL"), {"ev": "T", "sym": "AAPL"}, error]))
    await relay.frame(DATA)
    assert orjson.loads(await next_frame(frames)) == [{"ev": "T", "sym": "AAPL"}, error]
    assert await next_frame(frames) == DATA


async def test_frames_yields_this_sources_acks_as_the_upstreams_ack_frame(source, relay, requests):
    frames = source.frames()
    await source.subscribe(["T.AAPL", "Q.*"])
    token, items = await next_request(requests)
    await relay.ack(token, items)
    assert orjson.loads(await next_frame(frames)) == [ack("Q.*"), ack("T.AAPL")]


async def test_frames_ignores_acks_addressed_to_other_sources(source, relay, requests):
    frames = source.frames()
    await source.subscribe(["T.AAPL"])
    token, _ = await next_request(requests)
    ours, _, number = token.partition("/")
    await relay.ack(f"other-host-1-0000/{number}", ["T.AAPL"])
    await relay.ack(f"{ours}x/{number}", ["T.AAPL"])  # an id that merely begins with ours
    await relay.ack(token, [])  # nothing confirmed
    await relay.frame(DATA)
    assert await next_frame(frames) == DATA


async def test_a_sequence_gap_is_a_relay_gap(source, relay):
    frames = source.frames()
    await relay.frame(DATA)
    await relay.publish(KIND_FRAME, DATA, seq=3)
    assert await next_frame(frames) == DATA
    with pytest.raises(RelayGap, match=r"^relay gap in epoch 1: 1 message\(s\) missed$"):
        await next_frame(frames)


async def test_a_repeated_sequence_number_is_a_relay_gap(source, relay):
    frames = source.frames()
    await relay.frame(DATA)
    await relay.publish(KIND_FRAME, DATA, seq=1)
    assert await next_frame(frames) == DATA
    with pytest.raises(RelayGap, match="^relay gap in epoch 1: 1 after 1$"):
        await next_frame(frames)


async def test_the_first_envelope_sets_the_baseline(source, relay):
    """A source opened mid-epoch starts from whatever it first sees."""
    frames = source.frames()
    await relay.publish(KIND_FRAME, DATA, epoch=7, seq=41)
    await relay.publish(KIND_FRAME, DATA, epoch=7, seq=42)
    assert [await next_frame(frames), await next_frame(frames)] == [DATA, DATA]


async def test_a_new_epoch_is_a_relay_gap(source, relay):
    frames = source.frames()
    await relay.frame(DATA)
    await relay.publish(KIND_FRAME, DATA, epoch=2, seq=1)
    assert await next_frame(frames) == DATA
    with pytest.raises(RelayGap, match=r"^relay gap: epoch changed from 1 to 2 \(relay takeover or reconnect\)$"):
        await next_frame(frames)


async def test_an_end_envelope_ends_the_stream_with_the_relays_reason(source, relay):
    frames = source.frames()
    await relay.frame(DATA)
    await relay.publish(KIND_END, b"upstream feed unavailable: upstream connection lost (close code 1011)")
    assert await next_frame(frames) == DATA
    with pytest.raises(UpstreamUnavailable) as ended:
        await next_frame(frames)
    assert type(ended.value) is UpstreamUnavailable  # the relay said so: not a gap in what we saw
    assert str(ended.value) == "feed relay: upstream feed unavailable: upstream connection lost (close code 1011)"


async def test_something_that_is_not_an_envelope_is_a_relay_gap(source):
    frames = source.frames()
    await redis_client().publish(NAMES.frames, b"hello")
    with pytest.raises(RelayGap, match="^relay sent something that is not an envelope"):
        await next_frame(frames)


async def test_silence_from_the_relay_is_a_gap(source, relay, monkeypatch):
    monkeypatch.setattr("streaming.relay.source.RELAY_SILENCE_SECONDS", 0.3)
    frames = source.frames()
    await relay.frame(DATA)
    assert await next_frame(frames) == DATA
    started = time.monotonic()
    with pytest.raises(RelayGap, match="^relay gap: nothing from the stocks relay for 0.3 s$"):
        await next_frame(frames)
    assert time.monotonic() - started >= 0.3


async def test_a_source_whose_subscription_redis_dropped_sees_a_gap_at_once(source, relay):
    """As Redis does to a subscriber over its output buffer limit: reported at once, not after the silence limit."""
    frames = source.frames()
    await relay.frame(DATA)
    assert await next_frame(frames) == DATA
    killer = redis.asyncio.Redis.from_url(django_settings.REDIS_URL)
    await killer.client_kill_filter(_type="pubsub")
    await killer.aclose()
    with pytest.raises(RelayGap, match="^relay gap: lost the Redis subscription"):
        async with asyncio.timeout(1):
            await anext(frames)


async def test_a_source_whose_registration_vanished_sees_a_gap(relay_settings, relay, requests):
    """The relay may have dropped the items of an expired registration: the next envelope ends the stream."""
    relay_settings.STREAM_RELAY_REGISTRATION_TTL = 1.0  # refreshed every third of a second
    source = await RelaySource.open(MARKET)
    frames = source.frames()
    await source.subscribe(["T.AAPL"])
    token, items = await next_request(requests)
    await relay.ack(token, items)
    assert orjson.loads(await next_frame(frames)) == [ack("T.AAPL")]
    await redis_client().delete(NAMES.items(await source_id(redis_client())))

    async def beat() -> None:  # the relay's heartbeat, faster
        while True:
            await relay.publish(KIND_HEARTBEAT)
            await asyncio.sleep(0.05)

    heartbeat = asyncio.ensure_future(beat())
    try:
        with pytest.raises(RelayGap, match="^relay gap: this process's registration expired"):
            await next_frame(frames)
    finally:
        heartbeat.cancel()
        await source.close()
