"""One customer cannot degrade or disconnect another (issue: tenant isolation), through a real daphne process.

Each test plays an attacker (a user of its own, connecting from 127.0.0.2 and up) next to a victim (another user,
from 127.0.0.1) streaming from the same gateway process and the same upstream connection, and checks what the
victim sees. Figures under load are in BENCHMARKS.md; these tests assert outcomes, never timings.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import string

import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidMessage

from accounts.models import Plan
from streaming.codes import CloseCode
from streaming.runtime.redis_client import redis_client
from tests.accounts.factories import make_key, make_user
from tests.e2e.clients import TIMEOUT, Outcome, bearer, expect_statuses, read_until_closed
from tests.e2e.conftest import UNUSED_UPSTREAM_ENV, simulator_env
from tests.e2e.test_deployment import scrape, value
from tests.e2e.test_streaming import Client
from tests.reliability.test_malformed_handshakes import client_frame, read_frame, upgrade_request

pytestmark = pytest.mark.e2e

VICTIM_ADDRESS = "127.0.0.1"
ATTACKER_ADDRESS = "127.0.0.2"
INBOUND_BUDGET = 64 * 1024
"""A small ``STREAM_CLIENT_INBOUND_BYTES``, so that a consumer a few messages behind already passes it."""
FLOOD_MESSAGES = 2_000
"""120 MB of 60 KB messages: more than the sockets' kernel buffers hold."""


def made_up_tickers(count: int) -> list[str]:
    """*count* distinct, well-formed tickers that no market lists (``XAAAA``, ``XAAAB``, ...)."""
    letters = itertools.product(string.ascii_uppercase, repeat=4)
    return ["X" + "".join(next(letters)) for _ in range(count)]


async def open_from(gateway, key: str, market: str, address: str) -> ClientConnection:
    websocket = await connect(
        gateway.url(f"/v1/ws/{market}/"), additional_headers=bearer(key), max_size=None, local_addr=(address, 0)
    )
    await expect_statuses(websocket, "connected", "auth_success")
    return websocket


@pytest.fixture
def victim_key(transactional_db) -> str:
    return make_key(make_user("victim", plans={"stocks": "expert"}), "stocks")[1]


@pytest.fixture
def attacker_key(transactional_db) -> str:
    """A Commercial user whose plan an operator raised to 20,000 items per connection."""
    attacker = make_user("attacker", plans={"stocks": "commercial"})
    Plan.objects.filter(slug=Plan.COMMERCIAL).update(max_subscriptions=20_000)
    return make_key(attacker, "stocks")[1]


async def test_dropping_twenty_thousand_items_reaches_the_upstream_in_parts_and_the_neighbour_streams_on(
    gateway_factory, simulator, victim_key, attacker_key
):
    """The feed closes a connection on a message over 64 KiB (the simulator too): a client leaving with 20,000
    items once made the gateway send one 160 KB unsubscribe, and every client of the market got 1011."""
    gateway = gateway_factory("many-items", **simulator_env(simulator), STREAM_CLIENT_ITEM_BURST="20000")
    victim = Client(await open_from(gateway, victim_key, "stocks", VICTIM_ADDRESS))
    await victim.subscribe("T.AAPL")
    attacker = Client(await open_from(gateway, attacker_key, "stocks", ATTACKER_ADDRESS))
    tickers = made_up_tickers(20_000)
    for start in range(0, len(tickers), 5_000):
        params = ",".join(f"T.{ticker}" for ticker in tickers[start:start + 5_000])
        assert len(orjson.dumps({"action": "subscribe", "params": params})) < 64 * 1024
        acks = await attacker.subscribe(params)
        assert {ack["status"] for ack in acks} == {"success"}
    await simulator.wait_for(lambda: len(simulator.subscriptions("stocks")) == 20_001)
    await attacker.websocket.close()
    await simulator.wait_for(lambda: simulator.subscriptions("stocks") == {"T.AAPL"}, timeout=10)

    simulator.start_recording("stocks")
    await simulator.send_events("stocks", [{"ev": "T", "sym": "AAPL", "p": 1.5, "s": 10, "t": 1, "q": 1}])
    assert await victim.read_data(1) == simulator.recorded("stocks")
    assert simulator.connections_opened("stocks") == 1  # the upstream connection was never dropped
    assert victim.websocket.close_code is None


