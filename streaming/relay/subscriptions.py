"""The relay's bookkeeping of its upstream subscriptions: what to add and remove, and which requests it may ack.

The relay subscribes upstream to the union of what gateway processes registered: new items at once, items nobody
needs any more only after a grace period (a client that resubscribes a moment later does not cost an upstream
round trip). An item counts as confirmed once the upstream has answered every subscribe and unsubscribe sent for it,
so a gateway's request is acked only when the item's data is flowing. Pure code, no I/O.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable


class UpstreamSubscriptions:
    """One upstream session's subscriptions, the upstream acks still owed, and the gateway requests waiting."""

    def __init__(self, grace_seconds: float) -> None:
        self.grace_seconds = grace_seconds
        self.subscribed: set[str] = set()
        self._unneeded_since: dict[str, float] = {}
        self._unanswered: Counter[str] = Counter()
        self._waiting: defaultdict[str, set[str]] = defaultdict(set)

    def reconcile(self, wanted: set[str], now: float) -> tuple[set[str], set[str]]:
        """The items to subscribe and unsubscribe upstream so that it follows *wanted* (removals after the grace).

        The caller must send both; from now on the items count as sent and unanswered."""
        added = wanted - self.subscribed
        for item in wanted:
            self._unneeded_since.pop(item, None)
        for item in self.subscribed - wanted:
            self._unneeded_since.setdefault(item, now)
        removed = {item for item, since in self._unneeded_since.items() if now - since >= self.grace_seconds}
        for item in removed:
            del self._unneeded_since[item]
            self._waiting.pop(item, None)
        self.subscribed = (self.subscribed | added) - removed
        self._unanswered.update(added | removed)
        return added, removed

    def confirmed(self, item: str) -> bool:
        """Subscribed, and the upstream has answered everything sent for it: its data flows."""
        return item in self.subscribed and not self._unanswered[item]

    def request(self, token: str, items: Iterable[str]) -> list[str]:
        """A gateway registered *items* and asks for acks: those confirmed now; the others wait for the upstream
        (items the relay does not hold, because their registration is gone again, are not acked at all)."""
        ready = []
        for item in items:
            if self.confirmed(item):
                ready.append(item)
            elif item in self.subscribed:
                self._waiting[item].add(token)
        return ready

    def answered(self, items: Iterable[str]) -> dict[str, list[str]]:
        """The upstream acked a subscribe or unsubscribe of each of *items*: the requests this completes, per
        token, with their items now confirmed."""
        completed: defaultdict[str, list[str]] = defaultdict(list)
        for item in items:
            if self._unanswered[item]:
                self._unanswered[item] -= 1
                if not self._unanswered[item]:
                    del self._unanswered[item]
            if self.confirmed(item):
                for token in self._waiting.pop(item, ()):
                    completed[token].append(item)
        return dict(completed)
