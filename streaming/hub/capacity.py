"""What one connection to the feed may hold: the feed's own limits, counted over every client it serves. Plain data.

The feed limits some subscriptions per connection, whoever asks for them: option quotes to 1,000 contracts. The hub
shares one connection among all the clients of its market, so the limit is shared too: each client's plan cap bounds
that client alone, and without a shared count several clients together would send the feed a subscribe it refuses
(after which the clients would wait for acks that never come). ``UpstreamCapacity`` counts the distinct items of each
limited event type that some client holds or is subscribing, and refuses a request that would take the count over.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from streaming.codes import MESSAGE_SUBSCRIPTION_LIMIT
from streaming.hub.index import Subscription


class UpstreamCapacity:
    """The items of each limited event type counted against one feed connection's limit."""

    def __init__(self, limits: Mapping[str, int]) -> None:
        self._limits = dict(limits)
        self._held: dict[str, set[Subscription]] = {event_type: set() for event_type in limits}

    def limited(self, items: Iterable[Subscription]) -> list[Subscription]:
        """The items among *items* whose event type the feed limits."""
        limits = self._limits
        return [item for item in items if item.event_type in limits] if limits else []

    def held(self, event_type: str) -> int:
        return len(self._held.get(event_type, ()))

    def claim(self, items: Iterable[Subscription]) -> str | None:
        """Count the limited *items* as held; if that would take an event type over its limit, count none of them
        and return why (in the feed's words, then the counts)."""
        new: dict[str, set[Subscription]] = {}
        for item in self.limited(items):
            if item not in self._held[item.event_type]:
                new.setdefault(item.event_type, set()).add(item)
        for event_type, added in new.items():
            held, limit = len(self._held[event_type]), self._limits[event_type]
            if held + len(added) > limit:
                return (
                    f"{MESSAGE_SUBSCRIPTION_LIMIT} (the feed allows {limit} {event_type} items per connection, which "
                    f"every client of this gateway shares: {held} held + {len(added)} new; nothing was subscribed)"
                )
        for event_type, added in new.items():
            self._held[event_type] |= added
        return None

    def release(self, item: Subscription) -> None:
        """Nobody holds or is subscribing *item* any more."""
        held = self._held.get(item.event_type)
        if held is not None:
            held.discard(item)