async def test_a_client_pinging_beyond_its_budget_is_closed_and_the_neighbour_streams_on(
    streaming_gateway, simulator, victim_key, attacker_key
):
    """A client once sent 367,000 pings in 20 s and had each answered: the gateway's CPU went to pongs."""
    victim = Client(await open_from(streaming_gateway, victim_key, "stocks", VICTIM_ADDRESS))
    await victim.subscribe("T.AAPL")
    attacker = await open_from(streaming_gateway, attacker_key, "stocks", ATTACKER_ADDRESS)
    answered = 0
    try:
        for _ in range(1_000):
            await asyncio.wait_for(await attacker.ping(), TIMEOUT)
            answered += 1
    except ConnectionClosed:
        pass
    outcome = await read_until_closed(attacker)
    assert attacker.close_code == CloseCode.POLICY_VIOLATION and attacker.close_reason == "too many pings"
    assert outcome.events[-1]["status"] == "error" and "too many pings" in outcome.events[-1]["message"]
    assert 20 <= answered < 100  # the burst is answered; the flood is not

    await asyncio.wait_for(await victim.websocket.ping(), TIMEOUT)  # the neighbour's own pings still answered
    simulator.start_recording("stocks")
    await simulator.send_events("stocks", [{"ev": "T", "sym": "AAPL", "p": 1.5, "s": 10, "t": 1, "q": 1}])
    assert await victim.read_data(1) == simulator.recorded("stocks")


async def test_a_ping_flood_is_no_longer_read_once_refused(streaming_gateway, victim_key, attacker_key):
    """A client flooding pings without reading kept writing ~550,000 pings (5.5 MB) after its 1008, all of them read
    and parsed by the gateway until the close handshake timed out. Once refused, it is not read any more: it can
    write only what the sockets' buffers take (its own send buffer is held to 4 KiB here), then its connection is
    dropped."""
    victim = Client(await open_from(streaming_gateway, victim_key, "stocks", VICTIM_ADDRESS))
    await victim.subscribe("T.AAPL")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    sock.bind((ATTACKER_ADDRESS, 0))
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, ("127.0.0.1", streaming_gateway.port))
    await loop.sock_sendall(sock, upgrade_request("/v1/ws/stocks/", [("Authorization", f"Bearer {attacker_key}")]))
    pings = b"".join(client_frame(b"x" * 125, opcode=0x9) for _ in range(1_000))
    written = 0
    with pytest.raises(ConnectionError):
        async with asyncio.timeout(TIMEOUT):
            while True:
                await loop.sock_sendall(sock, pings)
                written += len(pings)
    sock.close()
    assert written < 2 * 1024 * 1024, f"the gateway read {written} bytes of pings from a refused flood"

    await asyncio.wait_for(await victim.websocket.ping(), TIMEOUT)
    assert victim.websocket.close_code is None


async def test_a_handshake_sent_byte_by_byte_is_dropped_and_others_get_in(
    gateway_factory, simulator, victim_key
):
    """Connections drip-feeding their upgrade request one byte every 2 s were never dropped."""
    gateway = gateway_factory("handshake-deadline", **simulator_env(simulator), STREAM_HANDSHAKE_TIMEOUT="1")
    request = b"GET /v1/ws/stocks/ HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port, local_addr=(ATTACKER_ADDRESS, 0))
    dropped = False
    try:
        for byte in itertools.islice(itertools.cycle(request), 100):  # 100 bytes, 0.1 s apart: 10 s at most
            writer.write(bytes([byte]))
            await writer.drain()
            try:
                if await asyncio.wait_for(reader.read(1), 0.1) == b"":
                    dropped = True
                    break
            except TimeoutError:
                continue
    except ConnectionError:
        dropped = True
    finally:
        writer.close()
    assert dropped, "a connection still sending its headers after the deadline was kept"

    victim = Client(await open_from(gateway, victim_key, "stocks", VICTIM_ADDRESS))  # a whole handshake gets in
    await victim.subscribe("T.AAPL")
    samples = await asyncio.to_thread(scrape, gateway.port)
    assert value(samples, "cutemarkets_sockets_dropped_total", reason="handshake_timeout") == 1


def random_key(n: int) -> str:
    """A well-formed stocks key that was never issued."""
    return f"cms_{n:012d}_{'x' * 40}"


