"""Exponential backoff with full jitter between upstream connection attempts.

A flapping upstream (accepts, then drops at once) must not be hammered: the delay only resets after a connection
has stayed up for ``stable_after`` seconds, and the random spread keeps many gateway processes from reconnecting
in lockstep.
"""

from __future__ import annotations

import asyncio
import random
import time


class Backoff:
    def __init__(self, base: float = 0.5, cap: float = 30.0, stable_after: float = 10.0) -> None:
        self.base = base
        self.cap = cap
        self.stable_after = stable_after
        self.failures = 0
        self._next_attempt = 0.0
        self._random = random.Random()

    def delay(self) -> float:
        """Seconds until the next attempt is allowed."""
        return max(0.0, self._next_attempt - time.monotonic())

    async def wait(self) -> None:
        await asyncio.sleep(self.delay())

    def record_failure(self, connected_for: float = 0.0) -> None:
        """A connection failed to open, or was lost after *connected_for* seconds."""
        if connected_for >= self.stable_after:
            self.failures = 0
        ceiling = min(self.cap, self.base * 2**self.failures)
        self.failures += 1
        self._next_attempt = time.monotonic() + self._random.uniform(ceiling / 2, ceiling)
