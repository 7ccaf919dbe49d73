"""Redis for the runtime tests: the suite's shared server, and private ones a test may kill or freeze."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio
from django.conf import settings

from devstack.redis_server import RedisServer


@pytest.fixture
async def client() -> AsyncIterator[redis.asyncio.Redis]:
    connection = redis.asyncio.Redis.from_url(settings.REDIS_URL)
    yield connection
    await connection.aclose()


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.close()


@pytest.fixture
async def private_client(private_redis: RedisServer) -> AsyncIterator[redis.asyncio.Redis]:
    connection = redis.asyncio.Redis.from_url(private_redis.url, socket_timeout=10)
    yield connection
    await connection.aclose()
