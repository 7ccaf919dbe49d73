"""streaming.daphne.shutdown through a real daphne process serving tests/streaming/daphne/shutdown_app.py, stopped
with SIGTERM. The full gateway's shutdown (locks released, 1001 to streaming clients) is in tests/e2e/test_shutdown.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from devstack.ports import free_port
from streaming.codes import CloseCode
from streaming.daphne import close, shutdown

pytestmark = pytest.mark.e2e

REPO_ROOT = Path(__file__).resolve().parents[3]
APP = "tests.streaming.daphne.shutdown_app:application"
START_TIMEOUT_SECONDS = 15.0
EXIT_TIMEOUT_SECONDS = 10.0
POLL_SECONDS = 0.02
SHORT_DRAIN_SECONDS = 1.0
CLEANUP_SECONDS = 0.5
"""How long a ``clean`` app takes over its cleanup once disconnected."""
SLACK_SECONDS = 2.0
"""How much later than its deadline a loaded machine may let a process exit."""


def wait_for(probe: Callable[[], object], what: str, timeout: float = START_TIMEOUT_SECONDS) -> None:
    """Poll *probe* until it is truthy (waits on another process, which has no event to await)."""
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(POLL_SECONDS)


async def until(probe: Callable[[], object], what: str, timeout: float = START_TIMEOUT_SECONDS) -> None:
    """`wait_for` for a test's event loop, which keeps running its clients meanwhile."""
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(POLL_SECONDS)


class DaphneProcess:
    """daphne serving shutdown_app on a free loopback port, Django-free unless the app is given a timeout."""

    def __init__(self, directory: Path, drain_seconds: float | None = None) -> None:
        self.port = free_port()
        self.record_path = directory / "record.jsonl"
        self.accept_flag = directory / "accept"
        self.stderr_path = directory / "daphne.stderr"
        env = {name: value for name, value in os.environ.items() if name != "DJANGO_SETTINGS_MODULE"}
        env.update(
            SHUTDOWN_APP_RECORD=str(self.record_path),
            SHUTDOWN_APP_ACCEPT=str(self.accept_flag),
            SHUTDOWN_APP_CLEANUP=str(CLEANUP_SECONDS),
        )
        if drain_seconds is not None:
            env["SHUTDOWN_APP_TIMEOUT"] = str(drain_seconds)
        with open(self.stderr_path, "wb") as stderr:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(self.port), APP],
                cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=stderr,
            )
        wait_for(self._serves, "daphne to serve HTTP")
        self.terminated_at: float | None = None

    def _serves(self) -> bool:
        assert self.process.poll() is None, self.stderr()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/", timeout=1):
                return True
        except OSError:
            return False

    def url(self, name: str, mode: str) -> str:
        return f"ws://127.0.0.1:{self.port}/ws?name={name}&mode={mode}"

    def terminate(self) -> None:
        self.terminated_at = time.monotonic()
        self.process.send_signal(signal.SIGTERM)

    async def exited(self) -> tuple[int, float]:
        """The exit code, and how long after SIGTERM the process exited."""
        code = await asyncio.to_thread(self.process.wait, EXIT_TIMEOUT_SECONDS)
        assert self.terminated_at is not None
        return code, time.monotonic() - self.terminated_at

    def records(self) -> list[dict]:
        if not self.record_path.exists():
            return []
        return [json.loads(line) for line in self.record_path.read_text().splitlines()]

    def events(self, event: str) -> list[dict]:
        return [entry for entry in self.records() if entry["event"] == event]

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def start_daphne(tmp_path: Path) -> Iterator[Callable[..., DaphneProcess]]:
    started: list[DaphneProcess] = []

    def start(drain_seconds: float | None = None) -> DaphneProcess:
        server = DaphneProcess(tmp_path, drain_seconds)
        started.append(server)
        return server

    yield start
    for server in started:
        server.kill()


@pytest.fixture
async def clients() -> AsyncIterator[Callable[[str], object]]:
    """Open WebSocket clients that have received the app's ``ready``; all closed at the end."""
    opened: list[ClientConnection] = []

    async def open_client(url: str) -> ClientConnection:
        client = await connect(url, open_timeout=5, close_timeout=5)
        opened.append(client)
        assert await asyncio.wait_for(client.recv(), 5) == "ready"
        return client

    yield open_client
    for client in opened:
        await client.close()


async def close_received(client: ClientConnection) -> ConnectionClosed:
    """How the server closed *client*: cleanly, and first."""
    with pytest.raises(ConnectionClosed) as closed:
        await asyncio.wait_for(client.recv(), EXIT_TIMEOUT_SECONDS)
    assert closed.value.rcvd is not None and closed.value.rcvd_then_sent, "the server did not close first, cleanly"
    return closed.value


def going_away(closed: ConnectionClosed) -> tuple[int, str]:
    return closed.rcvd.code, closed.rcvd.reason


GOING_AWAY = (CloseCode.GOING_AWAY, close.SHUTDOWN_REASON.decode())


# --- through daphne ---------------------------------------------------------------------------------------------------


