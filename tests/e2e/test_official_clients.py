"""Official Massive (formerly Polygon.io) clients against the gateway, unchanged apart from host and key."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path

import orjson
import pytest
from massive import WebSocketClient
from massive.exceptions import AuthError

from tests.accounts.factories import make_key, make_user

pytestmark = pytest.mark.e2e

JS_CLIENT_DIR = Path(__file__).parent / "js"
TIMEOUT = 15


def python_client(gateway, key: str, market: str = "options") -> WebSocketClient:
    return WebSocketClient(
        api_key=key, feed=f"127.0.0.1:{gateway.port}/v1/ws", market=market, secure=False, max_reconnects=1
    )


@pytest.fixture
def developer_key(transactional_db) -> str:
    return make_key(make_user("sdk-developer", plans={"options": "developer"}), "options")[1]


@pytest.fixture
def expert_key(transactional_db) -> str:
    return make_key(make_user("sdk-expert", plans={"options": "expert"}), "options")[1]


@pytest.mark.parametrize("with_header", [True, False])
async def test_rejected_key_surfaces_as_the_clients_auth_error(gateway, developer_key, with_header):
    client = python_client(gateway, developer_key)
    kwargs = {"additional_headers": {"Authorization": f"Bearer {developer_key}"}} if with_header else {}

    async def ignore(messages):
        pass

    with pytest.raises(AuthError, match="WebSocket access"):
        async with asyncio.timeout(TIMEOUT):
            await client.connect(ignore, **kwargs)


@pytest.mark.parametrize("with_header", [True, False])
async def test_python_client_streams_parsed_trades(streaming_gateway, simulator, expert_key, with_header):
    client = python_client(streaming_gateway, expert_key)
    client.subscribe("T.*")
    received = []
    enough = asyncio.Event()

    async def collect(messages):
        received.extend(messages)
        if len(received) >= 20:
            enough.set()

    kwargs = {"additional_headers": {"Authorization": f"Bearer {expert_key}"}} if with_header else {}
    task = asyncio.ensure_future(client.connect(collect, **kwargs))
    try:
        await simulator.wait_for(lambda: "T.*" in simulator.subscriptions("options"), timeout=TIMEOUT)
        simulator.start_recording("options")
        while not enough.is_set():
            await simulator.emit("options", 200)
            try:
                await asyncio.wait_for(enough.wait(), 0.5)
            except TimeoutError:
                pass
        # The client's trades start at its ack (the SDK hides statuses), a little after the simulator saw T.*:
        # from its first trade on, they are exactly what the simulator sent, in order.
        sent = [(event["sym"], event["p"], event["s"]) for event in simulator.recorded("options") if event["ev"] == "T"]
        trades = [(trade.symbol, trade.price, trade.size) for trade in received]
        start = sent.index(trades[0])
        assert trades == sent[start : start + len(trades)]
        assert type(received[0]).__name__ == "EquityTrade"
    finally:
        await client.close()
        task.cancel()


@pytest.fixture(scope="session")
def js_client() -> Path:
    """The official JS client, installed once per run from the committed package-lock.json."""
    npm = shutil.which("npm")
    assert npm, "Node.js and npm are required for the JS client test"
    if not (JS_CLIENT_DIR / "node_modules" / "@massive.com" / "client-js").exists():
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=JS_CLIENT_DIR, check=True, timeout=600)
    return JS_CLIENT_DIR


async def test_js_client_streams_trades(streaming_gateway, simulator, expert_key, js_client):
    node = await asyncio.create_subprocess_exec(
        "node", "stream_trades.mjs", f"ws://127.0.0.1:{streaming_gateway.port}/v1/ws", expert_key, "T.*", "10",
        cwd=js_client, stdout=asyncio.subprocess.PIPE,
    )
    lines = []
    try:
        async with asyncio.timeout(TIMEOUT):
            while not any(line.get("message") == "subscribed to: T.*" for line in lines):
                lines.append(orjson.loads(await node.stdout.readline()))
            simulator.start_recording("options")
            while node.returncode is None:
                await simulator.emit("options", 100)
                try:
                    line = await asyncio.wait_for(node.stdout.readline(), 0.5)
                except TimeoutError:
                    continue
                if not line:
                    break
                lines.append(orjson.loads(line))
            # The client may have printed its last events and exited between two reads: take what is left.
            lines.extend(orjson.loads(line) for line in (await node.stdout.read()).splitlines())
            await node.wait()
    finally:
        if node.returncode is None:
            node.kill()
    trades = [line for line in lines if line.get("ev") == "T"]
    sent = [event for event in simulator.recorded("options") if event["ev"] == "T"]
    assert len(trades) >= 10
    assert trades == sent[: len(trades)]
    assert [line["status"] for line in lines if line.get("ev") == "status"][:2] == ["connected", "auth_success"]
