"""A token bucket, so that what one client sends (messages, items, pings) costs the gateway a bounded amount of work."""

from __future__ import annotations

import time
from collections.abc import Callable


class TokenBucket:
    """Allows ``rate`` units per second on average, bursts of up to ``burst``."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._updated = clock()

    def take(self, count: int = 1) -> bool:
        """Spend *count* units if the bucket holds them all; otherwise spend nothing and return False."""
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate)
        self._updated = now
        if self._tokens >= count:
            self._tokens -= count
            return True
        return False
