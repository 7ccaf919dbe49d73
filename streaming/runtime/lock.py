"""The one-connection-per-user lock: a `Lease` on a key per user, holding a token unique to the connection, and the
connection's live record beside it.

The record (what an operator sees of the connection: ``streaming.gateway.live_connections``) is written by the same
script call that takes the lock, rewritten by each refresh and deleted by the release, so it lives exactly as long
as the lock and costs admission no round trip of its own; a process that dies leaves both to expire together.

`LocalLocks` is the per-process fallback for fail-open mode (``STREAM_LOCK_FAILURE_MODE=open``).
"""

from __future__ import annotations

import functools
import hashlib
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import redis.asyncio
import redis.exceptions

from streaming.exceptions import LeaseUnavailable
from streaming.runtime.lease import Lease

KEY_PREFIX = "cm:stream-lock:user:"
RECORD_KEY_PREFIX = "cm:stream-connection:user:"
DEFAULT_TTL_SECONDS = 30.0


def no_record() -> bytes:
    return b"{}"


class ConnectionLock(Lease):
    """The lock of one connection for one user. Create one per connection; never share it between connections.

    *describe* returns the connection's record (JSON bytes), called at the acquire and at each refresh.
    """

    # KEYS[i]: lock keys, KEYS[n + i]: their record keys. ARGV[i]: the token of lock i; ARGV[n + i]: its TTL in
    # milliseconds; ARGV[2n + i]: its record. Each lock taken only if nobody holds it, its record written with the
    # same TTL. Returns 1 (taken) or 0 for each lock, in order.
    LUA_ACQUIRE_MANY_SCRIPT = """
        local count = #KEYS / 2
        local taken = {}
        for i = 1, count do
            if redis.call('set', KEYS[i], ARGV[i], 'nx', 'px', ARGV[count + i]) then
                redis.call('set', KEYS[count + i], ARGV[2 * count + i], 'px', ARGV[count + i])
                taken[i] = 1
            else
                taken[i] = 0
            end
        end
        return taken
    """

    # KEYS[i]: lock keys, KEYS[n + i]: their record keys. ARGV[i]: the token of lock i. Each lock checked on its
    # own: deleted with its record only while it holds its token. Returns 1 (released) or 0 for each lock, in order.
    LUA_RELEASE_MANY_SCRIPT = """
        local count = #KEYS / 2
        local released = {}
        for i = 1, count do
            if redis.call('get', KEYS[i]) == ARGV[i] then
                redis.call('del', KEYS[i], KEYS[count + i])
                released[i] = 1
            else
                released[i] = 0
            end
        end
        return released
    """

    # KEYS[i]: lock keys, KEYS[n + i]: their record keys. ARGV[i]: the token of lock i; ARGV[n + i]: its TTL in
    # milliseconds; ARGV[2n + i]: its record, or "" if unchanged since the last refresh. Each lock checked on its
    # own: if held, its TTL is reset and its record rewritten (or its TTL reset) with the same TTL. Returns 1 (held)
    # or 0 for each lock, in order.
    LUA_REFRESH_MANY_SCRIPT = """
        local count = #KEYS / 2
        local held = {}
        for i = 1, count do
            if redis.call('get', KEYS[i]) == ARGV[i] then
                redis.call('pexpire', KEYS[i], ARGV[count + i])
                if ARGV[2 * count + i] == '' then
                    redis.call('pexpire', KEYS[count + i], ARGV[count + i])
                else
                    redis.call('set', KEYS[count + i], ARGV[2 * count + i], 'px', ARGV[count + i])
                end
                held[i] = 1
            else
                held[i] = 0
            end
        end
        return held
    """

    def __init__(
        self, redis: redis.asyncio.Redis, user_id: int, ttl: float = DEFAULT_TTL_SECONDS,
        describe: Callable[[], bytes] = no_record,
    ) -> None:
        super().__init__(redis, f"{KEY_PREFIX}{user_id}", ttl)
        self.user_id = user_id
        self.record_key = f"{RECORD_KEY_PREFIX}{user_id}"
        self.describe = describe
        self._written = b""  # the record as Redis holds it (last confirmed write)
        self._sending: bytes | None = None  # the record sent by a refresh not confirmed yet

    async def acquire(self) -> bool:
        """Take the lock if nobody holds it, writing the record with it. Raises `LeaseUnavailable`."""
        (acquired,) = await self.acquire_together(self.redis, [self])
        return acquired

    async def refresh(self) -> bool:
        """Reset the TTL (and rewrite the record) if we still hold the lock. Raises `LeaseUnavailable`."""
        sent_at, (owned,) = await self.refresh_together(self.redis, [self])
        if owned:
            self.confirm(sent_at)
        return owned

    async def release(self) -> bool:
        """Delete the lock and its record if the lock still holds our token; True if it did. Safe to repeat.
        Raises `LeaseUnavailable`."""
        (released,) = await self.release_together(self.redis, [self])
        return released

    @classmethod
    async def refresh_together(
        cls, client: redis.asyncio.Redis, locks: Sequence[ConnectionLock]
    ) -> tuple[float, list[bool]]:
        """Refresh every lock in *locks* (and its record) in one script call, each checked on its own as by
        ``refresh``: when it was sent, and True for each still held. Raises `LeaseUnavailable` when the call fails.

        One call rather than a pipeline of one per lock: encoding, sending and parsing a thousand commands was the
        keeper's cost. The locks are left as they are: the caller confirms those it still keeps (`confirm`), since
        a call it gave up on may yet complete, after the locks were reported lost.
        """
        sent_at = time.monotonic()
        keys, arguments = cls._refresh_many_arguments(locks)
        replies = await _run_script(client, REFRESH_MANY, keys, arguments, f"refresh {len(locks)} locks")
        return sent_at, [reply == 1 for reply in replies]

    @classmethod
    async def acquire_together(cls, client: redis.asyncio.Redis, locks: Sequence[ConnectionLock]) -> list[bool]:
        """Take every lock in *locks* nobody holds (writing its record) in one script call, each on its own as by
        ``acquire``: True for each taken, which is then confirmed. Raises `LeaseUnavailable` when the call fails."""
        sent_at = time.monotonic()
        records = [lock.describe() for lock in locks]
        keys = [lock.key for lock in locks] + [lock.record_key for lock in locks]
        arguments: list[str | int | bytes] = [lock.token for lock in locks]
        arguments += [lock._ttl_ms for lock in locks]
        arguments += records
        replies = await _run_script(client, ACQUIRE_MANY, keys, arguments, f"acquire {len(locks)} locks")
        taken = [reply == 1 for reply in replies]
        for lock, record, was_taken in zip(locks, records, taken, strict=True):
            if was_taken:
                lock._written = record
                lock.confirm(sent_at)
        return taken

    @classmethod
    async def release_together(cls, client: redis.asyncio.Redis, locks: Sequence[ConnectionLock]) -> list[bool]:
        """Release every lock in *locks* (and its record) in one script call, each checked on its own as by
        ``release``: True for each that was still ours. Raises `LeaseUnavailable` when the call fails."""
        keys = [lock.key for lock in locks] + [lock.record_key for lock in locks]
        replies = await _run_script(client, RELEASE_MANY, keys, [lock.token for lock in locks],
                                    f"release {len(locks)} locks")
        return [reply == 1 for reply in replies]

    @staticmethod
    def _refresh_many_arguments(locks: Sequence[ConnectionLock]) -> tuple[list[str], list[str | int | bytes]]:
        """KEYS and ARGV of ``LUA_REFRESH_MANY_SCRIPT`` for *locks*."""
        keys = [lock.key for lock in locks] + [lock.record_key for lock in locks]
        arguments: list[str | int | bytes] = [lock.token for lock in locks]
        arguments += [lock._ttl_ms for lock in locks]
        arguments += [lock._record_if_changed() for lock in locks]
        return keys, arguments

    def _record_if_changed(self) -> bytes:
        """The record, or b"" when it is what Redis already holds: an idle connection's refresh then sends no
        record (10,000 idle connections rewrote 2 MB of unchanged records every refresh interval). What is sent
        counts as held by Redis once the refresh is confirmed (``confirm``), so a lost round trip sends it again."""
        record = self.describe()
        if record == self._written:
            return b""
        self._sending = record
        return record

    def confirm(self, sent_at: float) -> None:
        super().confirm(sent_at)
        if self._sending is not None:
            self._written, self._sending = self._sending, None


