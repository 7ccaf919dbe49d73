"""streaming.upstream.connection against a real websockets feed server on loopback (tests/streaming/scripted_feed.py).
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator

import orjson
import pytest

from streaming.codes import AUTH_SUCCESS_FRAME, CONNECTED_FRAME, Status, status_frame
from streaming.exceptions import UpstreamRejected, UpstreamUnavailable
from streaming.upstream.connection import UpstreamConnection, action_params
from tests.streaming.scripted_feed import ScriptedFeed, answering

KEY = "upstream-test-key"
SHORT_TIMEOUT = 0.3
LATE = 2.0
"""An open that gives up later than this after its timeout did not honour the timeout."""


@pytest.fixture
async def feed() -> AsyncIterator[ScriptedFeed]:
    async with ScriptedFeed(auto_ack=False) as server:
        yield server


@pytest.fixture
async def connection(feed) -> AsyncIterator[UpstreamConnection]:
    connection = await UpstreamConnection.open(feed.url, KEY, timeout=5)
    yield connection
    await connection.close()


async def open_failure(url: str, timeout: float = 5) -> tuple[UpstreamUnavailable | UpstreamRejected, float]:
    """What opening *url* raised, and how long it took."""
    started = time.monotonic()
    with pytest.raises((UpstreamUnavailable, UpstreamRejected)) as raised:
        await UpstreamConnection.open(url, KEY, timeout=timeout)
    return raised.value, time.monotonic() - started


# --- the handshake ----------------------------------------------------------------------------------------------------


async def test_open_authenticates_with_the_key(feed):
    connection = await UpstreamConnection.open(feed.url, KEY, timeout=5)
    session = await feed.next_session()
    assert session.auth == {"action": "auth", "params": KEY}
    await connection.close()


async def test_open_waits_past_other_statuses_and_events_for_auth_success():
    """Only a status other than ``connected`` decides the handshake: a repeated greeting or a stray data event
    before ``auth_success`` is passed over."""
    noise = orjson.dumps([{"ev": "T", "sym": "AAPL"}, {"ev": "status", "status": "connected", "message": "again"}])
    async with ScriptedFeed(handshake=answering(CONNECTED_FRAME, noise, AUTH_SUCCESS_FRAME)) as feed:
        connection = await UpstreamConnection.open(feed.url, KEY, timeout=5)
        await connection.close()


@pytest.mark.parametrize(
    ("status", "message"),
    [
        (Status.AUTH_FAILED, "authentication failed"),
        (Status.MAX_CONNECTIONS, "Maximum number of connections exceeded."),
    ],
)
async def test_a_refusal_raises_upstream_rejected_with_the_feeds_status_and_message(status, message):
    async with ScriptedFeed(handshake=answering(status_frame(status, message))) as feed:
        error, _ = await open_failure(feed.url)
        assert isinstance(error, UpstreamRejected)
        assert (error.status, error.message) == (status, message)
        assert str(error) == f"{status}: {message}"
        await feed.sessions[0].wait_closed()  # the refused connection is not left open


async def test_an_unreachable_port_raises_upstream_unavailable():
    with socket.socket() as reserved:
        reserved.bind(("127.0.0.1", 0))  # bound, never listening: connections to it are refused
        error, elapsed = await open_failure(f"ws://127.0.0.1:{reserved.getsockname()[1]}/stocks", SHORT_TIMEOUT)
    assert type(error) is UpstreamUnavailable
    assert str(error).startswith("upstream unreachable:")
    assert elapsed < SHORT_TIMEOUT + LATE


async def test_an_http_refusal_of_the_websocket_handshake_raises_upstream_unavailable():
    async def respond_404(connection, request):
        return connection.respond(404, "Not Found\n")

    from websockets.asyncio.server import serve

    async with serve(lambda connection: None, "127.0.0.1", 0, process_request=respond_404) as server:
        error, _ = await open_failure(f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/stocks")
    assert type(error) is UpstreamUnavailable
    assert str(error).startswith("upstream unreachable:") and "404" in str(error)


async def test_a_server_that_never_answers_the_websocket_handshake_times_out():
    """TCP accepts, the HTTP upgrade is never answered."""
    held: list[asyncio.StreamWriter] = []

    async def accept_and_hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(accept_and_hold, "127.0.0.1", 0)
    try:
        error, elapsed = await open_failure(f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/", SHORT_TIMEOUT)
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()
    assert type(error) is UpstreamUnavailable
    assert str(error) == "upstream did not complete its handshake in time"
    assert SHORT_TIMEOUT <= elapsed < SHORT_TIMEOUT + LATE


async def test_a_feed_that_never_answers_the_auth_times_out():
    async with ScriptedFeed(handshake=answering()) as feed:
        error, elapsed = await open_failure(feed.url, SHORT_TIMEOUT)
        assert type(error) is UpstreamUnavailable
        assert str(error) == "upstream did not complete its handshake in time"
        assert SHORT_TIMEOUT <= elapsed < SHORT_TIMEOUT + LATE
        assert feed.sessions[0].auth == {"action": "auth", "params": KEY}  # it was asked, and never answered
        await feed.sessions[0].wait_closed()


@pytest.mark.parametrize(
    ("frame", "problem"),
    [
        ("Connected Successfully", "upstream sent a frame that is not JSON"),
        ('{"ev":"status","status":"auth_success"}', "upstream sent a frame that is not an array of events"),
        ('["auth_success"]', "upstream sent a frame that is not an array of events"),
    ],
)
async def test_a_frame_that_is_not_an_array_of_events_during_the_handshake_is_unavailable(frame, problem):
    async with ScriptedFeed(handshake=answering(frame)) as feed:
        error, _ = await open_failure(feed.url)
        assert type(error) is UpstreamUnavailable
        assert str(error) == problem
        await feed.sessions[0].wait_closed()


# --- subscriptions ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["subscribe", "unsubscribe"])
async def test_items_go_upstream_as_one_sorted_comma_joined_action(feed, connection, method):
    session = await feed.next_session()
    await getattr(connection, method)({"T.MSFT", "Q.*", "T.AAPL"})
    assert await session.next_action() == {"action": method, "params": "Q.*,T.AAPL,T.MSFT"}


@pytest.mark.parametrize("method", ["subscribe", "unsubscribe"])
async def test_an_empty_set_of_items_sends_nothing(feed, connection, method):
    session = await feed.next_session()
    await getattr(connection, method)(set())
    await connection.subscribe(["T.NEXT"])  # the next message the feed reads is this one
    assert await session.next_action() == {"action": "subscribe", "params": "T.NEXT"}


async def test_subscribing_on_a_lost_connection_raises_upstream_unavailable(feed, connection):
    session = await feed.next_session()
    await session.close(1011)
    await session.wait_closed()  # the client answered the close frame: its side is closed too
    with pytest.raises(UpstreamUnavailable, match="^upstream connection lost$"):
        await connection.subscribe(["T.AAPL"])


# --- frames -----------------------------------------------------------------------------------------------------------


async def test_frames_are_yielded_as_the_raw_bytes_the_feed_sent(feed, connection):
    session = await feed.next_session()
    sent = ['[{"ev":"T",  "sym":"AAPL","p":1.50}]', '[{"ev":"T","sym":"MSFT","x":"é"}]', "not even JSON"]
    for frame in sent:
        await session.send(frame)
    frames = connection.frames()
    received = [await anext(frames) for _ in sent]
    assert received == [frame.encode() for frame in sent]
    assert all(type(frame) is bytes for frame in received)


@pytest.mark.parametrize("code", [1000, 1001, 1011])
async def test_frames_raise_upstream_unavailable_with_the_close_code(feed, connection, code):
    session = await feed.next_session()
    await session.send('[{"ev":"T","sym":"AAPL"}]')
    await session.close(code)
    frames = connection.frames()
    assert await anext(frames) == b'[{"ev":"T","sym":"AAPL"}]'  # what preceded the close is still delivered
    with pytest.raises(UpstreamUnavailable, match=rf"^upstream connection lost \(close code {code}\)$"):
        await anext(frames)


async def test_frames_raise_upstream_unavailable_when_the_connection_drops(feed, connection):
    session = await feed.next_session()
    session.drop()
    with pytest.raises(UpstreamUnavailable, match=r"^upstream connection lost \(close code 1006\)$"):
        await anext(connection.frames())


async def test_close_ends_the_connection(feed, connection):
    session = await feed.next_session()
    await connection.close()
    await session.wait_closed()
    assert session.connection.close_code == 1000


def test_action_params_cut_a_large_change_into_messages_under_the_limit():
    items = [f"T.X{n:05d}" for n in range(20_000)]
    chunks = list(action_params(items, limit=8 * 1024))
    assert len(chunks) > 1
    assert all(len(chunk.encode()) <= 8 * 1024 for chunk in chunks)
    assert ",".join(chunks).split(",") == items  # every item once, in order


def test_action_params_of_a_small_change_is_one_message_and_of_nothing_none():
    assert list(action_params(["Q.AAPL", "T.AAPL"])) == ["Q.AAPL,T.AAPL"]
    assert list(action_params([])) == []
    assert list(action_params(["T." + "A" * 20], limit=10)) == ["T." + "A" * 20]  # too long alone: sent alone
