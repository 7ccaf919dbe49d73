"""A token bucket, so that what one client sends (messages, items, pings) costs the gateway a bounded amount of work."""

from __future__ import annotations

import time


class TokenBucket:
    """Allows ``rate`` units per second on average, bursts of up to ``burst``."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._updated = time.monotonic()

    def take(self, count: int = 1) -> bool:
        """Spend *count* units if the bucket holds them all; otherwise spend nothing and return False."""
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate)
        self._updated = now
        if self._tokens >= count:
            self._tokens -= count
            return True
        return False
