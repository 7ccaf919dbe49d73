"""The feed relay of one market (``manage.py run_feed_relay``): the deployment's one upstream connection for that
market, published once to Redis for every gateway process.

Run two per market. The relay holding the market's lease (a Redis key taken with SET NX PX and refreshed only while it
still holds this relay's token) connects upstream, reads what gateway processes registered once, then follows their
announced changes one by one (`streaming.relay.wire.Change`; a change costs what its items cost, whatever the relay
holds), keeps its upstream subscriptions equal to the union, and publishes each upstream frame as an envelope carrying
its epoch and sequence number. The other relay polls the lease and takes over within about one lease TTL when the holder
dies. A holder that cannot confirm its lease closes the upstream connection before the lease could expire, so the
upstream never sees two. Each relay keeps its `RelayStatus` current, which its probe port reports
(`streaming.relay.probes`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from typing import Any

import redis.asyncio
import redis.exceptions

from streaming.conf import Upstream
from streaming.exceptions import LeaseUnavailable, UpstreamError
from streaming.relay.status import RelayStatus
from streaming.relay.subscriptions import SourceItems, UpstreamSubscriptions
from streaming.relay.wire import (
    KIND_ACK,
    KIND_END,
    KIND_FRAME,
    KIND_HEARTBEAT,
    Change,
    RelayNames,
    decode_change,
    encode,
    encode_ack,
    source_of,
    upstream_acks,
)
from streaming.runtime.backoff import Backoff
from streaming.runtime.lease import Lease, LossReason, hold
from streaming.runtime.tasks import honouring_cancellation
from streaming.upstream.connection import UpstreamConnection

logger = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 1.0
LIVE_TTL_SECONDS = 3 * HEARTBEAT_SECONDS  # gateways may open a source while this key exists
LEASE_POLL_SECONDS = 0.5  # how often a standby tries to take the lease
STANDBY_READY_POLLS = 4  # a standby is ready while its last lease attempt was answered within this many polls
LIVENESS_POLL_SECONDS = 1.0  # how often sources whose registration expired are looked for (and grace ends)
UPSTREAM_CLOSE_TIMEOUT_SECONDS = 1.0
END_TIMEOUT_SECONDS = 1.0

# The ids of the registered gateway sources whose registration has not expired; sources whose registration is gone
# are dropped from the index in the same atomic step, so a source re-registering concurrently is never lost.
# KEYS[1]: the market's set of source ids. ARGV[1]: the prefix of a source's items key (the id completes it).
LIVE_SOURCES_SCRIPT = """
local ids = redis.call('smembers', KEYS[1])
local live = {}
for _, id in ipairs(ids) do
    if redis.call('exists', ARGV[1] .. id) == 1 then
        live[#live + 1] = id
    else
        redis.call('srem', KEYS[1], id)
    end
end
return live
"""


class RelayLease(Lease):
    """Which relay holds a market's upstream connection: a `Lease` on the market's relay key, kept by
    `streaming.runtime.lease.hold` and lost exactly as a connection lock is."""

    def __init__(self, client: redis.asyncio.Redis, names: RelayNames, ttl: float) -> None:
        super().__init__(client, names.lease, ttl)


class Publisher:
    """Numbers and publishes one epoch's envelopes; one at a time, so Redis delivers them in sequence order."""

    def __init__(self, client: redis.asyncio.Redis, channel: str, epoch: int) -> None:
        self.redis = client
        self.channel = channel
        self.epoch = epoch
        self.seq = 0
        self._lock = asyncio.Lock()

    async def publish(self, kind: bytes, payload: bytes = b"") -> None:
        async with self._lock:
            self.seq += 1
            await honouring_cancellation(self.redis.publish(self.channel, encode(self.epoch, self.seq, kind, payload)))


class Registrations:
    """Reads what the market's gateway processes registered (see `streaming.relay.source.Registration`)."""

    def __init__(self, client: redis.asyncio.Redis, names: RelayNames) -> None:
        self.redis = client
        self.names = names
        self._live_sources = client.register_script(LIVE_SOURCES_SCRIPT)

    async def live_sources(self) -> set[str]:
        """The sources whose registration has not expired (one call, whatever they hold)."""
        ids = await honouring_cancellation(
            self._live_sources(keys=[self.names.sources], args=[self.names.items_prefix])
        )
        return {source.decode() for source in ids}

    async def snapshot(self) -> dict[str, set[str]]:
        """Every live source's items: read once per upstream session, before following the changes."""
        sources = sorted(await self.live_sources())
        async with self.redis.pipeline(transaction=False) as pipe:
            for source in sources:
                pipe.smembers(self.names.items(source))
            members = await honouring_cancellation(pipe.execute())
        return {source: {item.decode() for item in items} for source, items in zip(sources, members, strict=True)}


async def first_failure(*coroutines: Coroutine[Any, Any, object]) -> None:
    """Run *coroutines* until one ends; cancel the others and re-raise what ended it."""
    tasks = [asyncio.ensure_future(coroutine) for coroutine in coroutines]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for task in done:
        task.result()


class RelaySession:
    """One upstream connection of the active relay, published as one epoch."""

    def __init__(self, market: str, names: RelayNames, client: redis.asyncio.Redis, connection: UpstreamConnection,
                 epoch: int, grace_seconds: float, status: RelayStatus) -> None:
        self.market = market
        self.status = status
        self.names = names
        self.redis = client
        self.connection = connection
        self.epoch = epoch
        self.publisher = Publisher(client, names.frames, epoch)
        self.registrations = Registrations(client, names)
        self.sources = SourceItems()
        self.subscriptions = UpstreamSubscriptions(grace_seconds)

    async def run(self) -> None:
        """Stream until the upstream or Redis fails (raises `UpstreamError` or `RedisError`), or until cancelled."""
        requests = self.redis.pubsub()
        try:
            await honouring_cancellation(requests.subscribe(self.names.requests))
            # Wait for the subscription to be confirmed: from then on no request is missed.
            while await honouring_cancellation(requests.get_message(timeout=None)) is None:
                pass
            await self._announce()
            # After the subscription: a change racing the snapshot arrives again, and replaying it is harmless.
            for source, items in (await self.registrations.snapshot()).items():
                self.subscriptions.need(self.sources.add(source, items))
            await self._sync_upstream(list(self.subscriptions.subscribed), [])
            logger.info("relay %s: streaming epoch %d (%d items)", self.market, self.epoch,
                        len(self.subscriptions.subscribed))
            await first_failure(self._pump(), self._beat(), self._serve(requests))
        finally:
            await asyncio.shield(_close_pubsub(requests))

    async def end(self, reason: str) -> None:
        """Tell the gateways this epoch is over (best effort: they also notice the silence or the next epoch)."""
        try:
            async with asyncio.timeout(END_TIMEOUT_SECONDS):
                await self.publisher.publish(KIND_END, reason.encode())
        except (redis.exceptions.RedisError, TimeoutError):
            logger.warning("relay %s: could not publish the end of epoch %d", self.market, self.epoch)

    async def _announce(self) -> None:
        await honouring_cancellation(self.redis.set(self.names.live, self.epoch, px=round(LIVE_TTL_SECONDS * 1000)))

    async def _pump(self) -> None:
        async for frame in self.connection.frames():
            data = frame
            await self.publisher.publish(KIND_FRAME, data)
            self.status.frames_published += 1
            subscribed, unsubscribed = upstream_acks(data)
            if subscribed or unsubscribed:
                completed = self.subscriptions.answered(subscribed + unsubscribed)
                for token, items in completed.items():
                    await self.publisher.publish(KIND_ACK, encode_ack(token, items).encode())

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_SECONDS)
            await self.publisher.publish(KIND_HEARTBEAT)
            await self._announce()

    async def _serve(self, requests: redis.asyncio.client.PubSub) -> None:
        """Apply each batch of announced changes as it comes; every `LIVENESS_POLL_SECONDS`, drop the sources
        whose registration expired (their gateway died) and unsubscribe what is past its grace."""
        next_poll = time.monotonic() + LIVENESS_POLL_SECONDS
        while True:
            message = await honouring_cancellation(requests.get_message(
                ignore_subscribe_messages=True, timeout=max(0.0, next_poll - time.monotonic())
            ))
            added: list[str] = []
            acks: list[tuple[str, list[str]]] = []
            while message is not None:
                if message["type"] == "message":
                    self._apply(message["data"], added, acks)
                message = await honouring_cancellation(requests.get_message(ignore_subscribe_messages=True, timeout=0))
            now = time.monotonic()
            if now >= next_poll:
                live = await self.registrations.live_sources()
                for source in self.sources.sources() - live:
                    logger.warning("relay %s: registration of %s expired: dropping its items", self.market, source)
                    self.subscriptions.unneed(self.sources.drop(source), now)
                next_poll = now + LIVENESS_POLL_SECONDS
            await self._sync_upstream(added, self.subscriptions.due(now))
            for token, items in acks:
                ready = self.subscriptions.request(token, items)
                if ready:
                    await self.publisher.publish(KIND_ACK, encode_ack(token, ready).encode())

    def _apply(self, data: bytes, added: list[str], acks: list[tuple[str, list[str]]]) -> None:
        """Apply one announced change: what it makes the upstream need goes to *added*, its ack request to *acks*."""
        try:
            change, token, items = decode_change(data.decode())
        except (UnicodeDecodeError, ValueError):
            logger.warning("relay %s: ignoring a request that is not a registration change: %r", self.market,
                           data[:40])
            return
        source = source_of(token)
        if change is Change.ADDED:
            added.extend(self.subscriptions.need(self.sources.add(source, items)))
            acks.append((token, items))
        elif change is Change.REMOVED:
            self.subscriptions.unneed(self.sources.remove(source, items), time.monotonic())
        else:
            self.subscriptions.unneed(self.sources.drop(source), time.monotonic())

    async def _sync_upstream(self, added: list[str], removed: list[str]) -> None:
        if added:
            await self.connection.subscribe(added)
        if removed:
            await self.connection.unsubscribe(removed)
        self.status.registered_items = len(self.subscriptions.subscribed)
        if added or removed:
            logger.info("relay %s: upstream +%d -%d items (now %d)", self.market, len(added), len(removed),
                        len(self.subscriptions.subscribed))