async def outcome_from(url: str, address: str, headers: dict[str, str] | None = None) -> Outcome:
    async with connect(url, additional_headers=headers, local_addr=(address, 0), open_timeout=TIMEOUT) as websocket:
        return await read_until_closed(websocket)


async def test_an_address_guessing_keys_is_refused_without_lookups_and_a_customer_reconnecting_is_not(
    gateway_factory, victim_key
):
    """171 handshakes a second with random keys once slowed everyone's admission ×19, each costing a database
    query and a Redis key."""
    gateway = gateway_factory(
        "guessing", **UNUSED_UPSTREAM_ENV, STREAM_ADDRESS_FAILURES_PER_MINUTE="10"
    )
    url = gateway.url("/v1/ws/stocks/")
    cached_before = len(await redis_client().keys("*apikey*"))
    outcomes = [await outcome_from(url, ATTACKER_ADDRESS, bearer(random_key(n))) for n in range(40)]
    assert [(o.statuses[-1], o.close_code) for o in outcomes[:10]] == [("auth_failed", 4401)] * 10
    assert [(o.statuses[-1], o.close_code) for o in outcomes[10:]] == [("error", 1013)] * 30
    assert outcomes[-1].events[-1]["message"] == (
        "too many failed authentications from your address: try again in a minute"
    )
    assert len(await redis_client().keys("*apikey*")) - cached_before <= 10  # refused keys were never looked up

    for _ in range(20):  # a customer's own quick reconnects, from another address, all get in
        websocket = await open_from(gateway, victim_key, "stocks", VICTIM_ADDRESS)
        await websocket.close()


async def test_keyless_sockets_of_one_address_are_capped_and_a_neighbour_gets_in(gateway_factory, victim_key):
    """3,000 keyless sockets from one address once made others' admission ×56 slower."""
    gateway = gateway_factory(
        "keyless", **UNUSED_UPSTREAM_ENV, STREAM_ADDRESS_PENDING_SOCKETS="5", STREAM_AUTH_TIMEOUT="30"
    )
    url = gateway.url("/v1/ws/stocks/")
    waiting = []
    for _ in range(5):
        websocket = await connect(url, local_addr=(ATTACKER_ADDRESS, 0), open_timeout=TIMEOUT)
        await expect_statuses(websocket, "connected")
        waiting.append(websocket)
    refused = await outcome_from(url, ATTACKER_ADDRESS)
    assert (refused.statuses, refused.close_code) == (["connected", "error"], 1013)
    assert "waiting to authenticate (at most 5)" in refused.events[-1]["message"]

    neighbour = await open_from(gateway, victim_key, "stocks", VICTIM_ADDRESS)
    await neighbour.close()
    await waiting.pop().close()  # one slot frees when its socket goes
    again = await connect(url, local_addr=(ATTACKER_ADDRESS, 0), open_timeout=TIMEOUT)
    await expect_statuses(again, "connected")
    for websocket in [*waiting, again]:
        await websocket.close()


async def test_churning_thousands_of_items_a_second_is_refused_then_closed_and_the_neighbour_streams_on(
    gateway_factory, simulator, victim_key, attacker_key
):
    """Subscribing and unsubscribing 5,000 fresh items per message, 9 messages a second, once stayed under the
    message rate and raised a neighbour's p99 latency eightfold."""
    gateway = gateway_factory("churn", **simulator_env(simulator), STREAM_CLIENT_REFUSALS_BEFORE_CLOSE="5")
    victim = Client(await open_from(gateway, victim_key, "stocks", VICTIM_ADDRESS))
    await victim.subscribe("T.AAPL")
    attacker = Client(await open_from(gateway, attacker_key, "stocks", ATTACKER_ADDRESS))
    tickers = made_up_tickers(5_000)
    params = ",".join(f"T.{ticker}" for ticker in tickers)
    assert len(await attacker.subscribe(params)) == 5_000  # within the burst of 10,000 items
    assert len(await attacker.unsubscribe(params)) == 5_000
    refused = await attacker.request({"action": "subscribe", "params": params}, 1)
    assert refused[0]["status"] == "error" and refused[0]["message"].startswith("subscription rate limit exceeded")
    assert simulator.subscriptions("stocks") == {"T.AAPL"}  # the refused message changed nothing
    for _ in range(4):
        await attacker.send({"action": "subscribe", "params": params})
    outcome = await read_until_closed(attacker.websocket)
    assert outcome.close_code == CloseCode.POLICY_VIOLATION
    assert outcome.events[-1]["message"].startswith("too many refused requests, closing")

    simulator.start_recording("stocks")
    await simulator.send_events("stocks", [{"ev": "T", "sym": "AAPL", "p": 1.5, "s": 10, "t": 1, "q": 1}])
    assert await victim.read_data(1) == simulator.recorded("stocks")
    assert simulator.connections_opened("stocks") == 1


