"""The relay's bookkeeping of what gateway processes registered and of its upstream subscriptions. Pure code, no I/O.

The relay subscribes upstream to the union of what gateway sources registered, kept up to date change by change:
`SourceItems` counts, per item, the sources holding it, so a change costs in proportion to its own items, never to the
thousands already held. `UpstreamSubscriptions` subscribes new items at once and unsubscribes items nobody needs any
more only after a grace period (a client that resubscribes a moment later does not cost an upstream round trip). An
item counts as confirmed once the upstream has answered every subscribe and unsubscribe sent for it, so a gateway's
request is acked only when the item's data is flowing.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable


class SourceItems:
    """The items each gateway source registered, and how many sources hold each item.

    ``add``, ``remove`` and ``drop`` return the items whose holder count crossed zero: the only ones that can change
    what the relay needs from the upstream. Adding what a source holds, or removing what it does not, changes nothing,
    so replaying a change the relay already saw (in its start-up snapshot) is harmless.
    """

    def __init__(self) -> None:
        self._by_source: dict[str, set[str]] = {}
        self._holders: Counter[str] = Counter()

    def add(self, source: str, items: Iterable[str]) -> list[str]:
        """*source* now holds *items*: those nobody held before."""
        held = self._by_source.setdefault(source, set())
        first = []
        for item in items:
            if item not in held:
                held.add(item)
                self._holders[item] += 1
                if self._holders[item] == 1:
                    first.append(item)
        return first

    def remove(self, source: str, items: Iterable[str]) -> list[str]:
        """*source* no longer holds *items*: those nobody holds any more."""
        held = self._by_source.get(source)
        if held is None:
            return []
        last = []
        for item in items:
            if item in held:
                held.discard(item)
                last.extend(self._release(item))
        return last

    def drop(self, source: str) -> list[str]:
        """*source* is gone (released or expired): the items nobody holds any more."""
        last = []
        for item in self._by_source.pop(source, ()):
            last.extend(self._release(item))
        return last

    def sources(self) -> set[str]:
        return set(self._by_source)

    def _release(self, item: str) -> list[str]:
        self._holders[item] -= 1
        if self._holders[item]:
            return []
        del self._holders[item]
        return [item]


class UpstreamSubscriptions:
    """One upstream session's subscriptions, the upstream acks still owed, and the gateway requests waiting."""

    def __init__(self, grace_seconds: float) -> None:
        self.grace_seconds = grace_seconds
        self.subscribed: set[str] = set()
        self._unneeded_since: dict[str, float] = {}  # insertion order is time order: `due` stops at the first not due
        self._unanswered: Counter[str] = Counter()
        self._waiting: defaultdict[str, set[str]] = defaultdict(set)

    def need(self, items: Iterable[str]) -> list[str]:
        """Some source holds *items* now: those the caller must subscribe upstream (the others are subscribed
        already, or waiting out their grace, which this cancels). They count as sent and unanswered."""
        added = []
        for item in items:
            self._unneeded_since.pop(item, None)
            if item not in self.subscribed:
                self.subscribed.add(item)
                self._unanswered[item] += 1
                added.append(item)
        return added

    def unneed(self, items: Iterable[str], now: float) -> None:
        """No source holds *items* any more: they become `due` for unsubscribing after the grace period."""
        for item in items:
            if item in self.subscribed:
                self._unneeded_since.setdefault(item, now)

    def due(self, now: float) -> list[str]:
        """The items whose grace is over: the caller must unsubscribe them upstream; they count as sent and
        unanswered, and requests still waiting for them are not acked."""
        removed = []
        for item, since in self._unneeded_since.items():
            if now - since < self.grace_seconds:
                break
            removed.append(item)
        for item in removed:
            del self._unneeded_since[item]
            self._waiting.pop(item, None)
            self.subscribed.discard(item)
            self._unanswered[item] += 1
        return removed

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
