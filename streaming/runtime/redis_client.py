"""The gateway's asyncio Redis client (connection lock, live checks), one per event loop.

Reads are short and must fail fast when Redis is down, so admission can fail closed within a second or two instead
of hanging a handshake; channels-redis keeps its own pool with the long socket timeout it needs.
"""

from __future__ import annotations

from typing import Any

import redis.asyncio
import redis.asyncio.sentinel
from django.conf import settings

from streaming.runtime.loop_local import LoopLocal

SOCKET_TIMEOUT_SECONDS = 2.0
HEALTH_CHECK_INTERVAL_SECONDS = 15
POOL_SIZE = 64
SENTINEL_POOL_SIZE = 4096  # Sentinel pools cannot block: make exhaustion unreachable instead

_clients: LoopLocal[redis.asyncio.Redis] = LoopLocal()


def redis_client() -> redis.asyncio.Redis:
    return _clients.get(_connect)


def _connect() -> redis.asyncio.Redis:
    """A client of ``REDIS_URL``, or of the current master named by the sentinels (``REDIS_SENTINELS``).

    A Sentinel-managed client asks the sentinels for the master again whenever a connection to it fails, so after a
    failover the next lock refresh reaches the new master (where the lock may be missing: see README, Sentinel).
    """
    options: dict[str, Any] = {
        "socket_timeout": SOCKET_TIMEOUT_SECONDS,
        "socket_connect_timeout": SOCKET_TIMEOUT_SECONDS,
        "health_check_interval": HEALTH_CHECK_INTERVAL_SECONDS,
    }
    sentinel = settings.REDIS_SENTINEL
    if sentinel is None:
        # redis-py's default pool refuses a command outright once 100 are in flight (MaxConnectionsError), which an
        # admission burst reaches; a blocking pool makes the burst wait its turn instead.
        pool = redis.asyncio.BlockingConnectionPool.from_url(
            settings.REDIS_URL, max_connections=POOL_SIZE, timeout=SOCKET_TIMEOUT_SECONDS, **options
        )
        return redis.asyncio.Redis(connection_pool=pool)
    sentinels = redis.asyncio.sentinel.Sentinel(list(sentinel.sentinels), sentinel_kwargs=sentinel.sentinel_kwargs())
    return sentinels.master_for(
        sentinel.master, db=sentinel.db, password=sentinel.password, max_connections=SENTINEL_POOL_SIZE, **options
    )
