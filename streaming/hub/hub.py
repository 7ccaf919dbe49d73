"""One shared upstream connection per market per process, multiplexed over every client of that market.

The real feed allows one connection per account and cluster, so the hub opens the upstream on the first
subscriber, keeps its subscriptions equal to the union of its clients' (reference-counted by the index), routes
each frame's events to the clients that asked for them, and closes the upstream a while after the last client
leaves. When the upstream cannot be opened or is lost, every client it serves is told and closed (1011); the
next attempt waits out an exponential backoff, so a flapping upstream is not hammered. What the feed limits per
connection (option quote contracts) is counted over all the clients (`UpstreamCapacity`): a subscribe that would
exceed it is refused before the feed hears of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Set as AbstractSet
from typing import Protocol

import orjson

from streaming import metrics
from streaming.codes import STATUS_EVENT, SUBSCRIBED_PREFIX, Status
from streaming.conf import stream_settings
from streaming.exceptions import SubscriptionRefused, UpstreamError, UpstreamUnavailable
from streaming.hub.capacity import UpstreamCapacity
from streaming.hub.index import MAX_FRAME_BYTES, Subscription, SubscriptionIndex, encode_frames
from streaming.hub.source import FeedConnection, open_upstream
from streaming.runtime.backoff import Backoff
from streaming.runtime.loop_local import LoopLocal
from streaming.runtime.tasks import BackgroundTasks

logger = logging.getLogger(__name__)

UPSTREAM_ACK_TIMEOUT_SECONDS = 5.0
YIELD_INTERVAL_SECONDS = 0.005  # longest the router runs through a backlog before the client writers get a turn


class Subscriber(Hashable, Protocol):
    """What the hub needs from a client connection (the index keys clients by identity)."""

    def deliver(self, frames: list[bytes], events: int, received_at: float) -> None:
        """Queue UTF-8 text frames carrying *events* events for the client (never blocks), from an upstream frame
        the hub received at ``time.monotonic()`` *received_at* (where the send path's delay starts)."""

    def upstream_failed(self, message: str) -> None:
        """The upstream is gone: tell the client and close it (1011)."""


class AckWaiter:
    """One subscribe call waiting for the upstream to acknowledge its items: a count and one future.

    A future per item made a 5,000-item subscribe create 5,000 futures and wait on all of them, on the event loop
    every other client of the process shares.
    """

    __slots__ = ("remaining", "acknowledged")

    def __init__(self) -> None:
        self.remaining = 0
        self.acknowledged = asyncio.get_running_loop().create_future()

    def item_acknowledged(self) -> None:
        self.remaining -= 1
        if not self.remaining:
            self.release()

    def release(self) -> None:
        """Stop waiting: everything was acknowledged, or the upstream connection is gone."""
        if not self.acknowledged.done():
            self.acknowledged.set_result(None)


class UpstreamHub:
    """The upstream of one market in this process, and the subscriptions of its clients."""

    _hubs: LoopLocal[dict[str, UpstreamHub]] = LoopLocal()

    def __init__(
        self, market: str, url: str, api_key: str, idle_seconds: float, silence_seconds: float = 0.0,
        item_limits: Mapping[str, int] | None = None,
    ) -> None:
        self.market = market
        self.url = url
        self.api_key = api_key
        self.idle_seconds = idle_seconds
        self.silence_seconds = silence_seconds
        self.index: SubscriptionIndex[Subscriber] = SubscriptionIndex()
        self.capacity = UpstreamCapacity(item_limits or {})
        self.backoff = Backoff()
        self.connected = asyncio.Event()
        self._connection: FeedConnection | None = None
        self._upstream_items: set[str] = set()  # what the upstream connection is subscribed to
        self._changed: set[Subscription] = set()  # items whose demand changed since the last sync
        self._sync_lock = asyncio.Lock()
        self._runner: asyncio.Task | None = None
        self._background = BackgroundTasks()
        self._wake = asyncio.Event()
        self._state_changed = asyncio.Event()
        self._pending_acks: dict[str, list[AckWaiter]] = {}  # items sent upstream, not yet acknowledged
        self._reserved: Counter[Subscription] = Counter()  # items of subscribe calls still in flight
        self._failures = 0
        self._last_failure = ""

    @classmethod
    def for_market(cls, market: str) -> UpstreamHub:
        """The hub of *market* for the running event loop (one per process in production)."""
        hubs = cls._hubs.get(dict)
        hub = hubs.get(market)
        if hub is None:
            settings = stream_settings()
            upstream = settings.upstream(market)
            if upstream is None:
                raise LookupError(f"no upstream configured for {market}")
            hub = hubs[market] = cls(
                market, upstream.url, upstream.api_key, settings.upstream_idle_seconds,
                settings.upstream_silence_seconds, settings.upstream_item_limits(market),
            )
        return hub

    # --- client side ----------------------------------------------------------------------------------------------

    def subscriptions_of(self, client: Subscriber) -> AbstractSet[Subscription]:
        return self.index.subscriptions_of(client)

    async def subscribe(
        self, client: Subscriber, items: list[Subscription], acknowledge: Callable[[], None]
    ) -> None:
        """Subscribe the upstream to *items* if needed, wait for its acknowledgement, then call *acknowledge* and add
        the items to the client's subscriptions in one step: the client's own acks precede every event they cover.

        Raises SubscriptionRefused, before anything changes, when the items would take the feed connection over
        its limits, and UpstreamError when the upstream could not be opened or was lost meanwhile.
        """
        self._claim(items)
        self._reserved.update(items)
        self._changed.update(items)
        try:
            failures = self._failures
            self._ensure_running()
            self._wake.set()
            while not self.connected.is_set():
                if self._failures != failures:
                    raise UpstreamUnavailable(self._last_failure)
                await self._next_state_change()
            await self._sync_upstream()
            waiter = AckWaiter()
            pending_acks = self._pending_acks
            for item in items:
                waiters = pending_acks.get(str(item))
                if waiters is not None:
                    waiters.append(waiter)
                    waiter.remaining += 1
            if waiter.remaining:
                try:
                    async with asyncio.timeout(UPSTREAM_ACK_TIMEOUT_SECONDS):
                        await waiter.acknowledged
                except TimeoutError:
                    logger.warning(
                        "upstream %s did not acknowledge %d item(s) in time", self.market, waiter.remaining
                    )
            if self._failures != failures or not self.connected.is_set():
                raise UpstreamUnavailable(self._last_failure)
            acknowledge()
            self.index.add(client, items)
        finally:
            self._unreserve(items)

    @contextlib.contextmanager
    def claiming(self, items: list[Subscription]) -> Iterator[None]:
        """Hold the feed connection's capacity for all of a request's *items* while they are subscribed in steps,
        so that the request is refused whole (`SubscriptionRefused`, on entering) or not at all."""
        self._claim(items)
        limited = self.capacity.limited(items)
        self._reserved.update(limited)
        try:
            yield
        finally:
            self._unreserve(limited)

    async def unsubscribe(self, client: Subscriber, items: list[Subscription]) -> None:
        self._changed.update(self._unheld(self.index.discard(client, items)))
        await self._sync_upstream()

    def detach(self, client: Subscriber) -> None:
        """Forget a leaving client; the upstream drops what nobody else needs."""
        unneeded = self._unheld(self.index.remove(client))
        if unneeded:
            self._changed.update(unneeded)
            self._background.spawn(self._sync_upstream())

    def _claim(self, items: list[Subscription]) -> None:
        refusal = self.capacity.claim(items)
        if refusal is not None:
            raise SubscriptionRefused(refusal)

    def _unreserve(self, items: Iterable[Subscription]) -> None:
        reserved, needed = self._reserved, self.index.upstream_items()
        for item in items:
            reserved[item] -= 1
            if not reserved[item]:
                del reserved[item]
                self._changed.add(item)
                if item not in needed:
                    self.capacity.release(item)

    def _unheld(self, items: list[Subscription]) -> list[Subscription]:
        """*items*, which no client holds any more: their capacity is free unless a subscribe is taking them."""
        reserved = self._reserved
        for item in items:
            if item not in reserved:
                self.capacity.release(item)
        return items

    # --- upstream side --------------------------------------------------------------------------------------------

    async def _next_state_change(self) -> None:
        await self._state_changed.wait()

    def _announce_state_change(self) -> None:
        self._state_changed.set()
        self._state_changed = asyncio.Event()

    def _ensure_running(self) -> None:
        if self._runner is None or self._runner.done():
            self._runner = asyncio.ensure_future(self._run())

    def _has_demand(self) -> bool:
        return bool(self._reserved) or bool(self.index.clients())

    async def _run(self) -> None:
        while await self._wait_for_clients():
            await self.backoff.wait()
            if not self._has_demand():
                continue
            connected_at = time.monotonic()
            try:
                self._connection = await open_upstream(self.market, self.url, self.api_key)
                connected_at = time.monotonic()
                logger.info("upstream %s connected", self.market)
                self._upstream_items = set()
                self._changed = set(self.index.upstream_items()) | self._reserved.keys()
                self.connected.set()
                metrics.upstream_state(self.market, True)
                self._announce_state_change()
                await self._sync_upstream()
                await self._pump(self._connection)
            except UpstreamError as error:
                metrics.upstream_reconnect(self.market)
                logger.warning("upstream %s failed: %s", self.market, error)
                self._failures += 1
                self._last_failure = f"upstream feed unavailable: {error}"
                self._fail_clients(self._last_failure)
                self.backoff.record_failure(time.monotonic() - connected_at)
                self._announce_state_change()
            finally:
                await self._disconnect()

    async def _wait_for_clients(self) -> bool:
        """True while the hub has clients, or gets one within the idle period; False when it should stop."""
        deadline = time.monotonic() + self.idle_seconds
        while not self._has_demand():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._wake.clear()
            try:
                async with asyncio.timeout(remaining):
                    await self._wake.wait()
            except TimeoutError:
                return False
        return True

    async def _pump(self, connection: FeedConnection) -> None:
        """Route frames until the connection ends, or until nobody has needed it for the idle period."""
        frames = connection.frames().__aiter__()
        yield_at = time.monotonic() + YIELD_INTERVAL_SECONDS
        while True:
            if not self._has_demand():
                if not await self._wait_for_clients_while_reading(frames):
                    return
                continue
            frame = await self._next_frame(frames)
            self._dispatch(frame, time.monotonic())
            # A backlog of frames would otherwise be routed without ever letting the client writers (and daphne's
            # reactor) run: give them their turn at least every YIELD_INTERVAL_SECONDS, or fast clients look slow.
            # Not after every frame: frames routed in one go leave as one merged frame per client (see Outbox), so
            # under load each client costs one send per turn rather than one per upstream frame. Without a backlog
            # the next read suspends anyway and the writers run at once.
            now = time.monotonic()
            if now >= yield_at:
                await asyncio.sleep(0)
                yield_at = time.monotonic() + YIELD_INTERVAL_SECONDS

    async def _next_frame(self, frames) -> bytes:
        """The next frame; with a silence limit set, a feed that stays quiet that long counts as stalled."""
        if not self.silence_seconds:
            return await anext(frames)
        try:
            async with asyncio.timeout(self.silence_seconds):
                return await anext(frames)
        except TimeoutError:
            raise UpstreamUnavailable(f"upstream sent nothing for {self.silence_seconds:g} s (stalled)") from None

    async def _wait_for_clients_while_reading(self, frames) -> bool:
        # Keep reading (and discarding) while idle, so the socket answers pings and we notice a drop.
        deadline = time.monotonic() + self.idle_seconds
        while not self._has_demand():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                logger.info("upstream %s idle for %.0f s: closing", self.market, self.idle_seconds)
                return False
            try:
                async with asyncio.timeout(remaining):
                    frame = await anext(frames)
            except TimeoutError:
                return False
            self._dispatch(frame, time.monotonic())
        return True

    async def _disconnect(self) -> None:
        self.connected.clear()
        metrics.upstream_state(self.market, False)
        connection, self._connection = self._connection, None
        self._upstream_items = set()
        for waiters in self._pending_acks.values():
            for waiter in waiters:
                waiter.release()
        self._pending_acks.clear()
        if connection is not None:
            await connection.close()

    async def _sync_upstream(self) -> None:
        """Make the upstream's subscriptions equal to what the clients hold: add first, then remove.

        Only the items whose demand changed since the last sync are looked at, so a change costs in proportion to
        its size, whatever the market holds (a new connection starts from everything its clients need).
        """
        async with self._sync_lock:
            connection = self._connection
            if connection is None or not self.connected.is_set():
                return
            changed, self._changed = self._changed, set()
            needed, reserved, upstream = self.index.upstream_items(), self._reserved, self._upstream_items
            added: set[str] = set()
            removed: set[str] = set()
            for item in changed:
                text = str(item)
                if item in needed or item in reserved:
                    if text not in upstream:
                        added.add(text)
                elif text in upstream:
                    removed.add(text)
            try:
                if added:
                    self._pending_acks.update({item: [] for item in added})
                    await connection.subscribe(added)
                    self._upstream_items |= added
                if removed:
                    await connection.unsubscribe(removed)
                    self._upstream_items -= removed
            except UpstreamError as error:
                self._changed |= changed  # looked at again by the next sync (or the next connection)
                logger.warning("upstream %s: subscription update failed: %s", self.market, error)

    def _fail_clients(self, message: str) -> None:
        for client in self.index.clients():
            self._unheld(self.index.remove(client))
            client.upstream_failed(message)

    def _dispatch(self, frame: bytes, received_at: float) -> None:
        """Route one upstream frame, received at *received_at*, batched per group of identical subscriptions.

        A group that takes every event of the frame (its wildcards cover all the frame's event types) gets the
        upstream frame itself, unchanged; the other groups get frames built from their events, each event encoded
        once (and only when such a group exists).
        """
        try:
            events = orjson.loads(frame)
        except orjson.JSONDecodeError:
            raise UpstreamUnavailable("upstream sent a frame that is not JSON") from None
        if not isinstance(events, list):
            raise UpstreamUnavailable("upstream sent a frame that is not an array of events")
        routed = []
        for event in events:
            if not isinstance(event, dict):
                raise UpstreamUnavailable("upstream sent an event that is not an object")
            event_type = event.get("ev")
            if event_type == STATUS_EVENT:
                self._route_status(event, received_at)
                continue
            symbol = event.get("sym", event.get("T"))  # LULD and NOI carry the ticker in T
            if isinstance(event_type, str) and isinstance(symbol, str):
                routed.append((event_type, symbol, event))
        if not routed:
            return
        whole: list = []
        if len(routed) == len(events) and len(frame) < MAX_FRAME_BYTES:
            whole = self.index.groups_taking_all({event_type for event_type, _, _ in routed})
            if whole:
                frames, count = [frame], len(events)
                for group in whole:
                    for client in group.members:
                        client.deliver(frames, count, received_at)
                if len(whole) == self.index.group_count():
                    return
        dumps = orjson.dumps
        for group in self.index.route([(event_type, symbol, dumps(event)) for event_type, symbol, event in routed],
                                      exclude=whole):
            frames, count = encode_frames(group.batch), len(group.batch)
            group.batch = []
            for client in group.members:
                client.deliver(frames, count, received_at)

    def _route_status(self, event: dict, received_at: float) -> None:
        """Upstream acks complete the hub's own requests (clients get their own acks); other statuses go to the
        clients they concern: those holding the item they name, or everyone if they name none."""
        message = str(event.get("message", ""))
        if event.get("status") == Status.SUCCESS:
            if message.startswith(SUBSCRIBED_PREFIX):
                for waiter in self._pending_acks.pop(message[len(SUBSCRIBED_PREFIX):], ()):
                    waiter.item_acknowledged()
            return
        named = message.rpartition(" ")[2]  # the feed names an item last: "... not found: T.AAPL"
        concerned = (
            self.index.clients_of(Subscription(*named.split(".", 1))) if named in self._upstream_items else []
        ) or self.index.clients()
        frame = orjson.dumps([event])
        for client in dict.fromkeys(concerned):
            client.deliver([frame], 1, received_at)

