"""streaming.daphne.lifecycle through a real daphne process (lifecycle_app.py): daphne's sweeps are gone, and every
rule they enforced still holds, each on its connection's own events. Timeouts are set to a second so the tests wait
for the outcome each rule causes (a ping, a close, a cancelled application), never for a length of time."""

from __future__ import annotations

import asyncio
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from streaming.daphne.lifecycle import KeepAlive
from tests.reliability.test_malformed_handshakes import client_frame, read_frame, upgrade_request
from tests.streaming.daphne.test_shim import Daphne, wait_for

pytestmark = pytest.mark.e2e

APP = "tests.streaming.daphne.lifecycle_app:application"
OUTCOME_TIMEOUT_SECONDS = 10.0
"""How long any rule may take to show its outcome here (each is due after a second)."""
PING, PONG, TEXT = 0x9, 0xA, 0x1
ALONE = 1
"""Connections daphne holds while the tests' own ``/stats`` request is the only one."""


@pytest.fixture
def server(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Daphne]:
    """A daphne serving lifecycle_app, with the arguments of the test's ``daphne_args`` mark."""
    mark = request.node.get_closest_marker("daphne_args")
    daphne = Daphne(tmp_path, args=tuple(mark.args) if mark else (), app=APP)
    yield daphne
    daphne.stop()


def alone(server: Daphne) -> bool:
    return server.stats()["connections"] == ALONE


async def open_raw(server: Daphne, path: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(upgrade_request(path))
    response = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), OUTCOME_TIMEOUT_SECONDS)
    assert response.startswith(b"HTTP/1.1 101 "), response
    return reader, writer


async def next_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    return await asyncio.wait_for(read_frame(reader), OUTCOME_TIMEOUT_SECONDS)


async def dropped(reader: asyncio.StreamReader) -> None:
    """The server ends the connection: an end of stream, or a reset."""
    try:
        assert await asyncio.wait_for(reader.read(), OUTCOME_TIMEOUT_SECONDS) == b""
    except ConnectionResetError:
        pass


def test_daphnes_sweeps_stop_and_ended_connections_are_still_forgotten(server: Daphne) -> None:
    wait_for(lambda: server.stats()["sweeps"] == [], OUTCOME_TIMEOUT_SECONDS, "daphne's sweeps to be left unscheduled")
    with connect(server.ws_url("/echo"), open_timeout=5, close_timeout=5) as websocket:
        websocket.send("hello")
        assert websocket.recv(timeout=5) == "hello"
        assert server.stats()["connections"] == ALONE + 1
    wait_for(lambda: alone(server), OUTCOME_TIMEOUT_SECONDS, "the closed WebSocket to be forgotten")
    assert server.stats()["sweeps"] == []


@pytest.mark.daphne_args("--ping-interval", "1", "--ping-timeout", "30")
async def test_a_quiet_client_is_pinged_every_interval_and_answering_keeps_it(server: Daphne) -> None:
    reader, writer = await open_raw(server, "/echo")
    for _ in range(3):
        opcode, payload = await next_frame(reader)
        assert opcode == PING
        writer.write(client_frame(payload, opcode=PONG))
    writer.write(client_frame("still here"))
    while (frame := await next_frame(reader))[0] == PING:
        pass
    assert frame == (TEXT, b"still here")
    writer.close()


@pytest.mark.daphne_args("--ping-interval", "1", "--ping-timeout", "1")
async def test_a_client_that_never_answers_the_keep_alive_is_dropped(server: Daphne) -> None:
    reader, writer = await open_raw(server, "/echo")
    assert (await next_frame(reader))[0] == PING
    await dropped(reader)
    wait_for(lambda: alone(server), OUTCOME_TIMEOUT_SECONDS, "the dropped WebSocket to be forgotten")
    writer.close()


