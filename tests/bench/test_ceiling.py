"""The bench's ceiling server admits Bearer keys with the essential work of an admission, against the real Redis."""

from __future__ import annotations

import asyncio
import secrets

import orjson
import pytest
import redis.asyncio
from django.conf import settings
from websockets.asyncio.client import connect
from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed

from bench.ceiling import REDIS_CONNECTIONS, REDIS_PREFIX, Ceiling, registry_client

TIMEOUT = 5.0


@pytest.fixture
async def registry():
    client = redis.asyncio.Redis.from_url(settings.REDIS_URL)
    yield client
    await client.aclose()


@pytest.fixture
async def ceiling_url():
    ceiling = Ceiling("ws://unused", "unused", registry_client(settings.REDIS_URL))
    async with serve(ceiling.converse, "127.0.0.1", 0) as server:
        yield f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}"


async def statuses(websocket, count: int) -> list[str]:
    return [orjson.loads(await asyncio.wait_for(websocket.recv(), TIMEOUT))[0]["status"] for _ in range(count)]


async def test_a_key_is_admitted_through_its_cached_record_and_a_lock_held_until_the_close(registry, ceiling_url):
    commands_before = (await registry.info("commandstats")).get("cmdstat_get", {}).get("calls", 0)
    url = ceiling_url
    key = {"Authorization": f"Bearer {secrets.token_hex(8)}"}
    async with connect(url, additional_headers=key) as first:
        assert await statuses(first, 2) == ["connected", "auth_success"]
        assert len(await registry.keys(f"{REDIS_PREFIX}lock:*")) == 1
        async with connect(url, additional_headers=key) as second:  # the same user: the lock is held
            assert await statuses(second, 2) == ["connected", "max_connections"]
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(second.recv(), TIMEOUT)
            assert second.close_code == 4409
    async with asyncio.timeout(TIMEOUT):
        while await registry.keys(f"{REDIS_PREFIX}lock:*"):  # released at the close
            await asyncio.sleep(0.01)
    async with connect(url) as keyless:  # the load scenarios' clients: no admission work
        assert await statuses(keyless, 2) == ["connected", "auth_success"]
    commands_after = (await registry.info("commandstats")).get("cmdstat_get", {}).get("calls", 0)
    assert commands_after - commands_before >= 2  # one record read per keyed connection


async def test_a_storm_of_connections_closing_together_releases_every_lock(registry, ceiling_url):
    async def admitted():
        websocket = await connect(ceiling_url, additional_headers={"Authorization": f"Bearer {secrets.token_hex(8)}"})
        assert await statuses(websocket, 2) == ["connected", "auth_success"]
        return websocket

    websockets = await asyncio.gather(*(admitted() for _ in range(3 * REDIS_CONNECTIONS)))
    assert len(await registry.keys(f"{REDIS_PREFIX}lock:*")) == 3 * REDIS_CONNECTIONS
    await asyncio.gather(*(websocket.close() for websocket in websockets))
    async with asyncio.timeout(TIMEOUT):
        while await registry.keys(f"{REDIS_PREFIX}lock:*"):
            await asyncio.sleep(0.01)
