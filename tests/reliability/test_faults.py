"""Faults against the running system: a gateway killed, Redis stopped and restarted, a misbehaving upstream, and
clients that vanish. Each test checks what the client sees, that no lock leaks, and records how long it took."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time

import orjson
import pytest
import redis
from websockets.asyncio.client import connect

from devstack.redis_server import RedisServer
from streaming.runtime import lease, lock
from streaming.simulator import FeedSimulator
from tests.accounts.factories import make_key, make_user
from tests.e2e.clients import bearer, expect_statuses, read_until_closed
from tests.e2e.conftest import SIMULATOR_KEY, simulator_env
from tests.reliability.figures import record

pytestmark = [pytest.mark.reliability, pytest.mark.e2e]

LOCK_TTL = 3.0


@pytest.fixture
def users(transactional_db):
    return [make_key(make_user(f"fault-{n}", plans={"stocks": "expert", "options": "expert"}), "stocks")[1]
            for n in range(3)]


async def admitted(gateway, key: str, subscribe: str | None = "T.*"):
    websocket = await connect(gateway.url("/v1/ws/stocks/"), additional_headers=bearer(key), max_size=None)
    await expect_statuses(websocket, "connected", "auth_success")
    if subscribe:
        await websocket.send(orjson.dumps({"action": "subscribe", "params": subscribe}).decode())
        await expect_statuses(websocket, *["success"] * len(subscribe.split(",")))
    return websocket


async def attempt(gateway, key: str) -> str:
    """One handshake: the status that decided it (auth_success, max_connections, auth_failed, error)."""
    async with connect(gateway.url("/v1/ws/stocks/"), additional_headers=bearer(key)) as websocket:
        async with asyncio.timeout(10):
            await websocket.recv()
            return orjson.loads(await websocket.recv())[0]["status"]


def lock_held(client: redis.Redis, count: int = 1) -> bool:
    return len(client.keys(f"{lock.KEY_PREFIX}*")) >= count


async def wait_until(predicate, timeout: float, poll: float = 0.02) -> float:
    started = time.monotonic()
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(poll)
    return time.monotonic() - started


async def test_gateway_killed_mid_stream_user_reconnects_within_the_ttl(gateway_factory, simulator, users, clean_redis):
    env = {**simulator_env(simulator), "STREAM_LOCK_TTL": str(LOCK_TTL), "STREAM_LOCK_WAIT": "0"}
    doomed, survivor = gateway_factory("doomed", **env), gateway_factory("survivor", **env)
    websocket = await admitted(doomed, users[0])
    await simulator.emit("stocks", 50)
    doomed.stop(signal.SIGKILL)
    killed_at = time.monotonic()
    outcome = await read_until_closed(websocket)
    assert outcome.close_code == 1006  # no close frame from a killed process

    decisions = []
    while (status := await attempt(survivor, users[0])) != "auth_success":
        decisions.append(status)
        assert time.monotonic() - killed_at < LOCK_TTL + 2, "the stale lock outlived its TTL"
        await asyncio.sleep(0.1)
    reconnected_after = time.monotonic() - killed_at
    assert set(decisions) <= {"max_connections"}  # refused while the dead stream's lock lived, never admitted twice
    assert reconnected_after >= LOCK_TTL * (1 - lease.REFRESH_FRACTION) - 0.5
    record("reconnect after SIGKILL of the gateway", reconnected_after, "s", ttl=LOCK_TTL, refused=len(decisions))
    await wait_until(lambda: not lock_held(clean_redis), 5)


async def test_redis_stopped_while_streaming_then_restarted(gateway_factory, simulator, users, tmp_path):
    server = RedisServer(directory=tmp_path).start()
    try:
        gateway = gateway_factory("own-redis", **simulator_env(simulator), REDIS_URL=server.url,
                                  STREAM_LOCK_TTL=str(LOCK_TTL))
        streams = [await admitted(gateway, key) for key in users[:2]]
        server.kill()
        killed_at = time.monotonic()
        outcomes = [await read_until_closed(websocket) for websocket in streams]
        closed_after = time.monotonic() - killed_at
        assert [outcome.close_code for outcome in outcomes] == [1011, 1011]
        assert all(outcome.statuses[-1] == "error" for outcome in outcomes)
        assert closed_after < LOCK_TTL  # before any lock could expire and admit a second stream
        record("streams closed after Redis died", closed_after, "s", ttl=LOCK_TTL)

        assert await attempt(gateway, users[2]) == "error"  # fail closed while Redis is down
        server.start()
        restarted_at = time.monotonic()
        while (status := await attempt(gateway, users[2])) != "auth_success":
            assert status == "error" and time.monotonic() - restarted_at < 15
            await asyncio.sleep(0.1)
        record("admissions work again after Redis restart", time.monotonic() - restarted_at, "s")
        websocket = await admitted(gateway, users[0])
        await simulator.emit("stocks", 20)
        await websocket.close()
        assert "Traceback" not in gateway.log()
    finally:
        server.close()


async def test_upstream_stall_closes_its_clients_1011_and_recovers(gateway_factory, simulator, users):
    gateway = gateway_factory("stall", **simulator_env(simulator), STREAM_UPSTREAM_SILENCE_SECONDS="1")
    websocket = await admitted(gateway, users[0])
    simulator.pause()
    stalled_at = time.monotonic()
    outcome = await read_until_closed(websocket)
    record("stalled upstream detected", time.monotonic() - stalled_at, "s", silence_limit=1)
    assert outcome.close_code == 1011 and "stalled" in outcome.close_reason
    simulator.resume()
    websocket = await admitted(gateway, users[1], subscribe="T.AAPL")
    simulator.start_recording("stocks")
    await simulator.send_events("stocks", [{"ev": "T", "sym": "AAPL", "p": 1.0, "s": 1, "t": 1, "q": 1}])
    assert orjson.loads(await websocket.recv()) == simulator.recorded("stocks")


async def test_malformed_upstream_frame_is_a_gateway_error_not_a_silent_gap(gateway_factory, simulator, users):
    gateway = gateway_factory("malformed", **simulator_env(simulator))
    websocket = await admitted(gateway, users[0])
    await simulator.send_raw("stocks", "{this is not json")
    outcome = await read_until_closed(websocket)
    assert outcome.close_code == 1011 and "not JSON" in outcome.close_reason
    websocket = await admitted(gateway, users[0])  # recovered: a new upstream connection, same user welcome back
    simulator.start_recording("stocks")
    await simulator.emit("stocks", 100)
    expected = [event for event in simulator.recorded("stocks") if event["ev"] == "T"]
    received = []
    async with asyncio.timeout(10):
        while len(received) < len(expected):
            received.extend(orjson.loads(await websocket.recv()))
    assert received == expected


async def test_upstream_max_connections_is_1011_then_recovers(gateway_factory, users):
    async with FeedSimulator(api_key=SIMULATOR_KEY, rate=0, max_connections=1) as limited:
        hog = await connect(limited.url("stocks"))
        await hog.recv()
        await hog.send(orjson.dumps({"action": "auth", "params": SIMULATOR_KEY}).decode())
        await hog.recv()
        gateway = gateway_factory("limited", **simulator_env(limited))
        websocket = await admitted(gateway, users[0], subscribe=None)
        await websocket.send('{"action":"subscribe","params":"T.*"}')
        outcome = await read_until_closed(websocket)
        assert outcome.close_code == 1011 and "max_connections" in outcome.close_reason
        await hog.close()
        websocket = await admitted(gateway, users[1])  # after the backoff, the hub connects again
        await limited.emit("stocks", 50)
        assert orjson.loads(await websocket.recv())
        assert limited.open_connections("stocks") == 1


CLIENT_SCRIPT = """
import asyncio, sys
from websockets.asyncio.client import connect
async def main():
    ws = await connect(sys.argv[1], additional_headers={"Authorization": "Bearer " + sys.argv[2]})
    await ws.recv(); await ws.recv()
    await ws.send('{"action":"subscribe","params":"T.*"}')
    print("subscribed" if "subscribed to: T.*" in await ws.recv() else "not subscribed", flush=True)
    await asyncio.sleep(3600)
