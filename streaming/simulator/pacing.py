"""How many events a cluster owes its clients at each tick, for a configured rate in events per second.

The budget accrues continuously and is spent in whole events, so a rate of 1/s yields one event per second and a
rate of 500,000/s yields large batches. Debt is capped, so a stall (pause, slow consumer, overloaded machine) is
followed by at most a short burst, never by an attempt to catch up on everything missed.
"""

from __future__ import annotations

MAX_BATCH_EVENTS = 20_000
MAX_DEBT_SECONDS = 0.1


class RateBudget:
    """Events due since the last ``take``, at ``rate`` per second; ``rate`` 0 never makes anything due."""

    def __init__(self, rate: float, now: float) -> None:
        if rate < 0:
            raise ValueError("rate must be >= 0")
        self.rate = rate
        self._ceiling = max(1.0, rate * MAX_DEBT_SECONDS)
        self._due = 0.0
        self._last = now

    def take(self, now: float) -> int:
        """Whole events due at *now* (at most ``MAX_BATCH_EVENTS``); the remainder stays owed."""
        self._due = min(self._ceiling, self._due + self.rate * (now - self._last))
        self._last = now
        count = min(int(self._due), MAX_BATCH_EVENTS)
        self._due -= count
        return count

    def restart(self, now: float) -> None:
        """Forget the time since the last ``take`` (nothing accrues while the feed is paused or held back)."""
        self._last = now

    @property
    def behind(self) -> bool:
        """True when at least one more event is already due: the next tick should not wait."""
        return self._due >= 1.0
