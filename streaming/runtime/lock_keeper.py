"""One keeper per process for every connection lock it holds, refreshed together: one script call per 1,000 locks.

A `hold` task per connection costs a task, a timer and a Redis call per lock every third of the TTL: 10,000 idle
connections made ~1,000 calls/s through the shared pool, and admissions waited behind them for a connection (1011
"the connection registry is unavailable"). The keeper refreshes every lock it holds once per interval, in one call of
a small script per ``LOCKS_PER_ROUND_TRIP`` locks (so Redis serves other clients between batches, each about a
millisecond of its time). Each lock keeps its own TTL in Redis, so the locks of a process that dies still expire on
their own. Loss is reported per lock, with `hold`'s rules: LOST when its key is gone or holds another token,
UNREACHABLE when it could not be confirmed in time.

Acquires and releases go through the keeper too, in batches (`streaming.runtime.batches`): a close storm's
thousands of releases were thousands of calls waiting for the pool. A release Redis could not take is tried again
every ``UNREACHABLE_RETRY_SECONDS`` until the lock would have expired anyway, so a user whose connection ended is not
answered 4409 for a whole TTL.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import redis.asyncio

from streaming import metrics
from streaming.exceptions import LeaseUnavailable
from streaming.runtime.batches import Batches
from streaming.runtime.lease import SAFETY_MARGIN_FRACTION, UNREACHABLE_RETRY_SECONDS, Lease, LossReason
from streaming.runtime.lock import ConnectionLock
from streaming.runtime.loop_local import LoopLocal
from streaming.runtime.redis_client import redis_client
from streaming.runtime.tasks import BackgroundTasks, CancellationGuard

logger = logging.getLogger(__name__)

LOCKS_PER_ROUND_TRIP = 1000

OnLost = Callable[[LossReason], None]
"""Called once, synchronously, when a kept lock is lost; the lock is forgotten first. It must not block: start a
task for any I/O (the connection's close)."""

_keepers: LoopLocal[LockKeeper] = LoopLocal()


def _expires_at(lease: Lease) -> float:
    """When Redis drops *lease*'s key by itself, at the latest (its last confirmed refresh plus its TTL)."""
    assert lease.confirmed_at is not None
    return lease.confirmed_at + lease.ttl


def give_up_at(lease: Lease) -> float:
    """When ownership can no longer be assumed: a third of the TTL before the key could expire."""
    assert lease.confirmed_at is not None
    return lease.confirmed_at + lease.ttl * (1 - SAFETY_MARGIN_FRACTION)


class LockKeeper:
    """Takes connection locks, keeps them (and their records) alive until forgotten or lost, and releases them.
    One per event loop (`for_loop`)."""

    def __init__(self, client: redis.asyncio.Redis) -> None:
        self._client = client
        self._kept: dict[ConnectionLock, OnLost] = {}
        self._tasks = BackgroundTasks()  # the refresh loop, while anything is kept
        self._changed = asyncio.Event()
        self._wake_at = 0.0  # when the refresh loop wakes up next (it recomputes its schedule then)
        self._acquires: Batches[ConnectionLock, bool] = Batches(
            lambda locks: ConnectionLock.acquire_together(client, locks), size=LOCKS_PER_ROUND_TRIP,
            withdraw_cancelled=True,
        )
        self._releases: Batches[ConnectionLock, bool] = Batches(
            lambda locks: ConnectionLock.release_together(client, locks), size=LOCKS_PER_ROUND_TRIP,
            failed=self._owe,
        )
        self._owed: set[ConnectionLock] = set()  # releases Redis could not take: retried until the lock expires
        self._retries = BackgroundTasks()  # the timer of the next retry, while releases are owed

    @classmethod
    def for_loop(cls) -> LockKeeper:
        return _keepers.get(lambda: cls(redis_client()))

    def __len__(self) -> int:
        return len(self._kept)

    def keep(self, lease: ConnectionLock, on_lost: OnLost) -> None:
        """Keep an acquired *lease* alive; ``on_lost(reason)`` is called once if it cannot be."""
        if lease.confirmed_at is None:
            raise RuntimeError("keep() needs an acquired lease")
        self._kept[lease] = on_lost
        if not self._tasks:
            self._tasks.spawn(self._run())
        elif min(lease.confirmed_at + lease.refresh_interval, give_up_at(lease)) < self._wake_at:
            # Due before the loop's next wake-up (a shorter TTL than the others'): it must plan again. Usually not:
            # a new lease is due last, and waking for each would cost a pass over all of them per admission.
            self._changed.set()

    def forget(self, lease: ConnectionLock) -> None:
        """Stop refreshing *lease* (before releasing it). Safe to repeat."""
        self._kept.pop(lease, None)

    async def acquire(self, lease: ConnectionLock) -> bool:
        """Take *lease* if nobody holds it, in one script call with every lock acquired meanwhile. Raises
        `LeaseUnavailable`. A caller cancelled before the call was sent takes its lease back."""
        return await self._acquires.submit(lease)

    async def release(self, lease: ConnectionLock) -> bool:
        """Stop refreshing *lease* and release it, in one script call with every lock released meanwhile: True if
        it was still ours. Raises `LeaseUnavailable` when Redis could not take it; the keeper then tries again every
        ``UNREACHABLE_RETRY_SECONDS`` until the lock would have expired. A caller cancelled while it waits leaves
        the release to go on."""
        self.forget(lease)
        return await self._releases.submit(lease)

    def _owe(self, leases: list[ConnectionLock], error: Exception) -> None:
        """Keep the *leases* Redis could not release for another try, those that may still exist."""
        now = time.monotonic()
        self._owed.update(lease for lease in leases if lease.confirmed_at is not None and now < _expires_at(lease))
        if self._owed and not self._retries:
            self._retries.spawn(self._retry_owed())

    async def _retry_owed(self) -> None:
        await asyncio.sleep(UNREACHABLE_RETRY_SECONDS)
        now = time.monotonic()
        owed, self._owed = self._owed, set()
        for lease in owed:
            if now < _expires_at(lease):
                self._releases.submit_unawaited(lease)

    @classmethod
    async def stop_for_loop(cls) -> None:
        """Stop the running loop's keeper, if any, before the loop closes (tests run a loop each); what it kept
        then expires by its TTL."""
        keeper = _keepers.pop()
        if keeper is not None:
            await keeper.stop()

    async def stop(self) -> None:
        """Stop refreshing and releasing (what is still kept or owed expires by its TTL, unreported)."""
        self._kept.clear()
        self._owed.clear()
        await self._tasks.stop()
        await self._retries.stop()
        await self._acquires.stop()
        await self._releases.stop()

    async def _run(self) -> None:
        cancellation = CancellationGuard()
        retry_at: float | None = None
        while self._kept:
            next_refresh = retry_at if retry_at is not None else min(
                lease.confirmed_at + lease.refresh_interval  # type: ignore[operator]  # kept leases are confirmed
                for lease in self._kept
            )
            deadline = self._wake_at = min(next_refresh, min(map(give_up_at, self._kept)))
            await self._sleep_until(deadline)
            cancellation.check()
            now = time.monotonic()
            self._report(LossReason.UNREACHABLE, [lease for lease in self._kept if give_up_at(lease) <= now])
            if not self._kept or (retry_at is None and now < next_refresh):
                continue  # woken by a change: recompute the schedule
            refreshed = await self._refresh_all()
            cancellation.check()
            retry_at = None if refreshed else time.monotonic() + UNREACHABLE_RETRY_SECONDS

    async def _sleep_until(self, deadline: float) -> None:
        self._changed.clear()
        try:
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                await self._changed.wait()
        except TimeoutError:
            pass

    async def _refresh_all(self) -> bool:
        """One refresh of every kept lease; False if Redis could not be reached for some of them."""
        leases = list(self._kept)
        reachable = True
        for start in range(0, len(leases), LOCKS_PER_ROUND_TRIP):
            batch = [lease for lease in leases[start:start + LOCKS_PER_ROUND_TRIP] if lease in self._kept]
            if not batch:
                continue
            # The round trip runs as a task of its own, abandoned (cancelled, not awaited) at the first give-up
            # deadline: a hung Redis must not delay the reports, and a cancelled read may swallow its cancellation.
            round_trip = self._tasks.spawn(ConnectionLock.refresh_together(self._client, batch))
            await asyncio.wait([round_trip], timeout=max(0.0, min(map(give_up_at, batch)) - time.monotonic()))
            if not round_trip.done():
                round_trip.cancel()
                reachable = False
                continue
            try:
                sent_at, owned = round_trip.result()
            except LeaseUnavailable:
                reachable = False
                continue
            metrics.lock_refresh_round_trip(len(batch))
            lost = []
            for lease, still_held in zip(batch, owned, strict=True):
                if lease not in self._kept:
                    continue  # forgotten meanwhile
                if still_held:
                    lease.confirm(sent_at)
                else:
                    lost.append(lease)
            self._report(LossReason.LOST, lost)
        if not reachable:
            logger.warning("connection locks could not be refreshed (Redis unreachable); retrying")
        return reachable

    def _report(self, reason: LossReason, leases: list[ConnectionLock]) -> None:
        for lease in leases:
            on_lost = self._kept.pop(lease, None)
            if on_lost is not None:
                on_lost(reason)
