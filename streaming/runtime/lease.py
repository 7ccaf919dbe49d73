"""A token-checked Redis lease: a key holding a random token, with a TTL that only its holder can extend or end.

The connection lock (one per user) and the feed relay's lease (one per market) are both leases. ``hold`` keeps one
alive while its owner runs, so the lease of a process that dies without a clean exit expires by itself, and reports
when it is lost or can no longer be confirmed before it could expire. Like redis-py's ``redis/asyncio/lock.py``,
extend and release are small Lua scripts that act only while the key still holds the caller's token.
"""

from __future__ import annotations

import asyncio
import enum
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import ClassVar, Protocol, TypeVar

import redis.asyncio
import redis.exceptions
from redis.commands.core import AsyncScript

from streaming.exceptions import LeaseUnavailable
from streaming.runtime.tasks import CancellationGuard

# Refresh every third of the TTL; give up a third of the TTL before the key could expire.
REFRESH_FRACTION = 1 / 3
SAFETY_MARGIN_FRACTION = 1 / 3
# While Redis is unreachable, retry this often (or every refresh interval, if that is shorter).
UNREACHABLE_RETRY_SECONDS = 0.5
TOKEN_BYTES = 16

T = TypeVar("T")


class LossReason(enum.Enum):
    LOST = "lost"  # the key is gone or holds another token (a connection closes with 4409)
    UNREACHABLE = "unreachable"  # ownership could not be confirmed before the TTL could run out (1011)


class Lease:
    """One holder's lease on one Redis key. Create one per holder; never share it."""

    # KEYS[1]: the lease key. ARGV[1]: the holder's token. Deletes the key only while it holds that token.
    LUA_RELEASE_SCRIPT = """
        local token = redis.call('get', KEYS[1])
        if not token or token ~= ARGV[1] then
            return 0
        end
        redis.call('del', KEYS[1])
        return 1
    """

    # KEYS[1]: the lease key. ARGV[1]: the holder's token; ARGV[2]: the new TTL in milliseconds.
    LUA_REFRESH_SCRIPT = """
        local token = redis.call('get', KEYS[1])
        if not token or token ~= ARGV[1] then
            return 0
        end
        redis.call('pexpire', KEYS[1], ARGV[2])
        return 1
    """

    lua_release: ClassVar[AsyncScript | None] = None
    lua_refresh: ClassVar[AsyncScript | None] = None

    def __init__(self, redis: redis.asyncio.Redis, key: str, ttl: float) -> None:
        if ttl <= 0:
            raise ValueError("ttl must be positive")
        self.redis = redis
        self._key = key
        self._ttl = ttl
        self._token = secrets.token_hex(TOKEN_BYTES)
        self._confirmed_at: float | None = None
        self.register_scripts(redis)

    @classmethod
    def register_scripts(cls, client: redis.asyncio.Redis) -> None:
        # Registered once per process, like redis-py's Lock: each call passes its own ``client=``.
        if Lease.lua_release is None:
            Lease.lua_release = client.register_script(cls.LUA_RELEASE_SCRIPT)
        if Lease.lua_refresh is None:
            Lease.lua_refresh = client.register_script(cls.LUA_REFRESH_SCRIPT)

    @property
    def key(self) -> str:
        return self._key

    @property
    def token(self) -> str:
        return self._token

    @property
    def ttl(self) -> float:
        return self._ttl

    @property
    def refresh_interval(self) -> float:
        return self._ttl * REFRESH_FRACTION

    @property
    def confirmed_at(self) -> float | None:
        """`time.monotonic()` when the last successful acquire or refresh was sent; the key lives until at least
        ``confirmed_at + ttl``. None before the lease was acquired."""
        return self._confirmed_at

    @property
    def _ttl_ms(self) -> int:
        return max(1, round(self._ttl * 1000))

    async def acquire(self) -> bool:
        """Take the lease if nobody holds it. Raises `LeaseUnavailable`."""
        sent_at = time.monotonic()
        acquired = await self._call("acquire", self.redis.set(self._key, self._token, nx=True, px=self._ttl_ms))
        if acquired:
            self._confirmed_at = sent_at
        return bool(acquired)

    async def refresh(self) -> bool:
        """Reset the TTL if we still hold the lease; False once it expired or another token replaced ours.
        Raises `LeaseUnavailable`."""
        assert Lease.lua_refresh is not None
        sent_at = time.monotonic()
        owned = await self._call(
            "refresh", Lease.lua_refresh(keys=[self._key], args=[self._token, self._ttl_ms], client=self.redis)
        )
        if owned:
            self._confirmed_at = sent_at
        return bool(owned)

    def confirm(self, sent_at: float) -> None:
        """A refresh sent at *sent_at* found the lease held (batches: ``ConnectionLock.refresh_together``)."""
        self._confirmed_at = sent_at

    async def release(self) -> bool:
        """Delete the key if it still holds our token; True if it did. Safe to repeat. Raises `LeaseUnavailable`."""
        assert Lease.lua_release is not None
        released = await self._call(
            "release", Lease.lua_release(keys=[self._key], args=[self._token], client=self.redis)
        )
        return bool(released)

    async def _call(self, action: str, command: Awaitable[T]) -> T:
        try:
            return await command
        except redis.exceptions.RedisError as error:
            raise LeaseUnavailable(f"cannot {action} {self._key}") from error


class Renewable(Protocol):
    """What ``hold`` keeps alive: a `Lease`, or anything else that expires unless refreshed (relay registrations)."""

    @property
    def ttl(self) -> float: ...

    @property
    def refresh_interval(self) -> float: ...

    @property
    def confirmed_at(self) -> float | None: ...

    async def refresh(self) -> bool: ...


async def hold(lease: Renewable, on_lost: Callable[[LossReason], Awaitable[None]]) -> None:
    """Keep an acquired *lease* alive until it is lost, then await ``on_lost(reason)`` once and return.

    Run it as its own task and cancel it when done; it never releases the lease (the caller does).
    Each refresh is bounded by the give-up deadline, so a hung Redis cannot delay the UNREACHABLE report.
    """
    cancellation = CancellationGuard()
    retry_interval = min(UNREACHABLE_RETRY_SECONDS, lease.refresh_interval)
    retry_at: float | None = None
    while True:
        confirmed_at = lease.confirmed_at
        if confirmed_at is None:
            raise RuntimeError("hold() needs an acquired lease")
        give_up_at = confirmed_at + lease.ttl * (1 - SAFETY_MARGIN_FRACTION)
        next_attempt = confirmed_at + lease.refresh_interval if retry_at is None else retry_at
        await asyncio.sleep(max(0.0, min(next_attempt, give_up_at) - time.monotonic()))
        remaining = give_up_at - time.monotonic()
        if remaining <= 0:
            await on_lost(LossReason.UNREACHABLE)
            return
        owned: bool | None
        try:
            async with asyncio.timeout(remaining):
                owned = await lease.refresh()
        except (LeaseUnavailable, TimeoutError):
            owned = None
        cancellation.check()  # or the cancelled keeper would live on
        if owned is False:
            await on_lost(LossReason.LOST)
            return
        retry_at = time.monotonic() + retry_interval if owned is None else None