async def test_items_beyond_the_plan_cap_are_refused_and_the_neighbour_streams_on(
    gateway_factory, simulator, victim_key, attacker_key
):
    """A client once held 200,000 items, and a neighbour's p99 latency went to 2.1 s."""
    gateway = gateway_factory("held-items", **simulator_env(simulator), STREAM_CLIENT_ITEM_BURST="40000")
    victim = Client(await open_from(gateway, victim_key, "stocks", VICTIM_ADDRESS))
    await victim.subscribe("T.AAPL")
    attacker = Client(await open_from(gateway, attacker_key, "stocks", ATTACKER_ADDRESS))
    tickers = made_up_tickers(30_000)
    for start in range(0, 20_000, 5_000):  # up to the plan's cap
        acks = await attacker.subscribe(",".join(f"T.{ticker}" for ticker in tickers[start:start + 5_000]))
        assert {ack["status"] for ack in acks} == {"success"}
    beyond = ",".join(f"T.{ticker}" for ticker in tickers[20_000:25_000])
    refused = await attacker.request({"action": "subscribe", "params": beyond}, 1)
    assert [status["status"] for status in refused] == ["error"]
    assert refused[0]["message"].startswith(
        "Subscription limit reached for feed. Please remove some subscriptions and try again."
    )
    assert "20000 held + 5000 new > 20000 items per connection" in refused[0]["message"]
    assert len(simulator.subscriptions("stocks")) == 20_001  # the refused message reached nobody

    simulator.start_recording("stocks")
    await simulator.send_events("stocks", [{"ev": "T", "sym": "AAPL", "p": 1.5, "s": 10, "t": 1, "q": 1}])
    assert await victim.read_data(1) == simulator.recorded("stocks")
    assert victim.websocket.close_code is None and attacker.websocket.close_code is None


PONG_BYTES = 2 + 125  # a pong frame answering a 125-byte ping


def kernel_send_buffer_ceiling() -> int:
    """The most a TCP socket's send buffer grows to here (``tcp_wmem``'s maximum): what the kernel may hold for a
    client that does not read, whatever the gateway does."""
    with open("/proc/sys/net/ipv4/tcp_wmem") as limits:
        return int(limits.read().split()[2])


async def test_pings_whose_pongs_are_never_read_cost_one_pending_pong_and_the_neighbour_streams_on(
    gateway_factory, simulator, victim_key, attacker_key
):
    """A client pinging without reading the pongs once grew the gateway by ~3 MB/s without bound. Here the ping
    budget is lifted so that only the bound on unsent pongs is at work: the client sends twice as many pings as the
    kernel's buffers and the gateway's 64 KiB write buffer could hold pongs for, reading nothing; then it reads.
    It gets what the socket took, then only the answer to its latest ping."""
    held_at_most = kernel_send_buffer_ceiling() + 64 * 1024 + 64 * 1024  # + its own small receive window, rounded up
    pings = 2 * held_at_most // PONG_BYTES
    gateway = gateway_factory(
        "unread-pongs", **simulator_env(simulator),
        STREAM_CLIENT_PING_RATE=str(pings * 10), STREAM_CLIENT_PING_BURST=str(pings * 10),
    )
    victim = Client(await open_from(gateway, victim_key, "stocks", VICTIM_ADDRESS))
    await victim.subscribe("T.AAPL")

    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connecting, so the window stays small
    sock.bind((ATTACKER_ADDRESS, 0))
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", gateway.port))
    reader, writer = await asyncio.open_connection(sock=sock, limit=1024)  # the attacker's own buffer stays small
    writer.write(upgrade_request("/v1/ws/stocks/", [("Authorization", f"Bearer {attacker_key}")]))
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101")
    statuses = [orjson.loads((await read_frame(reader))[1])[0]["status"] for _ in range(2)]
    assert statuses == ["connected", "auth_success"]

    for n in range(pings):  # never reading: the pongs pile up wherever the gateway lets them
        writer.write(client_frame(f"{n:0125d}".encode(), opcode=0x9))
        if n % 1_000 == 0:
            await writer.drain()
    await writer.drain()
    # The gateway read every ping (a neighbour's ping round trip proves its loop got past them) ...
    await asyncio.wait_for(await victim.websocket.ping(), TIMEOUT)

    answered = 0  # ... and now the attacker reads: what was queued for it, then the answer to its latest ping
    async with asyncio.timeout(TIMEOUT):
        while True:
            opcode, payload = await read_frame(reader)
            if opcode == 0xA:
                answered += 1
                if int(payload) == pings - 1:
                    break
    assert answered * PONG_BYTES <= held_at_most, f"{answered} of {pings} pongs were kept for a client not reading"
    writer.close()

    simulator.start_recording("stocks")
    await simulator.send_events("stocks", [{"ev": "T", "sym": "AAPL", "p": 1.5, "s": 10, "t": 1, "q": 1}])
    assert await victim.read_data(1) == simulator.recorded("stocks")
    assert victim.websocket.close_code is None


