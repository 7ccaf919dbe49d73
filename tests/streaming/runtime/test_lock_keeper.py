"""The process's lock keeper against real redis-servers: many locks kept in few round trips, each lost on its own."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio
from prometheus_client import REGISTRY

from devstack.redis_server import RedisServer
from streaming.exceptions import LeaseUnavailable
from streaming.runtime.lease import SAFETY_MARGIN_FRACTION, LossReason
from streaming.runtime.lock import ConnectionLock
from streaming.runtime.lock_keeper import LOCKS_PER_ROUND_TRIP, LockKeeper

TTL = 0.9
LOCKS = 2500  # three round trips per refresh
WAIT_LIMIT_SECONDS = 10.0


class Losses:
    """``on_lost`` callbacks for many locks: which lock was lost, why, and when."""

    def __init__(self) -> None:
        self.reasons: dict[int, LossReason] = {}
        self.reported_at: dict[int, float] = {}
        self.changed = asyncio.Event()

    def callback(self, user_id: int):
        def on_lost(reason: LossReason) -> None:
            assert user_id not in self.reasons, "reported twice"
            self.reasons[user_id] = reason
            self.reported_at[user_id] = time.monotonic()
            self.changed.set()
        return on_lost

    async def wait_for(self, count: int) -> None:
        async with asyncio.timeout(WAIT_LIMIT_SECONDS):
            while len(self.reasons) < count:
                self.changed.clear()
                await self.changed.wait()


async def acquired_locks(
    client: redis.asyncio.Redis, count: int, first_user: int = 1000, ttl: float = TTL
) -> list[ConnectionLock]:
    locks = [ConnectionLock(client, first_user + number, ttl=ttl) for number in range(count)]
    pipeline = client.pipeline(transaction=False)
    for lock in locks:
        pipeline.delete(lock.key)
    await pipeline.execute()
    for start in range(0, count, 100):  # a client connection per concurrent command: keep them few
        assert all(await asyncio.gather(*(lock.acquire() for lock in locks[start:start + 100])))
    return locks


async def pipelines_executed(client: redis.asyncio.Redis) -> int:
    """EVALSHA calls the server has run since its stats were reset."""
    stats = await client.info("commandstats")
    return stats.get("cmdstat_evalsha", {}).get("calls", 0)


def round_trips() -> float:
    return REGISTRY.get_sample_value("cutemarkets_stream_lock_refresh_round_trips_total") or 0.0


async def evalsha_calls(client: redis.asyncio.Redis) -> int:
    stats = await client.info("commandstats")
    return stats.get("cmdstat_evalsha", {}).get("calls", 0)


@pytest.fixture
async def keeper(client) -> AsyncIterator[LockKeeper]:
    keeper = LockKeeper(client)
    yield keeper
    await keeper.stop()


async def test_every_lock_is_kept_past_its_ttl_with_one_batch_of_round_trips_per_interval(client, keeper):
    losses = Losses()
    locks = []
    for start in range(0, LOCKS, 50):  # each kept once acquired: acquiring all first can take longer than a TTL
        batch = await acquired_locks(client, 50, first_user=1000 + start)  # (and the keeper needs connections too)
        for lock in batch:
            keeper.keep(lock, losses.callback(lock.user_id))
        locks += batch
    await client.config_resetstat()
    round_trips_before = round_trips()

    started = time.monotonic()
    await asyncio.sleep(3 * TTL)  # what is under test is the passage of time: three TTLs
    elapsed = time.monotonic() - started

    assert losses.reasons == {}
    assert await client.mget([lock.key for lock in locks]) == [lock.token.encode() for lock in locks]
    round_trips_per_refresh = -(-LOCKS // LOCKS_PER_ROUND_TRIP)
    refreshes = await evalsha_calls(client) / round_trips_per_refresh  # one script call per batch of locks
    intervals = elapsed / locks[0].refresh_interval
    assert intervals - 1 <= refreshes <= intervals + 1  # each lock once per interval, not one call per lock
    assert round_trips() - round_trips_before <= (refreshes + 1) * round_trips_per_refresh


async def test_a_lock_with_a_shorter_ttl_kept_after_the_others_is_refreshed_in_its_own_time(client, keeper):
    """The keeper plans its next wake-up for the locks it has; a newcomer due earlier must move that plan."""
    locks = await acquired_locks(client, 3, ttl=10 * TTL)  # the keeper first sleeps for a third of 10 TTLs
    losses = Losses()
    for lock in locks:
        keeper.keep(lock, losses.callback(lock.user_id))
    await asyncio.sleep(0)  # the keeper has planned its sleep
    (short,) = await acquired_locks(client, 1, first_user=2000)
    keeper.keep(short, losses.callback(short.user_id))

    await asyncio.sleep(3 * TTL)  # what is under test is the passage of time: three of its TTLs
    assert await client.get(short.key) == short.token.encode()
    assert losses.reasons == {}


async def test_a_lock_taken_over_is_reported_lost_alone_and_no_longer_refreshed(client, keeper):
    locks = await acquired_locks(client, 20)
    losses = Losses()
    for lock in locks:
        keeper.keep(lock, losses.callback(lock.user_id))
    stolen = locks[7]
    await client.set(stolen.key, "someone-else", px=10_000)

    await losses.wait_for(1)

    assert losses.reasons == {stolen.user_id: LossReason.LOST}
    assert len(keeper) == 19
    assert await client.get(stolen.key) == b"someone-else"
    await asyncio.sleep(TTL)  # another refresh or two of the others
    assert losses.reasons == {stolen.user_id: LossReason.LOST}


async def test_a_forgotten_lock_expires_by_its_ttl_while_the_others_are_kept(client, keeper):
    kept, forgotten = await acquired_locks(client, 2)
    losses = Losses()
    keeper.keep(kept, losses.callback(kept.user_id))
    keeper.keep(forgotten, losses.callback(forgotten.user_id))
    keeper.forget(forgotten)

    async with asyncio.timeout(WAIT_LIMIT_SECONDS):
        while await client.exists(forgotten.key):
            await asyncio.sleep(TTL / 10)

    assert await client.get(kept.key) == kept.token.encode()
    assert losses.reasons == {}


async def test_the_locks_of_a_keeper_that_stopped_expire_on_their_own(client, keeper):
    """A process that dies takes its keeper with it: its locks must not outlive their TTL."""
    locks = await acquired_locks(client, 50)
    for lock in locks:
        keeper.keep(lock, Losses().callback(lock.user_id))
    await keeper.stop()
    stopped_at = time.monotonic()

    async with asyncio.timeout(WAIT_LIMIT_SECONDS):
        while await client.exists(*(lock.key for lock in locks)):
            await asyncio.sleep(TTL / 10)
    assert time.monotonic() - stopped_at <= TTL + 1.0


@pytest.mark.parametrize("failure", ["killed", "hung"])
async def test_every_lock_is_reported_unreachable_before_its_ttl_runs_out_when_redis_fails(
    private_redis: RedisServer, private_client: redis.asyncio.Redis, failure: str
) -> None:
    keeper = LockKeeper(private_client)
    locks = await acquired_locks(private_client, 30)
    losses = Losses()
    for lock in locks:
        keeper.keep(lock, losses.callback(lock.user_id))
    assert private_redis.process is not None
    if failure == "killed":
        private_redis.kill()
    else:
        private_redis.process.send_signal(signal.SIGSTOP)  # commands now wait far longer than the TTL
    try:
        await losses.wait_for(len(locks))
    finally:
        if failure == "hung":
            private_redis.process.send_signal(signal.SIGCONT)
        await keeper.stop()

    assert set(losses.reasons.values()) == {LossReason.UNREACHABLE}
    for lock in locks:
        assert lock.confirmed_at is not None
        reported_at = losses.reported_at[lock.user_id]
        assert lock.confirmed_at + TTL * (1 - SAFETY_MARGIN_FRACTION) <= reported_at < lock.confirmed_at + TTL


async def test_locks_are_still_kept_after_redis_forgot_the_refresh_script(client, keeper):
    """A restarted Redis has no scripts: the keeper's call gets NOSCRIPT, loads the script and goes on."""
    locks = await acquired_locks(client, 20)
    losses = Losses()
    for lock in locks:
        keeper.keep(lock, losses.callback(lock.user_id))
    await client.script_flush()
    await asyncio.sleep(3 * TTL)  # what is under test is the passage of time: three TTLs
    assert losses.reasons == {}
    assert await client.mget([lock.key for lock in locks]) == [lock.token.encode() for lock in locks]


