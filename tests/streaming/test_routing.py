"""streaming.routing: Channels' WebsocketCommunicator against the URLRouter of ``websocket_urlpatterns``.

What the consumer got as its market shows in what it answers (a key for the market is admitted, other markets are
unsupported) and in its "stream closed" log line, the line the routing keeps unsafe path text out of.
"""

from __future__ import annotations

import re

import pytest
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator

from streaming import codes
from streaming.routing import websocket_urlpatterns
from tests.accounts.factories import make_key, make_user

pytestmark = pytest.mark.django_db(transaction=True)

TIMEOUT = 5
CLOSED_LINE = re.compile(r"^stream closed user=\S+ key=\S+ market=(?P<market>.*) code=\S+ duration=\S+$", re.DOTALL)


@pytest.fixture
def router(stream_config):
    return URLRouter(websocket_urlpatterns)


@pytest.fixture
def keys(db) -> dict[str, str]:
    user = make_user("router", plans={"options": "expert", "stocks": "commercial"})
    return {market: make_key(user, market)[1] for market in ("options", "stocks")}


async def opened(router, path: str) -> WebsocketCommunicator:
    """A socket the consumer accepted on *path*, past its ``connected`` greeting."""
    communicator = WebsocketCommunicator(router, path)
    connected, _ = await communicator.connect(TIMEOUT)
    assert connected, f"{path!r} was refused"
    assert await communicator.receive_json_from(TIMEOUT) == [
        {"ev": "status", "status": "connected", "message": codes.MESSAGE_CONNECTED}
    ]
    return communicator


async def authenticate(communicator: WebsocketCommunicator, key: str) -> dict:
    """The consumer's answer to an auth message with *key* (an official SDK's way of presenting it)."""
    await communicator.send_json_to({"action": "auth", "params": key})
    (event,) = await communicator.receive_json_from(TIMEOUT)
    return event


def closed_markets(caplog) -> list[str]:
    """The market of each "stream closed" line the consumer logged."""
    lines = [record.getMessage() for record in caplog.records if record.name == "streaming.gateway.consumer"]
    return [match["market"] for line in lines if (match := CLOSED_LINE.match(line))]


@pytest.mark.parametrize("market", ["options", "stocks"])
@pytest.mark.parametrize("slash", ["/", ""])
async def test_a_market_path_reaches_the_consumer_with_its_market(router, keys, caplog, market, slash):
    communicator = await opened(router, f"/v1/ws/{market}{slash}")
    assert (await authenticate(communicator, keys[market]))["status"] == "auth_success"
    await communicator.disconnect()
    assert closed_markets(caplog) == [market]


async def test_a_market_the_gateway_does_not_serve_reaches_the_consumer_which_says_unsupported(router, keys, caplog):
    communicator = await opened(router, "/v1/ws/crypto/")
    assert await authenticate(communicator, keys["options"]) == {
        "ev": "status",
        "status": "auth_failed",
        "message": "authentication failed: unsupported market (use /v1/ws/options/ or /v1/ws/stocks/)",
    }
    assert (await communicator.receive_output(TIMEOUT))["code"] == codes.CloseCode.UNAUTHORIZED
    await communicator.disconnect()
    assert closed_markets(caplog) == ["crypto"]


@pytest.mark.parametrize("market", ["a" * 32, "Options_2-b"])
async def test_any_short_plain_word_is_taken_as_the_market(router, caplog, market):
    communicator = await opened(router, f"/v1/ws/{market}/")
    await communicator.disconnect()
    assert closed_markets(caplog) == [market]


async def test_the_query_string_is_not_part_of_the_market_path(router, caplog):
    communicator = await opened(router, "/v1/ws/options/?x=/y/")
    await communicator.disconnect()
    assert closed_markets(caplog) == ["options"]


@pytest.mark.parametrize("path", ["/v1/ws/", "/v1/ws/options/trades", "/v1/ws/options//", "/v1/ws//options/"])
async def test_other_paths_under_v1_ws_reach_the_consumer_with_an_empty_market(router, keys, caplog, path):
    communicator = await opened(router, path)
    assert (await authenticate(communicator, keys["options"]))["message"].startswith(
        "authentication failed: unsupported market"
    )
    assert (await communicator.receive_output(TIMEOUT))["code"] == codes.CloseCode.UNAUTHORIZED
    await communicator.disconnect()
    assert closed_markets(caplog) == [""]


@pytest.mark.parametrize(
    "path",
    [
        "/v1/ws/op%0Ations/",  # a newline: would start a forged log line
        "/v1/ws/options%0A",
        "/v1/ws/op%E2%80%A8tions/",  # U+2028, a line separator to some log viewers
        "/v1/ws/%1B%5B31mred/",  # a terminal escape
        "/v1/ws/opt%20ions/",
        "/v1/ws/opti%C3%B6ns/",
        "/v1/ws/" + "a" * 33 + "/",  # longer than any market
        "/v1/ws/" + "x" * 4096,  # kilobytes of path
    ],
)
async def test_unsafe_market_text_is_not_captured(router, caplog, path):
    communicator = await opened(router, path)
    await communicator.disconnect()
    assert closed_markets(caplog) == [""]


@pytest.mark.parametrize("path", ["/", "/v1/ws", "/v1/wss/options/", "/v2/ws/options/", "/ws/options/", "/options"])
async def test_paths_outside_v1_ws_are_refused_at_the_handshake(router, caplog, path):
    communicator = WebsocketCommunicator(router, path)
    connected, code = await communicator.connect(TIMEOUT)
    assert not connected  # closed before accept: daphne answers the handshake with HTTP 403
    assert code == 1000
    await communicator.disconnect(TIMEOUT)  # the server's disconnect ends the refusal's instance at once
    assert closed_markets(caplog) == []  # the consumer never ran
