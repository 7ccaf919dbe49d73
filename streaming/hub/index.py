"""Which clients get which upstream events, and the frames that carry them: plain data, no I/O.

Clients with identical subscriptions form one ``Group``, so an event is matched and appended once per group, not
once per client: a thousand ``T.*`` subscribers cost the same to route as one. The index maps each event type to
the groups that take all of it (wildcard) and each (event type, symbol) to the groups that take just that symbol; a
group with a wildcard is never indexed under that event type's symbols, so nobody gets an event twice.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Set as AbstractSet
from dataclasses import dataclass, field
from typing import Generic, NamedTuple, TypeVar

WILDCARD = "*"
MAX_FRAME_BYTES = 1_000_000  # official Go clients refuse larger frames
FRAME_OVERHEAD = 2  # the brackets of the JSON array

C = TypeVar("C", bound=Hashable)  # a client


class Subscription(NamedTuple):
    """One subscription item, e.g. ``T.AAPL`` or ``AM.*``; ``symbol`` is ``*`` for every symbol.

    A named tuple rather than a frozen dataclass: items are hashed on every change and every routed event, and a
    tuple hashes in C (a dataclass's ``__hash__`` was the top self-time entry of a 5,000-item subscribe).
    """

    event_type: str
    symbol: str

    def __str__(self) -> str:
        return f"{self.event_type}.{self.symbol}"

    @property
    def is_wildcard(self) -> bool:
        return self.symbol == WILDCARD


@dataclass(eq=False, slots=True)
class Group(Generic[C]):
    """The clients subscribed to exactly ``items``, and the events routed to them from the current frame.

    ``key`` is an order-independent sum of the items' hashes, kept up to date item by item, so that a group can be
    found by its items, and change its items, without hashing the whole set again.
    """

    items: set[Subscription] = field(default_factory=set)
    key: int = 0
    members: set[C] = field(default_factory=set)
    batch: list[bytes] = field(default_factory=list)
    wildcard_types: set[str] = field(default_factory=set)


def _item_key(item: Subscription) -> int:
    return hash(item) & KEY_MASK


KEY_MASK = (1 << 64) - 1


class SubscriptionIndex(Generic[C]):
    """Subscriptions of every client of one market, indexed for routing.

    Changing a client's subscriptions costs in proportion to the change, not to what the client or the market
    already holds: a client alone in its group changes the group in place; a client leaving a shared group takes a
    copy once. ``add`` and ``discard`` return the items whose reference count went from zero to one or back, which
    is all the upstream needs to hear about.
    """

    def __init__(self) -> None:
        self._group_of: dict[C, Group[C]] = {}
        self._groups: dict[int, list[Group[C]]] = {}
        self._wildcard_groups: dict[str, set[Group[C]]] = {}
        self._symbol_groups: dict[tuple[str, str], set[Group[C]]] = {}
        self._item_counts: dict[Subscription, int] = {}
        self._group_count = 0

    # --- subscriptions --------------------------------------------------------------------------------------------

    def subscriptions_of(self, client: C) -> AbstractSet[Subscription]:
        """The client's items (a live view: do not modify it)."""
        group = self._group_of.get(client)
        return group.items if group is not None else frozenset()

    def clients(self) -> list[C]:
        return list(self._group_of)

    def group_count(self) -> int:
        return self._group_count

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
        groups = set(self._wildcard_groups.get(item.event_type, ()))
        if not item.is_wildcard:
            groups |= self._symbol_groups.get((item.event_type, item.symbol), set())
        return [client for group in groups for client in group.members]

    def upstream_items(self) -> AbstractSet[Subscription]:
        """Every item some client holds: what the upstream must be subscribed to (a live view)."""
        return self._item_counts.keys()

    def add(self, client: C, items: Iterable[Subscription]) -> list[Subscription]:
        """Add *items* to *client*'s subscriptions; returns those no client held before."""
        group = self._group_of.get(client)
        new = [item for item in dict.fromkeys(items) if group is None or item not in group.items]
        if not new:
            return []
        group = self._own_group(client, group)
        for item in new:
            self._add_item(group, item)
        self._settle(client, group)
        return self._count(new, 1)

    def discard(self, client: C, items: Iterable[Subscription]) -> list[Subscription]:
        """Remove *items* from *client*'s subscriptions; returns those no client holds any more."""
        group = self._group_of.get(client)
        if group is None:
            return []
        gone = [item for item in dict.fromkeys(items) if item in group.items]
        if not gone:
            return []
        if len(gone) == len(group.items):
            return self.remove(client)
        group = self._own_group(client, group)
        for item in gone:
            self._discard_item(group, item)
        self._settle(client, group)
        return self._count(gone, -1)

    def remove(self, client: C) -> list[Subscription]:
        """Forget *client*; returns the items no client holds any more."""
        group = self._group_of.pop(client, None)
        if group is None:
            return []
        group.members.discard(client)
        if not group.members:
            self._drop_group(group)
        return self._count(group.items, -1)

    def _count(self, items: Iterable[Subscription], change: int) -> list[Subscription]:
        """Apply *change* to each item's reference count; the items whose count left or reached zero."""
        counts = self._item_counts
        edges = []
        for item in items:
            count = counts.get(item, 0) + change
            if count:
                counts[item] = count
                if count == 1 and change > 0:
                    edges.append(item)
            else:
                del counts[item]
                edges.append(item)
        return edges

    def _own_group(self, client: C, group: Group[C] | None) -> Group[C]:
        """A group that *client* is the only member of, to change in place: its own, or a copy it leaves with."""
        if group is not None and len(group.members) == 1:
            self._unfile(group)
            return group
        mine: Group[C] = Group()
        if group is not None:
            group.members.discard(client)
            for item in group.items:
                self._add_item(mine, item)
        mine.members.add(client)
        self._group_of[client] = mine
        return mine

    def _settle(self, client: C, group: Group[C]) -> None:
        """File a changed group under its new key, or move its one client into an equal group that exists."""
        for existing in self._groups.get(group.key, ()):
            if existing.items == group.items:
                self._drop_indexes(group)
                existing.members.add(client)
                self._group_of[client] = existing
                return
        self._groups.setdefault(group.key, []).append(group)
        self._group_count += 1

    def _unfile(self, group: Group[C]) -> None:
        groups = self._groups.get(group.key)
        if groups is not None and group in groups:
            groups.remove(group)
            self._group_count -= 1
            if not groups:
                del self._groups[group.key]

    def _add_item(self, group: Group[C], item: Subscription) -> None:
        group.items.add(item)
        group.key = (group.key + _item_key(item)) & KEY_MASK
        if item.is_wildcard:
            group.wildcard_types.add(item.event_type)
            self._wildcard_groups.setdefault(item.event_type, set()).add(group)
            for held in group.items:  # its symbols of that type are now covered by the wildcard
                if held.event_type == item.event_type and not held.is_wildcard:
                    self._unindex_symbol(group, held)
        elif item.event_type not in group.wildcard_types:
            self._symbol_groups.setdefault((item.event_type, item.symbol), set()).add(group)

    def _discard_item(self, group: Group[C], item: Subscription) -> None:
        group.items.discard(item)
        group.key = (group.key - _item_key(item)) & KEY_MASK
        if item.is_wildcard:
            group.wildcard_types.discard(item.event_type)
            self._unindex_wildcard(group, item.event_type)
            for held in group.items:  # its symbols of that type are routed one by one again
                if held.event_type == item.event_type:
                    self._symbol_groups.setdefault((held.event_type, held.symbol), set()).add(group)
        elif item.event_type not in group.wildcard_types:
            self._unindex_symbol(group, item)

    def _drop_group(self, group: Group[C]) -> None:
        self._unfile(group)
        self._drop_indexes(group)

    def _drop_indexes(self, group: Group[C]) -> None:
        for event_type in group.wildcard_types:
            self._unindex_wildcard(group, event_type)
        for item in group.items:
            if not item.is_wildcard and item.event_type not in group.wildcard_types:
                self._unindex_symbol(group, item)

    def _unindex_wildcard(self, group: Group[C], event_type: str) -> None:
        groups = self._wildcard_groups.get(event_type)
        if groups is not None:
            groups.discard(group)
            if not groups:
                del self._wildcard_groups[event_type]

    def _unindex_symbol(self, group: Group[C], item: Subscription) -> None:
        key = (item.event_type, item.symbol)
        groups = self._symbol_groups.get(key)
        if groups is not None:
            groups.discard(group)
            if not groups:
                del self._symbol_groups[key]

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