@dataclass(frozen=True)
class Script:
    """A Lua script called by its SHA1 (``EVALSHA``): the batch calls send thousands of keys, not the script too."""

    source: str

    @functools.cached_property
    def sha(self) -> str:
        return hashlib.sha1(self.source.encode()).hexdigest()


ACQUIRE_MANY = Script(ConnectionLock.LUA_ACQUIRE_MANY_SCRIPT)
REFRESH_MANY = Script(ConnectionLock.LUA_REFRESH_MANY_SCRIPT)
RELEASE_MANY = Script(ConnectionLock.LUA_RELEASE_MANY_SCRIPT)


async def _run_script(
    client: redis.asyncio.Redis, script: Script, keys: Sequence[str], arguments: Sequence[str | int | bytes],
    action: str,
) -> list[int]:
    """*script*'s replies for *keys* and *arguments*. The rare ``NOSCRIPT`` (Redis restarted) loads it and
    retries once. Raises `LeaseUnavailable` (naming *action*) when Redis cannot run it."""
    try:
        try:
            return await client.evalsha(script.sha, len(keys), *keys, *arguments)
        except redis.exceptions.NoScriptError:
            await client.script_load(script.source)
            return await client.evalsha(script.sha, len(keys), *keys, *arguments)
    except redis.exceptions.RedisError as error:
        raise LeaseUnavailable(f"cannot {action}") from error


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
