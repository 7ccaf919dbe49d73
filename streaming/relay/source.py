"""A gateway process's upstream in relay mode: the market's frames come from its feed relay through Redis.

`RelaySource` is a `streaming.hub.source.FeedConnection`, offering the hub what `UpstreamConnection` offers
(``subscribe``, ``unsubscribe``, ``frames``, ``close``), so the hub, its fan-out, acks and slow-consumer bound stay as
they are. Subscribing registers the items in Redis, where they live only while this process keeps refreshing them, and
asks the relay to confirm; the relay's confirmation becomes the upstream's own ack, so the hub acks its clients when the
item's data flows. Each change to the registration is announced to the relay in the same transaction
(`streaming.relay.wire.Change`), so the relay follows it without re-reading the registrations. Any doubt that every
frame arrived (a gap, a new epoch, silence, a lost registration) ends the stream with `UpstreamUnavailable`, and the
hub closes its clients with 1011.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import secrets
import socket
import time
from collections.abc import AsyncIterator, Iterable

import redis.asyncio
import redis.exceptions

from streaming.conf import stream_settings
from streaming.exceptions import LeaseUnavailable, RelayGap, UpstreamUnavailable
from streaming.relay.wire import (
    KIND_ACK,
    KIND_END,
    KIND_FRAME,
    TOKEN_SEPARATOR,
    Change,
    RelayNames,
    SequenceCheck,
    ack_frame,
    decode,
    decode_ack,
    encode_change,
    without_upstream_acks,
)
from streaming.runtime.lease import LossReason, hold
from streaming.runtime.redis_client import redis_client

logger = logging.getLogger(__name__)

# The relay sends a heartbeat every second (streaming.relay.leader.HEARTBEAT_SECONDS): this much silence means it is
# gone.
RELAY_SILENCE_SECONDS = 5.0
OPEN_TIMEOUT_SECONDS = 5.0
CLOSE_TIMEOUT_SECONDS = 2.0
REFRESH_FRACTION = 1 / 3


class Registration:
    """The items one gateway process needs from a market's relay: a Redis set that expires unless refreshed.

    It has what `streaming.runtime.lease.hold` needs to keep it alive (``refresh``, ``ttl``, ``confirmed_at``), and
    ``refresh`` reports it lost when the set vanished while items were held (expired, or Redis lost its data).
    """

    def __init__(self, client: redis.asyncio.Redis, names: RelayNames, source_id: str, ttl: float) -> None:
        self.redis = client
        self.names = names
        self.source_id = source_id
        self.ttl = ttl
        self.items: set[str] = set()
        self._lost = False
        self.confirmed_at: float | None = time.monotonic()  # nothing registered yet: nothing to lose
        self._key = names.items(source_id)
        self._ttl_ms = max(1, round(ttl * 1000))

    @property
    def refresh_interval(self) -> float:
        return self.ttl * REFRESH_FRACTION

    async def add(self, items: list[str], token: str) -> None:
        """Register *items* and ask the relay to confirm them under *token*, in one transaction."""
        sent_at = time.monotonic()
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.exists(self._key)
            pipe.sadd(self._key, *items)
            pipe.pexpire(self._key, self._ttl_ms)
            pipe.sadd(self.names.sources, self.source_id)
            pipe.publish(self.names.requests, encode_change(Change.ADDED, token, items))
            existed, *_ = await pipe.execute()
        if not existed and self.items:
            self._lost = True  # expired before this re-created it: the items held before are gone (see `refresh`)
        self.items.update(items)  # after the write: a refresh racing it must not find the items missing
        self.confirmed_at = sent_at

    async def remove(self, items: list[str]) -> None:
        """Unregister *items*; the relay drops what no process needs after its grace period."""
        self.items.difference_update(items)  # before the write: the set may vanish with its last item
        sent_at = time.monotonic()
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.srem(self._key, *items)
            pipe.pexpire(self._key, self._ttl_ms)
            pipe.publish(self.names.requests, encode_change(Change.REMOVED, self.source_id, items))
            await pipe.execute()
        self.confirmed_at = sent_at

    async def refresh(self) -> bool:
        """Extend the registration; False if it vanished while items were held. Raises `LeaseUnavailable`."""
        sent_at = time.monotonic()
        try:
            alive = await self.redis.pexpire(self._key, self._ttl_ms)
        except redis.exceptions.RedisError as error:
            raise LeaseUnavailable(f"cannot refresh {self._key}") from error
        if self._lost or (not alive and self.items):
            return False
        self.confirmed_at = sent_at
        return True

    async def release(self) -> None:
        self.items.clear()
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(self._key)
            pipe.srem(self.names.sources, self.source_id)
            pipe.publish(self.names.requests, encode_change(Change.RELEASED, self.source_id))
            await pipe.execute()


class RelaySource:
    """This process's view of one market's relay: one Redis subscription, one registration."""

    def __init__(self, market: str, names: RelayNames, client: redis.asyncio.Redis,
                 pubsub: redis.asyncio.client.PubSub, registration: Registration) -> None:
        self.market = market
        self.names = names
        self.redis = client
        self._pubsub = pubsub
        self._registration = registration
        self._sequence = SequenceCheck()
        self._token_prefix = f"{registration.source_id}{TOKEN_SEPARATOR}"
        self._request_numbers = itertools.count(1)
        self._failure: str | None = None
        self._keeper = asyncio.ensure_future(hold(registration, self._registration_lost))

    @classmethod
    async def open(cls, market: str) -> RelaySource:
        """Subscribe to the market's relay; `UpstreamUnavailable` if Redis is unreachable or no relay streams."""
        settings = stream_settings()
        names = RelayNames(settings.relay_prefix, market)
        client = redis_client()
        pubsub = client.pubsub()
        try:
            async with asyncio.timeout(OPEN_TIMEOUT_SECONDS):
                await pubsub.subscribe(names.frames)
                # Once Redis confirms, every envelope published from now on reaches us.
                while await pubsub.get_message(timeout=None) is None:
                    pass
                streaming = await client.exists(names.live)
        except (redis.exceptions.RedisError, TimeoutError) as error:
            await _close_quietly(pubsub)
            raise UpstreamUnavailable(f"feed relay unreachable: Redis {str(error) or 'timed out'}") from None
        if not streaming:
            await _close_quietly(pubsub)
            raise UpstreamUnavailable(f"no feed relay is streaming {market}")
        source_id = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"
        registration = Registration(client, names, source_id, settings.relay_registration_ttl)
        logger.info("relay source %s: subscribed to %s as %s", market, names.frames, source_id)
        return cls(market, names, client, pubsub, registration)

    async def subscribe(self, items: Iterable[str]) -> None:
        """Register *items*; their acks arrive through `frames` once the relay has them subscribed upstream."""
        wanted = sorted(items)
        if not wanted:
            return
        token = f"{self._token_prefix}{next(self._request_numbers)}"
        try:
            await self._registration.add(wanted, token)
        except redis.exceptions.RedisError as error:
            raise UpstreamUnavailable(f"cannot register with the feed relay: {error}") from None

    async def unsubscribe(self, items: Iterable[str]) -> None:
        unwanted = sorted(items)
        if not unwanted:
            return
        try:
            await self._registration.remove(unwanted)
        except redis.exceptions.RedisError as error:
            raise UpstreamUnavailable(f"cannot update the feed relay registration: {error}") from None

    async def frames(self) -> AsyncIterator[bytes]:
        """The relay's upstream frames and this process's acks, in order; raises `UpstreamUnavailable` (a
        `RelayGap` when frames may have been missed) when the stream can no longer be trusted."""
        while True:
            envelope = decode(await self._next_message())
            if self._failure is not None:
                raise RelayGap(self._failure)
            self._sequence.check(envelope.epoch, envelope.seq)
            if envelope.kind == KIND_FRAME:
                frame = without_upstream_acks(envelope.payload)
                if frame is not None:
                    yield frame
            elif envelope.kind == KIND_ACK:
                token, items = decode_ack(envelope.payload.decode())
                if token.startswith(self._token_prefix) and items:
                    yield ack_frame(items)
            elif envelope.kind == KIND_END:
                raise UpstreamUnavailable(f"feed relay: {envelope.payload.decode(errors='replace')}")

    async def close(self) -> None:
        """Unregister and unsubscribe (best effort: a registration left behind expires by its TTL)."""
        self._keeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._keeper
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT_SECONDS):
                await self._registration.release()
        except (redis.exceptions.RedisError, TimeoutError):
            logger.warning("relay source %s: registration not removed (it expires by TTL)", self.market)
        await _close_quietly(self._pubsub)

    async def _next_message(self) -> bytes:
        try:
            async with asyncio.timeout(RELAY_SILENCE_SECONDS):
                while True:
                    message = await self._pubsub.get_message(ignore_subscribe_messages=True, timeout=None)
                    if message is not None and message["type"] == "message":
                        return message["data"]
        except TimeoutError:
            raise RelayGap(f"relay gap: nothing from the {self.market} relay for {RELAY_SILENCE_SECONDS:g} s") from None
        except redis.exceptions.RedisError as error:
            raise RelayGap(f"relay gap: lost the Redis subscription ({error})") from None

    async def _registration_lost(self, reason: LossReason) -> None:
        if reason is LossReason.LOST:
            self._failure = "relay gap: this process's registration expired (the relay may have dropped items)"
        else:
            self._failure = "relay gap: cannot refresh this process's registration (Redis unreachable)"
        logger.error("relay source %s: %s", self.market, self._failure)


async def _close_quietly(pubsub: redis.asyncio.client.PubSub) -> None:
    try:
        async with asyncio.timeout(CLOSE_TIMEOUT_SECONDS):
            await pubsub.aclose()
    except (redis.exceptions.RedisError, TimeoutError, OSError):
        logger.warning("relay source: Redis subscription not closed cleanly")