async def test_keep_needs_an_acquired_lock(client, keeper):
    with pytest.raises(RuntimeError):
        keeper.keep(ConnectionLock(client, 1, ttl=TTL), Losses().callback(1))


async def test_locks_acquired_together_go_in_a_few_calls_each_taken_only_if_free(client, keeper):
    """A reconnect wave: thousands of acquires at once are a handful of script calls, each lock on its own."""
    record = b'{"user": 1}'
    locks = [ConnectionLock(client, 5000 + n, ttl=30.0, describe=lambda: record) for n in range(LOCKS)]
    await client.delete(*(lock.key for lock in locks))
    held = locks[7]
    await client.set(held.key, "someone-else", px=30_000)
    await client.config_resetstat()

    taken = await asyncio.gather(*(keeper.acquire(lock) for lock in locks))

    assert taken == [lock is not held for lock in locks]
    others = [lock for lock in locks if lock is not held]
    assert await client.mget([lock.key for lock in others]) == [lock.token.encode() for lock in others]
    assert set(await client.mget([lock.record_key for lock in others])) == {record}
    assert all(lock.confirmed_at is not None for lock in others) and held.confirmed_at is None
    assert await client.get(held.key) == b"someone-else"
    assert await evalsha_calls(client) <= 1 + -(-LOCKS // LOCKS_PER_ROUND_TRIP)
    await client.delete(*(lock.key for lock in locks), *(lock.record_key for lock in locks))


async def test_locks_released_together_go_in_a_few_calls_each_deleted_only_if_still_ours(client, keeper):
    """A close storm: thousands of releases at once are a handful of script calls, not one per lock."""
    locks = await acquired_locks(client, LOCKS, ttl=30.0)
    stolen = locks[7]
    await client.set(stolen.key, "someone-else", px=30_000)
    await client.config_resetstat()

    released = await asyncio.gather(*(keeper.release(lock) for lock in locks))

    assert released == [lock is not stolen for lock in locks]
    others = [lock for lock in locks if lock is not stolen]
    assert await client.exists(*(lock.key for lock in others), *(lock.record_key for lock in others)) == 0
    assert await client.get(stolen.key) == b"someone-else"
    assert await evalsha_calls(client) <= 1 + -(-LOCKS // LOCKS_PER_ROUND_TRIP)


async def test_a_release_redis_could_not_take_is_tried_again_until_the_lock_is_gone(
    private_redis: RedisServer, private_client: redis.asyncio.Redis
) -> None:
    """The bench's close storm: releases waited for a pooled connection until the pool's wait ran out, and their
    locks stayed for a whole TTL, answering the users' reconnects 4409."""
    pool = redis.asyncio.BlockingConnectionPool.from_url(private_redis.url, max_connections=1, timeout=0.2)
    pooled = redis.asyncio.Redis(connection_pool=pool)
    keeper = LockKeeper(pooled)
    (lock,) = await acquired_locks(private_client, 1, ttl=30.0)
    taken = await pool.get_connection()  # every connection of the pool busy
    try:
        with pytest.raises(LeaseUnavailable):
            await keeper.release(lock)
        assert await private_client.exists(lock.key, lock.record_key) == 2
        await pool.release(taken)
        async with asyncio.timeout(WAIT_LIMIT_SECONDS):  # far less than the lock's TTL
            while await private_client.exists(lock.key, lock.record_key):
                await asyncio.sleep(0.05)
    finally:
        await keeper.stop()
        await pooled.aclose()


async def test_a_release_whose_caller_was_cancelled_still_happens(client, keeper):
    (lock,) = await acquired_locks(client, 1, ttl=30.0)
    releasing = asyncio.create_task(keeper.release(lock))
    await asyncio.sleep(0)  # the task asked for the release and waits for its call
    assert not releasing.done()
    releasing.cancel()

    async with asyncio.timeout(WAIT_LIMIT_SECONDS):
        while await client.exists(lock.key, lock.record_key):
            await asyncio.sleep(0.05)
