"""What an operator sees of the live connections: one small JSON record per connection, kept beside its lock.

The record is written, refreshed and deleted by the connection lock's own script calls (``ConnectionLock``), so it
lives exactly as long as the lock, wherever the connection is, and costs neither admission nor the stream a Redis
round trip of its own; its counters are as fresh as the last lock refresh (every third of ``STREAM_LOCK_TTL``).
``list_connections``, ``disconnect_user`` and the admin's "Live connections" page read them from Redis.
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TypeVar

import orjson
import redis.asyncio

from streaming.runtime.lock import RECORD_KEY_PREFIX
from streaming.runtime.redis_client import redis_client

T = TypeVar("T")

HOST = socket.gethostname()
SCAN_BATCH = 1000


@dataclasses.dataclass(frozen=True, slots=True)
class LiveConnection:
    user_id: int
    key_prefix: str
    market: str
    host: str  # the gateway's host and process serving the connection
    pid: int
    client: str  # the client's address
    connected_at: str  # ISO 8601, UTC
    subscriptions: int = 0
    events: int = 0  # market-data events given to the connection
    bytes_sent: int = 0  # bytes written to its socket
    outbox_bytes: int = 0  # bytes queued for it, not yet written

    def encode(self) -> bytes:
        return orjson.dumps(self)  # orjson encodes dataclasses natively (asdict copies: several times slower)

    @classmethod
    def decode(cls, raw: bytes | str) -> LiveConnection | None:
        """The record in *raw*; None for one this version cannot read (written by another release, say)."""
        try:
            fields = orjson.loads(raw)
            return cls(**{field.name: fields[field.name] for field in dataclasses.fields(cls) if field.name in fields})
        except (orjson.JSONDecodeError, TypeError):
            return None

    @property
    def gateway(self) -> str:
        return f"{self.host}:{self.pid}"


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


async def live_connections(client: redis.asyncio.Redis) -> list[LiveConnection]:
    """Every live connection of every gateway process, by user id."""
    keys = [key async for key in client.scan_iter(match=f"{RECORD_KEY_PREFIX}*", count=SCAN_BATCH)]
    records = []
    for start in range(0, len(keys), SCAN_BATCH):
        for raw in await client.mget(keys[start:start + SCAN_BATCH]):
            record = LiveConnection.decode(raw) if raw is not None else None
            if record is not None:
                records.append(record)
    return sorted(records, key=lambda record: record.user_id)


async def live_connection_of(client: redis.asyncio.Redis, user_id: int) -> LiveConnection | None:
    raw = await client.get(f"{RECORD_KEY_PREFIX}{user_id}")
    return LiveConnection.decode(raw) if raw is not None else None


def read_live_connections(query: Callable[[redis.asyncio.Redis], Awaitable[T]]) -> T:
    """Run *query* (one of the above) from synchronous code (the commands, the admin) with a Redis client of its
    own, closed afterwards."""

    async def run() -> T:
        client = redis_client()
        try:
            return await query(client)
        finally:
            await client.aclose()

    return asyncio.run(run())