async def test_an_address_ignoring_its_refusals_is_dropped_before_the_upgrade_and_others_get_in(
    gateway_factory, victim_key, attacker_key
):
    """Each refused handshake still cost the gateway a whole WebSocket handshake: an address reconnecting at once
    after every 1013 (1,150 times in 8 s in the neighbours bench) raised a neighbour's p99 eighteenfold."""
    gateway = gateway_factory(
        "dropping", **UNUSED_UPSTREAM_ENV, STREAM_ADDRESS_HANDSHAKE_RATE="0.01", STREAM_ADDRESS_HANDSHAKE_BURST="2",
        STREAM_ADDRESS_REFUSALS_BEFORE_DROP="5",
    )
    url = gateway.url("/v1/ws/stocks/")
    for _ in range(2):  # the burst
        await (await open_from(gateway, attacker_key, "stocks", ATTACKER_ADDRESS)).close()
    refused = [await outcome_from(url, ATTACKER_ADDRESS, bearer(attacker_key)) for _ in range(5)]
    assert {(o.statuses[-1], o.close_code) for o in refused} == {("error", 1013)}  # answered, in the feed's shape
    with pytest.raises((InvalidMessage, ConnectionError, EOFError)):  # then dropped before any response
        await outcome_from(url, ATTACKER_ADDRESS, bearer(attacker_key))

    await (await open_from(gateway, victim_key, "stocks", VICTIM_ADDRESS)).close()  # another address gets in
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port, local_addr=(ATTACKER_ADDRESS, 0))
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")  # plain HTTP still served
    assert (await reader.read()).startswith(b"HTTP/1.1 200")
    writer.close()
    samples = await asyncio.to_thread(scrape, gateway.port)
    assert value(samples, "cutemarkets_sockets_dropped_total", reason="address_refused_repeatedly") == 1


async def test_a_client_flooding_messages_is_paused_within_its_inbound_budget_and_the_neighbour_streams_on(
    gateway_factory, simulator, victim_key, attacker_key
):
    """daphne queued every message a client sent for the consumer, without limit: one sending 60 KB messages as
    fast as TCP allows, and reading nothing, made the gateway hold whatever the consumer had not got to yet."""
    gateway = gateway_factory(
        "inbound-flood", **simulator_env(simulator),
        STREAM_CLIENT_INBOUND_BYTES=str(INBOUND_BUDGET), STREAM_CLIENT_REFUSALS_BEFORE_CLOSE="1000000",
    )
    victim = Client(await open_from(gateway, victim_key, "stocks", VICTIM_ADDRESS))
    await victim.subscribe("T.AAPL")
    attacker = await open_from(gateway, attacker_key, "stocks", ATTACKER_ADDRESS)
    message = orjson.dumps({"action": "subscribe", "params": "T." + "A" * 60_000}).decode()
    try:
        for _ in range(FLOOD_MESSAGES):
            await asyncio.wait_for(attacker.send(message), TIMEOUT)
    except (TimeoutError, ConnectionClosed):
        pass  # back-pressure held the sends (or the gateway closed a client that reads none of its replies)
    assert value(scrape(gateway.port), "cutemarkets_inbound_pauses_total") >= 1

    simulator.start_recording("stocks")
    await simulator.send_events("stocks", [{"ev": "T", "sym": "AAPL", "p": 1.5, "s": 10, "t": 1, "q": 1}])
    assert await victim.read_data(1) == simulator.recorded("stocks")
    assert victim.websocket.close_code is None
    attacker.transport.abort()


