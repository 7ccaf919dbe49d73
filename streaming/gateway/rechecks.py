"""Live enforcement: when a user's keys, account or plans change, their live connection re-checks its admission;
when an operator ends a user's connection, it closes.

accounts announces ``entitlements_changed``; ``request_recheck`` turns it into one message to the Channels group
that every gateway process joins, on the Redis channel layer, so it reaches the connection whichever process holds
it. Each process listens with one channel and one task (``ControlListener``) and hands the message to its own
connections of the named users. Only these control messages travel this way; market data never does.

Per process rather than per connection: a channel per connection cost every admission two Redis round trips (join)
and every close one (leave), and every connection ~8 KB and three tasks of channels-redis receive machinery, for
messages that arrive a few times a day.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from typing import Protocol

from asgiref.sync import async_to_sync
from channels.layers import BaseChannelLayer, get_channel_layer
from channels_redis.core import RedisChannelLayer
from django.db import transaction
from django.dispatch import receiver

from accounts.signals import entitlements_changed
from streaming.runtime.backoff import Backoff
from streaming.runtime.loop_local import LoopLocal
from streaming.runtime.tasks import BackgroundTasks, CancellationGuard

logger = logging.getLogger(__name__)

RECHECK_GROUP = "stream-recheck"
RECHECK_TYPE = "stream.recheck"
DISCONNECT_TYPE = "stream.disconnect"
REJOIN_INTERVAL_SECONDS = 3600.0
"""channels-redis forgets a group member after its ``group_expiry`` (a day by default): rejoin well before."""
RECENT_RECHECK_SECONDS = 10.0
"""A connection registering this soon after a re-check of its user re-checks at once: its key was resolved before
it registered, possibly before the change that the re-check announced."""


class Recheckable(Protocol):
    def recheck(self) -> None:
        """Re-run the admission rules with fresh data (without blocking the caller)."""

    def force_disconnect(self) -> None:
        """Tell the client an operator ended the connection, and close it (without blocking the caller)."""


def recheck_message(user_ids: Iterable[int]) -> dict:
    return {"type": RECHECK_TYPE, "user_ids": sorted(set(user_ids))}


def request_recheck(user_ids: list[int]) -> None:
    layer = get_channel_layer()
    if layer is None or not user_ids:
        return
    try:
        async_to_sync(layer.group_send)(RECHECK_GROUP, recheck_message(user_ids))
    except Exception:
        logger.exception("live re-check could not be sent for users %s", user_ids)


def request_disconnect(user_ids: list[int]) -> None:
    """Close the live connections of *user_ids* in every gateway process. Raises what the channel layer raises
    (the operator must hear that it did not go out)."""
    layer = get_channel_layer()
    if layer is None:
        raise RuntimeError("no channel layer is configured: gateway processes cannot be reached")
    if user_ids:
        async_to_sync(layer.group_send)(
            RECHECK_GROUP, {"type": DISCONNECT_TYPE, "user_ids": sorted(set(user_ids))}
        )


@receiver(entitlements_changed)
def recheck_after_commit(sender, user_ids: list[int], **kwargs) -> None:
    ids = sorted(set(user_ids))
    transaction.on_commit(lambda: request_recheck(ids))


async def join_group(layer: BaseChannelLayer, group: str, channel_name: str) -> None:
    """``group_add`` in one round trip: channels-redis awaits its ZADD and then its EXPIRE; this pipelines the same
    two commands to the same key on the same shard."""
    if not isinstance(layer, RedisChannelLayer):
        await layer.group_add(group, channel_name)
        return
    key = layer._group_key(group)
    async with layer.connection(layer.consistent_hash(group)).pipeline(transaction=False) as pipe:
        pipe.zadd(key, {channel_name: time.time()})
        pipe.expire(key, layer.group_expiry)
        await pipe.execute()


class ControlListener:
    """This process's channel in ``RECHECK_GROUP`` and the connections it serves, by user id (one per event loop)."""

    _listeners: LoopLocal[ControlListener] = LoopLocal()

    def __init__(self, layer: BaseChannelLayer) -> None:
        self.layer = layer
        self.channel_name: str | None = None
        self.joined = asyncio.Event()
        self._connections: dict[int, set[Recheckable]] = {}
        self._recent: dict[int, float] = {}  # user id -> monotonic time of the last re-check message naming them
        self._tasks = BackgroundTasks()
        self._backoff = Backoff()

    @classmethod
    def for_loop(cls) -> ControlListener | None:
        """The running loop's listener, started on first use; None without a channel layer (nothing to hear)."""
        layer = get_channel_layer()
        return None if layer is None else cls._listeners.get(lambda: cls(layer))

    @classmethod
    async def stop_for_loop(cls) -> None:
        """Stop the running loop's listener, if any, before the loop closes (tests run a loop each). A single
        cancellation does not always do: see ``_stop``."""
        listener = cls._listeners.pop()
        if listener is not None:
            await listener._stop()

    async def _stop(self) -> None:
        await self._tasks.stop()  # channels-redis retries a read whose cancellation redis-py swallowed

    def register(self, user_id: int, connection: Recheckable) -> None:
        """Route re-checks of *user_id* to *connection* from now on (and at once, if one just passed)."""
        self._connections.setdefault(user_id, set()).add(connection)
        if time.monotonic() - self._recent.get(user_id, -RECENT_RECHECK_SECONDS) < RECENT_RECHECK_SECONDS:
            connection.recheck()
        if not self._tasks:
            self._tasks.spawn(self._listen())
            self._tasks.spawn(self._stay_member())

    def unregister(self, user_id: int, connection: Recheckable) -> None:
        connections = self._connections.get(user_id)
        if connections is not None:
            connections.discard(connection)
            if not connections:
                del self._connections[user_id]

    def recheck(self, user_ids: Iterable[int]) -> int:
        """Ask this process's connections of *user_ids* to re-check; returns how many were asked."""
        connections = self._connections_of(user_ids)
        for connection in connections:
            connection.recheck()
        return len(connections)

    def disconnect(self, user_ids: Iterable[int]) -> int:
        """Close this process's connections of *user_ids*; returns how many were closed."""
        connections = self._connections_of(user_ids)
        for connection in connections:
            connection.force_disconnect()
        return len(connections)

    def _connections_of(self, user_ids: Iterable[int]) -> list[Recheckable]:
        """A copy: acting on a connection may unregister it."""
        return [connection for user_id in user_ids for connection in self._connections.get(user_id, ())]

    async def _listen(self) -> None:
        """Join, then receive. After the first join and after any failure every registered connection re-checks:
        a message sent while this process was not (or no longer) receiving may never reach it."""
        cancellation = CancellationGuard()  # or the listener would read on forever, and its loop could not close
        while True:
            joined_at = time.monotonic()
            try:
                if self.channel_name is None:
                    self.channel_name = await self.layer.new_channel()
                await join_group(self.layer, RECHECK_GROUP, self.channel_name)
                joined_at = time.monotonic()
                self.joined.set()
                self.recheck(list(self._connections))
                while True:
                    message = await self.layer.receive(self.channel_name)
                    cancellation.check()
                    if message.get("type") == RECHECK_TYPE:
                        self._remember(message.get("user_ids", ()))
                        self.recheck(message.get("user_ids", ()))
                    elif message.get("type") == DISCONNECT_TYPE:
                        self.disconnect(message.get("user_ids", ()))
            except Exception as error:
                cancellation.check()
                self.joined.clear()
                logger.warning("control listener: %s: %s; joining again", type(error).__name__, error)
                self._backoff.record_failure(time.monotonic() - joined_at)
                await self._backoff.wait()

    def _remember(self, user_ids: Iterable[int]) -> None:
        now = time.monotonic()
        self._recent = {user: at for user, at in self._recent.items() if now - at < RECENT_RECHECK_SECONDS}
        self._recent.update(dict.fromkeys(user_ids, now))

    async def _stay_member(self) -> None:
        while True:
            await asyncio.sleep(REJOIN_INTERVAL_SECONDS)
            if self.channel_name is not None:
                try:
                    await join_group(self.layer, RECHECK_GROUP, self.channel_name)
                except Exception as error:
                    logger.warning("control group membership not renewed: %s", type(error).__name__)