asyncio.run(main())
"""


async def test_client_process_killed_releases_the_lock(gateway_factory, simulator, users, clean_redis):
    gateway = gateway_factory("client-killed", **simulator_env(simulator))
    client = subprocess.Popen([sys.executable, "-c", CLIENT_SCRIPT, gateway.url("/v1/ws/stocks/"), users[0]],
                              stdout=subprocess.PIPE, text=True)
    try:
        # Read in a thread: the simulator runs on this event loop and must answer the gateway meanwhile.
        assert (await asyncio.to_thread(client.stdout.readline)).strip() == "subscribed"
        assert lock_held(clean_redis)
        client.kill()
        released_after = await wait_until(lambda: not lock_held(clean_redis), 10)
    finally:
        client.kill()
        client.wait()
    record("lock released after the client process was killed", released_after, "s")
    assert await attempt(gateway, users[0]) == "auth_success"


async def test_client_that_vanishes_without_closing_is_dropped_by_ping_timeout(gateway_factory, simulator, users,
                                                                               clean_redis):
    """A peer that stops answering (no FIN, no pong) is dropped by daphne's ping timeout, then its lock freed."""
    gateway = gateway_factory("vanish", args=("--ping-interval", "1", "--ping-timeout", "2"),
                              **simulator_env(simulator))
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    writer.write(
        f"GET /v1/ws/stocks/ HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        f"Authorization: Bearer {users[0]}\r\n\r\n".encode()
    )
    await writer.drain()
    assert (await reader.readline()).startswith(b"HTTP/1.1 101")
    await wait_until(lambda: lock_held(clean_redis), 5)
    silent_from = time.monotonic()  # from now on the peer reads nothing and answers no ping
    released_after = await wait_until(lambda: not lock_held(clean_redis), 15, poll=0.05)
    writer.close()
    record("lock released after a silent client (ping 1 s, timeout 2 s)", time.monotonic() - silent_from, "s")
    assert released_after < 10