async def test_a_message_over_the_size_limit_is_closed_1009_and_the_neighbour_streams_on(
    streaming_gateway, simulator, victim_key, attacker_key
):
    """A message over 1 MiB made autobahn drop the TCP connection: the client saw 1006 and learnt nothing."""
    victim = Client(await open_from(streaming_gateway, victim_key, "stocks", VICTIM_ADDRESS))
    await victim.subscribe("T.AAPL")
    attacker = await open_from(streaming_gateway, attacker_key, "stocks", ATTACKER_ADDRESS)
    await attacker.send("x" * (2 << 20))
    outcome = await read_until_closed(attacker)
    assert attacker.close_code == CloseCode.MESSAGE_TOO_BIG and attacker.close_reason == "message too big"
    assert outcome.events[-1]["status"] == "error" and outcome.events[-1]["message"].startswith("message too large")

    simulator.start_recording("stocks")
    await simulator.send_events("stocks", [{"ev": "T", "sym": "AAPL", "p": 1.5, "s": 10, "t": 1, "q": 1}])
    assert await victim.read_data(1) == simulator.recorded("stocks")


@pytest.fixture
def options_keys(transactional_db) -> tuple[str, str]:
    """Keys of two Commercial options users."""
    return tuple(make_key(make_user(name, plans={"options": "commercial"}), "options")[1] for name in ("one", "two"))


async def test_option_quotes_beyond_the_feeds_limit_are_refused_by_the_gateway_before_the_feed_refuses_them(
    streaming_gateway, simulator, options_keys
):
    """The feed quotes at most 1,000 option contracts per connection, and every client of a gateway process shares
    its one connection: without a shared count, two clients within their plans would together send the feed a
    subscribe it refuses, and wait for acks that never come."""
    first_key, second_key = options_keys
    contracts = [f"Q.O:SPY261218C{strike:08d}" for strike in range(1_005)]
    first = Client(await open_from(streaming_gateway, first_key, "options", ATTACKER_ADDRESS))
    acks = await first.subscribe(",".join(contracts[:998]))
    assert {ack["status"] for ack in acks} == {"success"} and len(acks) == 998

    second = Client(await open_from(streaming_gateway, second_key, "options", VICTIM_ADDRESS))
    over = contracts[993:1_003] + ["T.O:SPY261218C00000001"]  # 5 held by the first client + 5 new + a trade
    refused = await second.request({"action": "subscribe", "params": ",".join(over)}, 1)
    assert [status["status"] for status in refused] == ["error"]
    assert refused[0]["message"] == (
        "Subscription limit reached for feed. Please remove some subscriptions and try again. (the feed allows "
        "1000 Q items per connection, which every client of this gateway shares: 998 held + 5 new; nothing was "
        "subscribed)"
    )
    acks = await second.subscribe(",".join(contracts[993:1_000]))  # 2 new: up to the limit
    assert {ack["status"] for ack in acks} == {"success"} and len(acks) == 7
    assert len(simulator.subscriptions("options")) == 1_000  # the feed never saw what it would refuse

    await first.unsubscribe(",".join(contracts[:10]))
    acks = await second.subscribe(contracts[1_004])  # freed by the first client's unsubscribe
    assert [ack["message"] for ack in acks] == [f"subscribed to: {contracts[1_004]}"]
    simulator.start_recording("options")
    await simulator.send_events("options", [{"ev": "Q", "sym": contracts[1_004][2:], "bp": 1.0, "ap": 1.1}])
    assert await second.read_data(1) == simulator.recorded("options")
    assert value(scrape(streaming_gateway.port), "cutemarkets_stream_refusals_total", market="options",
                 reason="feed_capacity") == 1
    assert first.websocket.close_code is None and second.websocket.close_code is None
