"""The per-user stream lock against real redis-servers: the shared test instance, and private ones to kill."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time

import pytest
import redis.asyncio
import redis.exceptions
from django.conf import settings

from devstack.redis_server import RedisServer
from streaming.exceptions import LeaseUnavailable
from streaming.runtime.lease import SAFETY_MARGIN_FRACTION, LossReason, hold
from streaming.runtime.lock import KEY_PREFIX, RECORD_KEY_PREFIX, ConnectionLock, LocalLocks

USER = 7
OTHER_USER = 8
SHORT_TTL = 0.3
# Long enough that a keeper test never races the clock on a loaded machine, short enough to keep the file fast.
KEEPER_TTL = 0.9
POLL_SECONDS = 0.01
WAIT_LIMIT_SECONDS = 5.0
CONCURRENT_CONNECTIONS = 200
CANCEL_ATTEMPTS = 150
CANCEL_TTL = 0.03


class LossRecorder:
    """The ``on_lost`` callback of `hold`: remembers the reason and when it was reported."""

    def __init__(self) -> None:
        self.reported = asyncio.Event()
        self.reason: LossReason | None = None
        self.reported_at: float | None = None

    async def __call__(self, reason: LossReason) -> None:
        self.reported_at = time.monotonic()
        self.reason = reason
        self.reported.set()


async def wait_for_key_to_vanish(client: redis.asyncio.Redis, key: str) -> None:
    async with asyncio.timeout(WAIT_LIMIT_SECONDS):
        while await client.exists(key):
            await asyncio.sleep(POLL_SECONDS)


async def test_acquire_stores_the_token_with_the_ttl(client: redis.asyncio.Redis) -> None:
    lock = ConnectionLock(client, USER, ttl=1.0)

    assert await lock.acquire()

    assert lock.key == f"{KEY_PREFIX}{USER}" == "cm:stream-lock:user:7"
    assert await client.get(lock.key) == lock.token.encode()
    assert 900 < await client.pttl(lock.key) <= 1000
    assert lock.refresh_interval == pytest.approx(1.0 / 3)


async def test_each_connection_gets_its_own_random_token(client: redis.asyncio.Redis) -> None:
    first, second = ConnectionLock(client, USER), ConnectionLock(client, USER)

    assert first.token != second.token
    assert len(first.token) == 32


async def test_second_acquire_for_the_same_user_fails_while_the_first_holds(client: redis.asyncio.Redis) -> None:
    first, second = ConnectionLock(client, USER), ConnectionLock(client, USER)

    assert await first.acquire()
    assert not await second.acquire()
    assert await client.get(first.key) == first.token.encode()


async def test_different_users_are_independent(client: redis.asyncio.Redis) -> None:
    assert await ConnectionLock(client, USER).acquire()
    assert await ConnectionLock(client, OTHER_USER).acquire()


async def test_refresh_resets_the_ttl(client: redis.asyncio.Redis) -> None:
    lock = ConnectionLock(client, USER, ttl=1.0)
    await lock.acquire()
    await client.pexpire(lock.key, 100)  # as if most of the TTL had passed

    assert await lock.refresh()

    assert 900 < await client.pttl(lock.key) <= 1000


async def test_refresh_after_the_key_was_replaced_reports_lost(client: redis.asyncio.Redis) -> None:
    lock = ConnectionLock(client, USER, ttl=1.0)
    await lock.acquire()
    await client.set(lock.key, "someone-else", px=500)

    assert not await lock.refresh()

    assert await client.get(lock.key) == b"someone-else"
    assert await client.pttl(lock.key) <= 500


async def test_refresh_after_the_key_expired_reports_lost(client: redis.asyncio.Redis) -> None:
    lock = ConnectionLock(client, USER, ttl=SHORT_TTL)
    await lock.acquire()
    await wait_for_key_to_vanish(client, lock.key)

    assert not await lock.refresh()

    assert not await client.exists(lock.key)


async def test_release_deletes_only_our_own_token(client: redis.asyncio.Redis) -> None:
    owner, other = ConnectionLock(client, USER), ConnectionLock(client, USER)
    await owner.acquire()

    assert not await other.release()
    assert await client.get(owner.key) == owner.token.encode()

    assert await owner.release()
    assert not await client.exists(owner.key)


async def test_release_is_idempotent_and_safe_after_loss(client: redis.asyncio.Redis) -> None:
    lock = ConnectionLock(client, USER)
    await lock.acquire()

    assert await lock.release()
    assert not await lock.release()

    successor = ConnectionLock(client, USER)
    assert await successor.acquire()
    assert not await lock.release()
    assert await client.get(successor.key) == successor.token.encode()


async def test_the_lock_of_a_crashed_connection_expires_by_itself(client: redis.asyncio.Redis) -> None:
    crashed = ConnectionLock(client, USER, ttl=SHORT_TTL)
    await crashed.acquire()  # then never refreshed nor released
    successor = ConnectionLock(client, USER)
    assert not await successor.acquire()

    async with asyncio.timeout(WAIT_LIMIT_SECONDS):
        while not await successor.acquire():
            await asyncio.sleep(POLL_SECONDS)

    assert crashed.confirmed_at is not None
    assert time.monotonic() >= crashed.confirmed_at + SHORT_TTL


async def test_redis_down_raises_lock_unavailable(
    private_redis: RedisServer, private_client: redis.asyncio.Redis
) -> None:
    held = ConnectionLock(private_client, USER)
    await held.acquire()
    private_redis.kill()

    with pytest.raises(LeaseUnavailable) as raised:
        await ConnectionLock(private_client, OTHER_USER).acquire()
    assert isinstance(raised.value.__cause__, redis.exceptions.ConnectionError)
    with pytest.raises(LeaseUnavailable):
        await held.refresh()
    with pytest.raises(LeaseUnavailable):
        await held.release()


async def test_after_a_redis_restart_the_same_and_a_fresh_client_work_again(
    private_redis: RedisServer, private_client: redis.asyncio.Redis
) -> None:
    before = ConnectionLock(private_client, USER)
    await before.acquire()
    private_redis.kill()
    private_redis.start()  # same directory, same socket; nothing persisted
    with contextlib.suppress(LeaseUnavailable):
        await before.refresh()  # the pooled connection died with the old server (from_url clients do not retry)

    assert not await before.refresh()  # the key died with it too
    after = ConnectionLock(private_client, USER)
    assert await after.acquire()
    assert await after.refresh()  # the scripts are loaded again on the new server
    async with redis.asyncio.Redis.from_url(private_redis.url) as fresh_client:
        assert not await ConnectionLock(fresh_client, USER).acquire()
        assert await ConnectionLock(fresh_client, OTHER_USER).acquire()


async def test_exactly_one_of_many_concurrent_acquires_wins() -> None:
    clients = [redis.asyncio.Redis.from_url(settings.REDIS_URL) for _ in range(CONCURRENT_CONNECTIONS)]
    try:
        locks = [ConnectionLock(connection, USER) for connection in clients]

        results = await asyncio.gather(*(lock.acquire() for lock in locks))

        assert results.count(True) == 1
        winner = locks[results.index(True)]
        assert await clients[0].get(winner.key) == winner.token.encode()
    finally:
        await asyncio.gather(*(connection.aclose() for connection in clients))


async def test_hold_keeps_the_lock_alive_across_several_ttls_and_stops_when_cancelled(
    client: redis.asyncio.Redis,
) -> None:
    lock = ConnectionLock(client, USER, ttl=SHORT_TTL)
    await lock.acquire()
    on_lost = LossRecorder()
    keeper = asyncio.create_task(hold(lock, on_lost))

    until = time.monotonic() + 4 * SHORT_TTL
    while time.monotonic() < until:
        assert await client.get(lock.key) == lock.token.encode()
        await asyncio.sleep(SHORT_TTL / 10)
    keeper.cancel()
    with pytest.raises(asyncio.CancelledError):
        await keeper

    assert not on_lost.reported.is_set()
    assert await client.get(lock.key) == lock.token.encode()
    assert await lock.release()


async def test_hold_reports_lost_when_the_token_is_replaced(client: redis.asyncio.Redis) -> None:
    lock = ConnectionLock(client, USER, ttl=KEEPER_TTL)
    await lock.acquire()
    on_lost = LossRecorder()
    keeper = asyncio.create_task(hold(lock, on_lost))
    await client.set(lock.key, "someone-else", px=10_000)

    async with asyncio.timeout(WAIT_LIMIT_SECONDS):
        await keeper

    assert on_lost.reason is LossReason.LOST
    assert await client.get(lock.key) == b"someone-else"


async def test_hold_reports_unreachable_before_the_ttl_runs_out_when_redis_dies(
    private_redis: RedisServer, private_client: redis.asyncio.Redis
) -> None:
    lock = ConnectionLock(private_client, USER, ttl=KEEPER_TTL)
    await lock.acquire()
    on_lost = LossRecorder()
    keeper = asyncio.create_task(hold(lock, on_lost))
    private_redis.kill()

    async with asyncio.timeout(WAIT_LIMIT_SECONDS):
        await keeper

    assert on_lost.reason is LossReason.UNREACHABLE
    assert on_lost.reported_at is not None and lock.confirmed_at is not None
    assert on_lost.reported_at < lock.confirmed_at + KEEPER_TTL
    assert on_lost.reported_at >= lock.confirmed_at + KEEPER_TTL * (1 - SAFETY_MARGIN_FRACTION)


async def test_hold_reports_unreachable_in_time_when_redis_hangs(
    private_redis: RedisServer, private_client: redis.asyncio.Redis
) -> None:
    lock = ConnectionLock(private_client, USER, ttl=KEEPER_TTL)
    await lock.acquire()
    on_lost = LossRecorder()
    keeper = asyncio.create_task(hold(lock, on_lost))
    assert private_redis.process is not None
    private_redis.process.send_signal(signal.SIGSTOP)  # commands now wait far longer than the TTL
    try:
        async with asyncio.timeout(WAIT_LIMIT_SECONDS):
            await keeper
    finally:
        private_redis.process.send_signal(signal.SIGCONT)

    assert on_lost.reason is LossReason.UNREACHABLE
    assert on_lost.reported_at is not None and lock.confirmed_at is not None
    assert on_lost.reported_at < lock.confirmed_at + KEEPER_TTL


async def test_cancelling_hold_always_ends_it(client: redis.asyncio.Redis) -> None:
    """Cancels landing at every point of the refresh cycle, including as a reply arrives (python/cpython#86296)."""
    for attempt in range(CANCEL_ATTEMPTS):
        lock = ConnectionLock(client, USER, ttl=CANCEL_TTL)
        await lock.acquire()
        keeper = asyncio.create_task(hold(lock, LossRecorder()))
        await asyncio.sleep(attempt * CANCEL_TTL / 2 / CANCEL_ATTEMPTS)
        keeper.cancel()

        await asyncio.wait({keeper}, timeout=WAIT_LIMIT_SECONDS)
        assert keeper.done(), f"the keeper ignored the cancel of attempt {attempt}"
        await lock.release()


async def test_hold_needs_an_acquired_lock(client: redis.asyncio.Redis) -> None:
    with pytest.raises(RuntimeError):
        await hold(ConnectionLock(client, USER), LossRecorder())


async def test_ttl_must_be_positive(client: redis.asyncio.Redis) -> None:
    with pytest.raises(ValueError):
        ConnectionLock(client, USER, ttl=0)


def test_local_locks_allow_one_token_per_user() -> None:
    locks = LocalLocks()

    assert locks.try_acquire(USER, "first")
    assert not locks.try_acquire(USER, "second")
    assert locks.try_acquire(OTHER_USER, "second")

    assert not locks.release(USER, "second")
    assert locks.release(USER, "first")
    assert not locks.release(USER, "first")
    assert locks.try_acquire(USER, "third")


async def test_the_record_lives_exactly_as_long_as_the_lock(client):
    """Written by the acquire, rewritten by each refresh (with the lock's TTL), deleted by the release; a lock that
    was lost leaves the new holder's record alone."""
    counter = iter(range(100))
    holder = ConnectionLock(client, USER, ttl=5.0, describe=lambda: b'{"n":%d}' % next(counter))
    record_key = f"{RECORD_KEY_PREFIX}{USER}"
    assert await holder.acquire()
    assert await client.get(record_key) == b'{"n":0}'
    assert 4000 < await client.pttl(record_key) <= 5000
    assert await holder.refresh()
    _, (held,) = await ConnectionLock.refresh_together(client, [holder])
    assert held and await client.get(record_key) == b'{"n":2}'

    successor = ConnectionLock(client, USER, describe=lambda: b'{"successor":1}')
    assert not await successor.acquire()
    assert await client.get(record_key) == b'{"n":2}'  # a refused acquire writes nothing
    await client.delete(holder.key)  # the holder's lock expired, say
    assert await successor.acquire()
    assert not await holder.refresh()
    assert await client.get(record_key) == b'{"successor":1}'
    assert not await holder.release()
    assert await client.exists(successor.key, record_key) == 2
    assert await successor.release()
    assert await client.exists(successor.key, record_key) == 0


async def test_a_refresh_sends_the_record_only_when_it_changed_and_keeps_it_alive_either_way(client):
    record = [b'{"events":0}']
    lock = ConnectionLock(client, USER, ttl=5.0, describe=lambda: record[0])
    record_key = f"{RECORD_KEY_PREFIX}{USER}"
    assert await lock.acquire()
    await client.pexpire(record_key, 100)  # as if time had passed: the refresh must give it the lock's TTL again
    keys, arguments = ConnectionLock._refresh_many_arguments([lock])
    assert arguments[-1] == b""  # unchanged: nothing to send
    assert await lock.refresh()
    assert await client.get(record_key) == record[0] and await client.pttl(record_key) > 4000

    record[0] = b'{"events":7}'
    await ConnectionLock.refresh_together(client, [lock])  # sent, but not confirmed (a call the keeper gave up on)
    assert ConnectionLock._refresh_many_arguments([lock])[1][-1] == record[0]  # so the next refresh sends it again
    assert await lock.refresh()
    assert await client.get(record_key) == b'{"events":7}'
    assert ConnectionLock._refresh_many_arguments([lock])[1][-1] == b""
