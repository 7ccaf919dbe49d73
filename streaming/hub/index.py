"""Which clients get which upstream events, and the frames that carry them: plain data, no I/O.

Clients with identical subscriptions form one ``Group``, so an event is matched and appended once per group, not
once per client: a thousand ``T.*`` subscribers cost the same to route as one. The index maps each event type to
the groups that take all of it (wildcard) and each (event type, symbol) to the groups that take just that symbol; a
group with a wildcard is never indexed under that event type's symbols, so nobody gets an event twice.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

WILDCARD = "*"
MAX_FRAME_BYTES = 1_000_000  # official Go clients refuse larger frames
FRAME_OVERHEAD = 2  # the brackets of the JSON array

C = TypeVar("C", bound=Hashable)  # a client
K = TypeVar("K")
V = TypeVar("V")


@dataclass(frozen=True, slots=True)
class Subscription:
    """One subscription item, e.g. ``T.AAPL`` or ``AM.*``; ``symbol`` is ``*`` for every symbol."""

    event_type: str
    symbol: str

    def __str__(self) -> str:
        return f"{self.event_type}.{self.symbol}"

    @property
    def is_wildcard(self) -> bool:
        return self.symbol == WILDCARD


@dataclass(eq=False, slots=True)
class Group(Generic[C]):
    """The clients subscribed to exactly ``items``, and the events routed to them from the current frame."""

    items: frozenset[Subscription]
    members: set[C] = field(default_factory=set)
    batch: list[bytes] = field(default_factory=list)


class SubscriptionIndex(Generic[C]):
    """Subscriptions of every client of one market, indexed for routing."""

    def __init__(self) -> None:
        self._group_of: dict[C, Group[C]] = {}
        self._groups: dict[frozenset[Subscription], Group[C]] = {}
        self._wildcard_groups: dict[str, set[Group[C]]] = {}
        self._symbol_groups: dict[tuple[str, str], set[Group[C]]] = {}
        self._item_counts: dict[Subscription, int] = {}

    # --- subscriptions --------------------------------------------------------------------------------------------

    def subscriptions_of(self, client: C) -> frozenset[Subscription]:
        group = self._group_of.get(client)
        return group.items if group is not None else frozenset()

    def clients(self) -> list[C]:
        return list(self._group_of)

    def group_count(self) -> int:
        return len(self._groups)

    def groups_taking_all(self, event_types: Iterable[str]) -> list[Group[C]]:
        """The groups holding the wildcard of each of *event_types*: they take every event of such a frame."""
        candidates: set[Group[C]] | None = None
        for event_type in event_types:
            groups = self._wildcard_groups.get(event_type)
            if not groups:
                return []
            candidates = set(groups) if candidates is None else candidates & groups
            if not candidates:
                return []
        return list(candidates or ())

    def clients_of(self, item: Subscription) -> list[C]:
        """Clients whose subscriptions deliver *item*'s events (the item itself or its event type's wildcard)."""
        wildcard = Subscription(item.event_type, WILDCARD)
        return [client for client, group in self._group_of.items() if item in group.items or wildcard in group.items]

    def upstream_items(self) -> set[Subscription]:
        """Every item some client holds: what the upstream must be subscribed to."""
        return set(self._item_counts)

    def set_subscriptions(self, client: C, items: Iterable[Subscription]) -> None:
        """Replace *client*'s subscriptions (an empty set removes the client)."""
        new_items = frozenset(items)
        old = self._group_of.pop(client, None)
        if old is not None:
            self._leave(client, old)
        if new_items:
            group = self._groups.get(new_items)
            if group is None:
                group = self._create_group(new_items)
            group.members.add(client)
            self._group_of[client] = group
            for item in new_items:
                self._item_counts[item] = self._item_counts.get(item, 0) + 1

    def remove(self, client: C) -> None:
        self.set_subscriptions(client, ())

    def _leave(self, client: C, group: Group[C]) -> None:
        group.members.discard(client)
        for item in group.items:
            remaining = self._item_counts[item] - 1
            if remaining:
                self._item_counts[item] = remaining
            else:
                del self._item_counts[item]
        if not group.members:
            self._drop_group(group)

    def _create_group(self, items: frozenset[Subscription]) -> Group[C]:
        group: Group[C] = Group(items)
        self._groups[items] = group
        wildcard_types = {item.event_type for item in items if item.is_wildcard}
        for item in items:
            if item.is_wildcard:
                self._wildcard_groups.setdefault(item.event_type, set()).add(group)
            elif item.event_type not in wildcard_types:
                self._symbol_groups.setdefault((item.event_type, item.symbol), set()).add(group)
        return group

    def _drop_group(self, group: Group[C]) -> None:
        del self._groups[group.items]
        for item in group.items:
            if item.is_wildcard:
                _discard(self._wildcard_groups, item.event_type, group)
            else:
                _discard(self._symbol_groups, (item.event_type, item.symbol), group)

    # --- routing --------------------------------------------------------------------------------------------------

    def route(self, events: Iterable[tuple[str, str, bytes]], exclude: Iterable[Group[C]] = ()) -> list[Group[C]]:
        """Append each (event type, symbol, encoded event) to the batch of every group that takes it, except the
        groups in *exclude* (already served).

        Returns the groups that received something, in first-touched order; the caller sends and clears batches.
        """
        touched: list[Group[C]] = []
        wildcard_groups = self._wildcard_groups
        symbol_groups = self._symbol_groups
        skipped = set(exclude)
        for event_type, symbol, encoded in events:
            for group in wildcard_groups.get(event_type, ()):
                if skipped and group in skipped:
                    continue
                if not group.batch:
                    touched.append(group)
                group.batch.append(encoded)
            for group in symbol_groups.get((event_type, symbol), ()):
                if not group.batch:
                    touched.append(group)
                group.batch.append(encoded)
        return touched


def _discard(index: dict[K, set[V]], key: K, value: V) -> None:
    """Remove *value* from the set at *key*, and the set once empty."""
    values = index.get(key)
    if values is not None:
        values.discard(value)
        if not values:
            del index[key]


def encode_frames(events: list[bytes], limit: int = MAX_FRAME_BYTES) -> list[bytes]:
    """Join encoded events into JSON-array text frames (UTF-8), each under *limit* bytes, keeping their order."""
    frames: list[bytes] = []
    start = 0
    size = FRAME_OVERHEAD
    for position, event in enumerate(events):
        added = len(event) + (1 if position > start else 0)
        if position > start and size + added >= limit:
            frames.append(_join(events[start:position]))
            start, size = position, FRAME_OVERHEAD + len(event)
        else:
            size += added
    if start < len(events):
        frames.append(_join(events[start:]))
    return frames


def _join(events: list[bytes]) -> bytes:
    return b"[" + b",".join(events) + b"]"