async def test_sigterm_closes_every_websocket_with_1001_and_waits_for_the_apps_then_runs_the_hook_once(
    start_daphne, clients
):
    server = start_daphne()
    names = ["a", "b", "c"]
    opened = [await clients(server.url(name, "clean")) for name in names]
    server.terminate()

    closes = await asyncio.gather(*(close_received(client) for client in opened))
    assert [going_away(closed) for closed in closes] == [GOING_AWAY] * len(names)
    await until(lambda: len(server.events("disconnect")) == len(names), "every app's websocket.disconnect")
    with pytest.raises(ConnectionRefusedError):  # no longer listening, while the apps still clean up
        socket.create_connection(("127.0.0.1", server.port), timeout=1).close()

    code, elapsed = await server.exited()
    assert code == 0, server.stderr()
    assert elapsed >= CLEANUP_SECONDS  # it waited for the apps' cleanup
    records = server.records()
    assert sorted(entry["name"] for entry in server.events("finished")) == names
    assert server.events("cancelled") == []
    assert {entry["code"] for entry in server.events("disconnect")} == {CloseCode.GOING_AWAY}
    assert [entry["event"] for entry in records][-1] == "hook"
    assert server.events("hook") == [{"event": "hook", "running": 0}]  # once, after every app finished
    assert f"shutdown: closing {len(names)} WebSocket(s) with 1001" in server.stderr()
    assert "Traceback" not in server.stderr()


async def test_apps_still_running_after_the_shutdown_timeout_are_cancelled(start_daphne, clients):
    server = start_daphne(drain_seconds=SHORT_DRAIN_SECONDS)
    polite = await clients(server.url("polite", "clean"))
    stubborn = await clients(server.url("stubborn", "stubborn"))
    server.terminate()

    assert going_away(await close_received(polite)) == GOING_AWAY
    assert going_away(await close_received(stubborn)) == GOING_AWAY  # the client is closed all the same
    code, elapsed = await server.exited()
    assert code == 0, server.stderr()
    assert SHORT_DRAIN_SECONDS <= elapsed < SHORT_DRAIN_SECONDS + shutdown.CANCEL_GRACE_SECONDS + SLACK_SECONDS
    assert [entry["name"] for entry in server.events("finished")] == ["polite"]
    assert [entry["name"] for entry in server.events("cancelled")] == ["stubborn"]
    assert server.events("hook") == [{"event": "hook", "running": 0}]
    assert [entry["event"] for entry in server.records()][-1] == "hook"
    # GATEWAY_SHUTDOWN_TIMEOUT set the deadline (the default would be 10 s).
    assert f"shutdown: cancelling 1 application instance(s) still running after {SHORT_DRAIN_SECONDS:g} s" in (
        server.stderr()
    )


async def test_a_socket_accepted_during_the_drain_is_closed_with_1001_and_waited_for(start_daphne, clients):
    """The drain's first pass closes only open sockets; one the app accepts afterwards is closed as it opens."""
    server = start_daphne()
    steady = await clients(server.url("steady", "clean"))
    late = asyncio.ensure_future(connect(server.url("late", "late"), open_timeout=EXIT_TIMEOUT_SECONDS))
    connected = lambda: [entry["name"] for entry in server.events("connect")] == ["steady", "late"]  # noqa: E731
    await until(connected, "the late handshake")
    server.terminate()
    assert going_away(await close_received(steady)) == GOING_AWAY
    await until(lambda: "shutdown: closing 1 WebSocket(s)" in server.stderr(), "the drain's first pass")
    server.accept_flag.touch()  # the late app accepts now

    async with await late as late_client:
        closed = await close_received(late_client)
    assert going_away(closed) == GOING_AWAY  # before anything the app sent after its accept
    code, _ = await server.exited()
    assert code == 0, server.stderr()
    assert sorted(entry["name"] for entry in server.events("finished")) == ["late", "steady"]
    assert server.events("hook") == [{"event": "hook", "running": 0}]


async def test_with_nothing_open_the_process_exits_at_once_and_still_runs_the_hook(start_daphne):
    server = start_daphne()
    server.terminate()
    code, elapsed = await server.exited()
    assert code == 0, server.stderr()
    assert elapsed < SLACK_SECONDS
    assert server.records() == [{"event": "hook", "running": 0}]


# --- drain_timeout ----------------------------------------------------------------------------------------------------


def test_drain_timeout_reads_gateway_shutdown_timeout(settings):
    settings.GATEWAY_SHUTDOWN_TIMEOUT = 2.5
    assert shutdown.drain_timeout() == 2.5
    settings.GATEWAY_SHUTDOWN_TIMEOUT = "4"  # as an environment variable would give it
    assert shutdown.drain_timeout() == 4.0


def test_drain_timeout_defaults_when_django_has_no_such_setting(settings):
    del settings.GATEWAY_SHUTDOWN_TIMEOUT
    assert shutdown.drain_timeout() == shutdown.DEFAULT_TIMEOUT_SECONDS


def test_drain_timeout_defaults_for_an_app_that_does_not_use_django():
    script = "from streaming.daphne.shutdown import drain_timeout; print(drain_timeout())"
    env = {name: value for name, value in os.environ.items() if name != "DJANGO_SETTINGS_MODULE"}
    output = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, env=env, check=True, capture_output=True, text=True, timeout=30
    ).stdout
    assert float(output) == shutdown.DEFAULT_TIMEOUT_SECONDS
