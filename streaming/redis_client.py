"""The gateway's asyncio Redis client (connection lock, live checks), one per event loop.

Reads are short and must fail fast when Redis is down, so admission can fail closed within a second or two instead
of hanging a handshake; channels-redis keeps its own pool with the long socket timeout it needs.
"""

from __future__ import annotations

import asyncio
import weakref

import redis.asyncio
from django.conf import settings

SOCKET_TIMEOUT_SECONDS = 2.0

_clients: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, redis.asyncio.Redis]" = weakref.WeakKeyDictionary()


def redis_client() -> redis.asyncio.Redis:
    loop = asyncio.get_running_loop()
    client = _clients.get(loop)
    if client is None:
        client = redis.asyncio.Redis.from_url(
            settings.REDIS_URL,
            socket_timeout=SOCKET_TIMEOUT_SECONDS,
            socket_connect_timeout=SOCKET_TIMEOUT_SECONDS,
            health_check_interval=15,
        )
        _clients[loop] = client
    return client
