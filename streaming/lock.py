"""The one-connection-per-user lock: a Redis key per user holding a token unique to the connection that owns it.

The key has a short TTL that `hold` keeps refreshing while the socket lives, so the lock of a process that dies
without a clean disconnect expires by itself. `LocalLocks` is the per-process fallback for fail-open mode.
"""

from __future__ import annotations

import asyncio
import enum
import secrets
import threading
import time
from collections.abc import Awaitable, Callable
from typing import ClassVar, TypeVar

import redis.asyncio
import redis.exceptions
from redis.commands.core import AsyncScript

KEY_PREFIX = "cm:stream-lock:user:"
DEFAULT_TTL_SECONDS = 30.0
# Refresh every third of the TTL; give up a third of the TTL before the key could expire.
REFRESH_FRACTION = 1 / 3
SAFETY_MARGIN_FRACTION = 1 / 3
# While Redis is unreachable, retry this often (or every refresh interval, if that is shorter).
UNREACHABLE_RETRY_SECONDS = 0.5
TOKEN_BYTES = 16

T = TypeVar("T")


class LockUnavailable(Exception):
    """Redis could not answer, so whether the lock is held is unknown; the original error is the ``__cause__``."""


class LockLossReason(enum.Enum):
    LOST = "lost"  # the key is gone or holds another token: close with 4409
    UNREACHABLE = "unreachable"  # ownership could not be confirmed before the TTL could run out: close with 1011


class ConnectionLock:
    """The lock of one connection for one user. Create one per connection; never share it between connections."""

    LUA_RELEASE_SCRIPT = """
        local token = redis.call('get', KEYS[1])
        if not token or token ~= ARGV[1] then
            return 0
        end
        redis.call('del', KEYS[1])
        return 1
    """

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

    def __init__(
        self, redis: redis.asyncio.Redis, user_id: int, ttl: float = DEFAULT_TTL_SECONDS, key: str | None = None
    ) -> None:
        if ttl <= 0:
            raise ValueError("ttl must be positive")
        self.redis = redis
        self.user_id = user_id
        self._ttl = ttl
        self._key = key or f"{KEY_PREFIX}{user_id}"  # another key: the same lease for something else (relays)
        self._token = secrets.token_hex(TOKEN_BYTES)
        self._confirmed_at: float | None = None
        self.register_scripts(redis)

    @classmethod
    def register_scripts(cls, client: redis.asyncio.Redis) -> None:
        # Registered once per process, like redis-py's Lock: each call passes its own ``client=``.
        if cls.lua_release is None:
            cls.lua_release = client.register_script(cls.LUA_RELEASE_SCRIPT)
        if cls.lua_refresh is None:
            cls.lua_refresh = client.register_script(cls.LUA_REFRESH_SCRIPT)

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
        ``confirmed_at + ttl``. None before the lock was acquired."""
        return self._confirmed_at

    @property
    def _ttl_ms(self) -> int:
        return max(1, round(self._ttl * 1000))

    async def acquire(self) -> bool:
        """Take the lock if no connection of this user holds it. Raises `LockUnavailable`."""
        sent_at = time.monotonic()
        acquired = await self._call("acquire", self.redis.set(self._key, self._token, nx=True, px=self._ttl_ms))
        if acquired:
            self._confirmed_at = sent_at
        return bool(acquired)

    async def refresh(self) -> bool:
        """Reset the TTL if we still own the lock; False once it expired or another token replaced ours.
        Raises `LockUnavailable`."""
        assert self.lua_refresh is not None
        sent_at = time.monotonic()
        owned = await self._call(
            "refresh", self.lua_refresh(keys=[self._key], args=[self._token, self._ttl_ms], client=self.redis)
        )
        if owned:
            self._confirmed_at = sent_at
        return bool(owned)

    async def release(self) -> bool:
        """Delete the key if it still holds our token; True if it did. Safe to repeat. Raises `LockUnavailable`."""
        assert self.lua_release is not None
        released = await self._call(
            "release", self.lua_release(keys=[self._key], args=[self._token], client=self.redis)
        )
        return bool(released)

    async def _call(self, action: str, command: Awaitable[T]) -> T:
        try:
            return await command
        except redis.exceptions.RedisError as error:
            raise LockUnavailable(f"cannot {action} {self._key}") from error


async def hold(lock: ConnectionLock, on_lost: Callable[[LockLossReason], Awaitable[None]]) -> None:
    """Keep an acquired *lock* alive until it is lost, then await ``on_lost(reason)`` once and return.

    Run it as its own task and cancel it on disconnect; it never releases the lock (the caller does).
    Each refresh is bounded by the give-up deadline, so a hung Redis cannot delay the UNREACHABLE report.
    """
    task = asyncio.current_task()
    assert task is not None
    cancels_at_start = task.cancelling()
    retry_interval = min(UNREACHABLE_RETRY_SECONDS, lock.refresh_interval)
    retry_at: float | None = None
    while True:
        confirmed_at = lock.confirmed_at
        if confirmed_at is None:
            raise RuntimeError("hold() needs an acquired lock")
        give_up_at = confirmed_at + lock.ttl * (1 - SAFETY_MARGIN_FRACTION)
        next_attempt = confirmed_at + lock.refresh_interval if retry_at is None else retry_at
        await asyncio.sleep(max(0.0, min(next_attempt, give_up_at) - time.monotonic()))
        remaining = give_up_at - time.monotonic()
        if remaining <= 0:
            await on_lost(LockLossReason.UNREACHABLE)
            return
        owned: bool | None
        try:
            async with asyncio.timeout(remaining):
                owned = await lock.refresh()
        except (LockUnavailable, TimeoutError):
            owned = None
        if task.cancelling() > cancels_at_start:
            # On Python 3.11, asyncio.wait_for (redis-py's socket timeout) can swallow a cancellation that arrives
            # as the command completes (python/cpython#86296): honour it, or the cancelled keeper would live on.
            raise asyncio.CancelledError
        if owned is False:
            await on_lost(LockLossReason.LOST)
            return
        retry_at = time.monotonic() + retry_interval if owned is None else None


class LocalLocks:
    """One connection per user within this process, for fail-open mode while Redis is unreachable."""

    def __init__(self) -> None:
        self._tokens: dict[int, str] = {}
        self._mutex = threading.Lock()

    def try_acquire(self, user_id: int, token: str) -> bool:
        with self._mutex:
            if user_id in self._tokens:
                return False
            self._tokens[user_id] = token
            return True

    def release(self, user_id: int, token: str) -> bool:
        """Forget the user's entry if *token* owns it; True if it did. Safe to repeat."""
        with self._mutex:
            if self._tokens.get(user_id) != token:
                return False
            del self._tokens[user_id]
            return True


local_locks = LocalLocks()