class FeedRelay:
    """One relay process for one market: stands by until it holds the lease, then streams while it holds it."""

    def __init__(self, market: str, upstream: Upstream, names: RelayNames, client: redis.asyncio.Redis,
                 lease_ttl: float, grace_seconds: float) -> None:
        self.market = market
        self.upstream = upstream
        self.names = names
        self.redis = client
        self.lease_ttl = lease_ttl
        self.grace_seconds = grace_seconds
        self.stopping = asyncio.Event()
        self.status = RelayStatus(market, redis_fresh_seconds=STANDBY_READY_POLLS * LEASE_POLL_SECONDS)

    def stop(self) -> None:
        self.stopping.set()

    async def run(self) -> None:
        """Alternate between standing by and streaming until `stop`."""
        self.status.running = True
        try:
            while not self.stopping.is_set():
                lease = RelayLease(self.redis, self.names, self.lease_ttl)
                if await self._acquire(lease):
                    await self._lead(lease)
        finally:
            self.status.running = False

    async def _acquire(self, lease: RelayLease) -> bool:
        """Poll for the lease; True once held, False when stopping first."""
        waiting_since = time.monotonic()
        announced = False
        while not self.stopping.is_set():
            try:
                acquired = await lease.acquire()
            except LeaseUnavailable as error:
                self.status.redis_failed()
                logger.warning("relay %s: cannot reach Redis for the lease: %s", self.market, error.__cause__)
            else:
                self.status.redis_answered()
                if acquired:
                    self.status.lease_held = True
                    self.status.lease_acquisitions += 1
                    logger.info("relay %s: lease acquired after %.1f s: active", self.market,
                                time.monotonic() - waiting_since)
                    return True
                if not announced:
                    logger.info("relay %s: another relay holds the lease: standing by", self.market)
                    announced = True
            await self._pause(LEASE_POLL_SECONDS)
        return False

    async def _lead(self, lease: RelayLease) -> None:
        """Stream while the lease holds; stop streaming as soon as it is lost or the relay is stopped."""
        lost = asyncio.Event()

        async def on_lost(reason: LossReason) -> None:
            logger.error("relay %s: lease %s: stopping the stream", self.market, reason.value)
            if reason is LossReason.UNREACHABLE:
                self.status.redis_failed()
            else:
                self.status.redis_answered()  # it found the lease gone or taken
            lost.set()

        try:
            await first_failure(hold(lease, on_lost), self._stream(), self.stopping.wait())
        finally:
            self.status.lease_held = False
            if not lost.is_set():
                await asyncio.shield(self._release(lease))

    async def _release(self, lease: RelayLease) -> None:
        try:
            await lease.release()
            logger.info("relay %s: lease released", self.market)
        except LeaseUnavailable:
            logger.warning("relay %s: lease not released (Redis unreachable); it expires by TTL", self.market)

    async def _stream(self) -> None:
        """Connect upstream and stream, reconnecting with backoff; each connection is a new epoch."""
        backoff = Backoff()
        while True:
            await backoff.wait()
            connected_at = time.monotonic()
            try:
                connection = await UpstreamConnection.open(self.upstream.url, self.upstream.api_key)
            except UpstreamError as error:
                self.status.upstream_failures += 1
                logger.warning("relay %s: upstream unavailable: %s", self.market, error)
                backoff.record_failure()
                continue
            self.status.upstream_connected = True
            reason = "relay stopped streaming"
            session: RelaySession | None = None
            try:
                epoch = await honouring_cancellation(self.redis.incr(self.names.epoch))
                session = RelaySession(self.market, self.names, self.redis, connection, epoch, self.grace_seconds,
                                       self.status)
                await session.run()
            except (UpstreamError, redis.exceptions.RedisError) as error:
                self.status.upstream_failures += 1
                reason = f"upstream feed unavailable: {error}"
                logger.warning("relay %s: stream ended: %s", self.market, error)
                backoff.record_failure(time.monotonic() - connected_at)
            finally:
                self.status.upstream_connected = False
                self.status.registered_items = 0
                # The upstream connection first: a relay losing its lease must be off the feed before it expires.
                await asyncio.shield(_close_upstream(connection))
                if session is not None:
                    await asyncio.shield(session.end(reason))

    async def _pause(self, seconds: float) -> None:
        try:
            async with asyncio.timeout(seconds):
                await self.stopping.wait()
        except TimeoutError:
            pass


async def _close_upstream(connection: UpstreamConnection) -> None:
    try:
        async with asyncio.timeout(UPSTREAM_CLOSE_TIMEOUT_SECONDS):
            await connection.close()
    except TimeoutError:
        logger.warning("relay: upstream did not answer the close in time")


async def _close_pubsub(pubsub: redis.asyncio.client.PubSub) -> None:
    try:
        await pubsub.aclose()
    except (redis.exceptions.RedisError, OSError):
        logger.warning("relay: Redis subscription not closed cleanly")
