"""The one-connection-per-user lock: a `Lease` on a key per user, holding a token unique to the connection.

`LocalLocks` is the per-process fallback for fail-open mode (``STREAM_LOCK_FAILURE_MODE=open``).
"""

from __future__ import annotations

import threading

import redis.asyncio

from streaming.runtime.lease import Lease

KEY_PREFIX = "cm:stream-lock:user:"
DEFAULT_TTL_SECONDS = 30.0


class ConnectionLock(Lease):
    """The lock of one connection for one user. Create one per connection; never share it between connections."""

    def __init__(self, redis: redis.asyncio.Redis, user_id: int, ttl: float = DEFAULT_TTL_SECONDS) -> None:
        super().__init__(redis, f"{KEY_PREFIX}{user_id}", ttl)
        self.user_id = user_id


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