@pytest.mark.daphne_args("--application-close-timeout", "1")
def test_an_application_that_outlives_the_close_timeout_is_cancelled_and_forgotten(server: Daphne) -> None:
    with connect(server.ws_url("/linger"), open_timeout=5, close_timeout=5):
        pass
    wait_for(lambda: server.stats()["cancelled"] == 1, OUTCOME_TIMEOUT_SECONDS, "the lingering app to be cancelled")
    wait_for(lambda: alone(server), OUTCOME_TIMEOUT_SECONDS, "its connection to be forgotten")
    assert "took too long to shut down and was killed" in server.stderr()


def test_an_application_that_raises_is_logged_and_its_websocket_closed_1011(server: Daphne) -> None:
    with connect(server.ws_url("/crash"), open_timeout=5, close_timeout=5) as websocket:
        with pytest.raises(ConnectionClosed) as closed:
            websocket.recv(timeout=OUTCOME_TIMEOUT_SECONDS)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1011
    wait_for(lambda: alone(server), OUTCOME_TIMEOUT_SECONDS, "the crashed app's connection to be forgotten")
    assert "Exception inside application: the application broke" in server.stderr()


@pytest.mark.daphne_args("--websocket_connect_timeout", "1", "--application-close-timeout", "1")
async def test_a_websocket_the_application_never_accepts_is_dropped_and_its_application_cancelled(
    server: Daphne,
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(upgrade_request("/pending"))
    await dropped(reader)  # daphne's handshake timeout, as without the shim: no answer
    wait_for(lambda: alone(server), OUTCOME_TIMEOUT_SECONDS, "the dropped connection's app to be cancelled")
    assert "took too long to shut down and was killed" in server.stderr()
    writer.close()


@pytest.mark.daphne_args("--websocket_timeout", "1")
def test_a_websocket_past_its_lifetime_is_closed(server: Daphne) -> None:
    with connect(server.ws_url("/echo"), open_timeout=5, close_timeout=5) as websocket:
        with pytest.raises(ConnectionClosed) as closed:
            websocket.recv(timeout=OUTCOME_TIMEOUT_SECONDS)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1000


@pytest.mark.daphne_args("--http-timeout", "1")
def test_an_http_request_past_its_timeout_gets_503(server: Daphne) -> None:
    with pytest.raises(urllib.error.HTTPError) as answered:
        urllib.request.urlopen(f"http://127.0.0.1:{server.port}/hang", timeout=OUTCOME_TIMEOUT_SECONDS)
    assert answered.value.code == 503


# --- KeepAlive, without daphne ------------------------------------------------------------------------------------


class Quiet:
    """A WebSocket protocol as KeepAlive sees it: its state, when it last heard from the client, the pings sent."""

    STATE_CONNECTING, STATE_OPEN, STATE_CLOSED = 0, 1, 3

    def __init__(self, last_heard: float) -> None:
        self.state = self.STATE_OPEN
        self.last_ping = last_heard
        self.pings = 0
        self.pinged = asyncio.Event()

    def _sendAutoPing(self) -> None:
        self.pings += 1
        self.pinged.set()

    async def next_ping(self) -> None:
        self.pinged.clear()
        await asyncio.wait_for(self.pinged.wait(), OUTCOME_TIMEOUT_SECONDS)


async def test_keep_alive_pings_the_quiet_connections_due_and_files_every_open_one_an_interval_on() -> None:
    keep_alive = KeepAlive(interval=2.0)
    started = time.time()
    due = started + keep_alive.interval
    quiet, also_quiet, closed = (Quiet(last_heard=started) for _ in range(3))
    talking = Quiet(last_heard=due)  # a message came in at the moment it was due: the interval starts again
    for protocol in (quiet, also_quiet, talking, closed):
        keep_alive.file(protocol, due)
    closed.state = Quiet.STATE_CLOSED

    await quiet.next_ping()
    assert (quiet.pings, also_quiet.pings, talking.pings, closed.pings) == (1, 1, 0, 0)  # one tick: both quiet ones
    assert len(keep_alive) == 3  # the closed one is dropped, the others filed an interval on

    keep_alive.forget(also_quiet)
    await asyncio.gather(quiet.next_ping(), talking.next_ping())
    assert (quiet.pings, also_quiet.pings, talking.pings) == (2, 1, 1)
