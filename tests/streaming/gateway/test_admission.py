"""Admission without a socket: the lock's patience against real Redis, and what an ``Admission`` decides, takes and
gives back, with a stand-in for the connection that records what admission asks of it. The same sequence through
the real consumer and middleware is in test_consumer_admission.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from itertools import pairwise

import pytest
import redis.asyncio
from channels.db import database_sync_to_async
from django.conf import settings

from accounts.keys import Denial, DenialReason, Entitlement
from accounts.models import ApiKey
from streaming import codes
from streaming.gateway.admission import (
    LOCK_RETRY_FIRST_DELAY,
    LOCK_RETRY_MAX_DELAY,
    Admission,
    Phase,
    acquire_patiently,
)
from streaming.gateway.credentials import (
    SOURCE_HEADER,
    SOURCE_MESSAGE,
    Credential,
    MalformedCredential,
    StreamAuth,
    resolve_credential,
)
from streaming.gateway.rechecks import ControlListener
from streaming.gateway.rules import Rejection, Rule
from streaming.runtime.lock import KEY_PREFIX, ConnectionLock, local_locks
from streaming.runtime.tasks import BackgroundTasks
from tests.accounts.factories import make_key, make_user

TIMEOUT = 5
USER = 7
CLOCK_SLACK = 0.002  # asyncio may wake a sleeper up to a clock tick early


class Applicant:
    """A connection without a socket (a ``Candidate``): it keeps its phase and records what admission asks."""

    def __init__(self, market: str = "options") -> None:
        self.market = market
        self.phase = Phase.AWAITING_AUTH
        self.rejections: asyncio.Queue[Rejection] = asyncio.Queue()
        self.streams_opened = 0
        self.rechecks = 0
        self.disconnects = 0

    async def open_stream(self) -> None:
        self.streams_opened += 1
        self.phase = Phase.ADMITTED

    async def close_with(self, rejection: Rejection) -> None:
        self.phase = Phase.CLOSED
        self.rejections.put_nowait(rejection)

    def recheck(self) -> None:
        self.rechecks += 1

    def force_disconnect(self) -> None:
        self.disconnects += 1

    def live_record(self, entitlement: Entitlement) -> bytes:
        return b'{"user_id":%d,"key_prefix":"%s"}' % (entitlement.user_id, entitlement.key_prefix.encode())


class WatchedLock(ConnectionLock):
    """A real connection lock that reports each attempt to take it: when it started and what Redis answered."""

    def __init__(self, client: redis.asyncio.Redis, user_id: int) -> None:
        super().__init__(client, user_id)
        self.attempts: list[tuple[float, bool]] = []
        self.attempted = asyncio.Event()

    async def acquire(self) -> bool:
        started = time.monotonic()
        acquired = await super().acquire()
        self.attempts.append((started, acquired))
        self.attempted.set()
        return acquired


@pytest.fixture
async def client() -> AsyncIterator[redis.asyncio.Redis]:
    connection = redis.asyncio.Redis.from_url(settings.REDIS_URL)
    yield connection
    await connection.aclose()


@pytest.fixture
async def tasks() -> AsyncIterator[BackgroundTasks]:
    """The connection's tasks (lock keeper, timers, re-checks), stopped as the consumer's would be."""
    background = BackgroundTasks()
    yield background
    await background.stop()


@pytest.fixture
async def entitled(stream_config) -> tuple[Credential, Entitlement]:
    """A customer's key on a plan with stream access, resolved the way the middleware resolves it (the test needs
    ``django_db(transaction=True)``: the key is written and read from worker threads)."""

    def create_key() -> str:
        return make_key(make_user("trader", plans={"options": "expert"}), "options")[1]

    credential = Credential(SOURCE_HEADER, await database_sync_to_async(create_key)())
    outcome = await resolve_credential(credential)
    assert isinstance(outcome, Entitlement)
    return credential, outcome


# --- the connection lock's patience ---------------------------------------------------------------------------------


async def test_a_lock_released_while_waiting_is_taken(client):
    """The reconnect race: the old connection's lock goes while the new one waits for it."""
    holder = ConnectionLock(client, USER)
    assert await holder.acquire()
    newcomer = WatchedLock(client, USER)
    waiting = asyncio.ensure_future(acquire_patiently(newcomer.acquire, wait=TIMEOUT))
    await asyncio.wait_for(newcomer.attempted.wait(), TIMEOUT)
    assert newcomer.attempts[0][1] is False  # the old connection still held it
    assert await holder.release()
    assert await asyncio.wait_for(waiting, TIMEOUT)
    assert await client.get(newcomer.key) == newcomer.token.encode()


async def test_a_lock_held_throughout_is_refused_with_retries_that_back_off(client):
    wait = 0.5
    assert await ConnectionLock(client, USER).acquire()
    newcomer = WatchedLock(client, USER)
    started = time.monotonic()
    assert not await acquire_patiently(newcomer.acquire, wait)
    gave_up_after = time.monotonic() - started
    assert not any(acquired for _, acquired in newcomer.attempts)
    # Retries start at LOCK_RETRY_FIRST_DELAY and double up to LOCK_RETRY_MAX_DELAY; none would end past the wait.
    assert 2 <= len(newcomer.attempts) <= 4
    starts = [attempt_started for attempt_started, _ in newcomer.attempts]
    delays = [min(LOCK_RETRY_FIRST_DELAY * 2**retry, LOCK_RETRY_MAX_DELAY) for retry in range(len(starts) - 1)]
    for (earlier, later), delay in zip(pairwise(starts), delays, strict=True):
        assert later - earlier >= delay - CLOCK_SLACK
    assert gave_up_after >= wait - LOCK_RETRY_MAX_DELAY  # it gave up only when the next retry would overrun


async def test_without_patience_a_held_lock_is_refused_after_one_attempt(client):
    assert await ConnectionLock(client, USER).acquire()
    newcomer = WatchedLock(client, USER)
    assert not await acquire_patiently(newcomer.acquire, wait=0)
    assert len(newcomer.attempts) == 1


# --- rejections and the phases they drive ---------------------------------------------------------------------------


async def test_a_handshake_rejection_waits_for_the_grace_period(stream_config, tasks):
    applicant = Applicant()
    unknown_key = StreamAuth(Credential(SOURCE_HEADER, "cmo_x"), Denial(DenialReason.UNKNOWN))
    await Admission(applicant, tasks).start(unknown_key)
    assert applicant.phase is Phase.REJECTING and applicant.rejections.empty()
    rejection = await asyncio.wait_for(applicant.rejections.get(), TIMEOUT)  # STREAM_REJECT_GRACE later
    assert (rejection.code, rejection.rule) == (codes.CloseCode.UNAUTHORIZED, Rule.INVALID_KEY)


async def test_the_clients_auth_message_gets_the_pending_rejection_at_once(stream_config, tasks):
    stream_config.STREAM_REJECT_GRACE = 30
    applicant = Applicant()
    admission = Admission(applicant, tasks)
    await admission.start(StreamAuth(MalformedCredential(SOURCE_HEADER, "several Authorization headers")))
    assert applicant.phase is Phase.REJECTING
    await admission.reject_now()
    rejection = applicant.rejections.get_nowait()
    assert rejection.rule is Rule.MALFORMED_CREDENTIAL and "several Authorization headers" in rejection.message


async def test_an_auth_message_rejection_closes_at_once(stream_config, tasks):
    applicant = Applicant()
    await Admission(applicant, tasks).admit(Credential(SOURCE_MESSAGE, ""), None, from_handshake=False)
    assert applicant.rejections.get_nowait().rule is Rule.MISSING_KEY


async def test_no_key_and_no_auth_message_in_time_is_an_auth_timeout(stream_config, tasks):
    stream_config.STREAM_AUTH_TIMEOUT = 0.05
    applicant = Applicant()
    await Admission(applicant, tasks).start(StreamAuth(credential=None))
    assert applicant.phase is Phase.AWAITING_AUTH
    rejection = await asyncio.wait_for(applicant.rejections.get(), TIMEOUT)
    assert (rejection.status, rejection.rule) == (codes.Status.AUTH_TIMEOUT, Rule.AUTH_TIMEOUT)


# --- what an admission takes and gives back -------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
async def test_an_admission_holds_the_users_lock_until_it_is_released(stream_config, tasks, entitled, clean_redis):
    credential, entitlement = entitled
    applicant = Applicant()
    admission = Admission(applicant, tasks)
    await admission.admit(credential, entitlement, from_handshake=True)
    assert (applicant.phase, applicant.streams_opened) == (Phase.ADMITTED, 1)
    assert (admission.entitlement, admission.credential) == (entitlement, credential)
    lock_key = f"{KEY_PREFIX}{entitlement.user_id}"
    assert admission.lock is not None and clean_redis.get(lock_key) == admission.lock.token.encode()

    stream_config.STREAM_LOCK_WAIT = 0
    rival = Applicant()
    rival_admission = Admission(rival, tasks)
    await rival_admission.admit(credential, entitlement, from_handshake=True)
    assert rival.rejections.get_nowait().rule is Rule.ALREADY_CONNECTED
    await rival_admission.release()
    assert clean_redis.get(lock_key) == admission.lock.token.encode()  # the release is the holder's alone

    await admission.release()
    assert not clean_redis.exists(lock_key)
    await admission.release()  # the consumer releases twice: at disconnect and when it ends


@pytest.mark.django_db(transaction=True)
async def test_an_admission_is_registered_for_rechecks_until_it_is_released(stream_config, tasks, entitled):
    credential, entitlement = entitled
    applicant = Applicant()
    admission = Admission(applicant, tasks)
    await admission.admit(credential, entitlement, from_handshake=True)
    listener = ControlListener.for_loop()
    assert listener is not None
    await asyncio.wait_for(listener.joined.wait(), TIMEOUT)
    assert applicant.rechecks == 1  # the first join re-checks every connection registered before it
    assert listener.recheck([entitlement.user_id]) == 1
    assert listener.disconnect([entitlement.user_id + 1]) == 0
    assert listener.disconnect([entitlement.user_id]) == 1 and applicant.disconnects == 1
    await admission.release()
    assert listener.recheck([entitlement.user_id]) == 0


@pytest.mark.django_db(transaction=True)
async def test_the_lock_is_taken_with_the_connections_record_and_released_with_it(stream_config, tasks, entitled):
    credential, entitlement = entitled
    admission = Admission(Applicant(), tasks)
    await admission.admit(credential, entitlement, from_handshake=True)
    lock = admission.lock
    assert lock is not None
    assert await lock.redis.get(lock.record_key) == Applicant().live_record(entitlement)
    assert await lock.redis.pttl(lock.record_key) > 0
    await admission.release()
    assert not await lock.redis.exists(lock.key, lock.record_key)


@pytest.mark.django_db(transaction=True)
async def test_fail_open_mode_takes_the_process_local_lock_too(stream_config, tasks, entitled):
    stream_config.STREAM_LOCK_FAILURE_MODE = "open"
    credential, entitlement = entitled
    admission = Admission(Applicant(), tasks)
    await admission.admit(credential, entitlement, from_handshake=True)
    assert admission.lock is not None and admission.local_lock == (entitlement.user_id, admission.lock.token)
    assert not local_locks.try_acquire(entitlement.user_id, "another connection")
    await admission.release()
    assert local_locks.try_acquire(entitlement.user_id, "another connection")
    local_locks.release(entitlement.user_id, "another connection")


@pytest.mark.django_db(transaction=True)
async def test_a_recheck_after_revocation_closes_4401(stream_config, tasks, entitled):
    credential, entitlement = entitled
    applicant = Applicant()
    admission = Admission(applicant, tasks)
    await admission.admit(credential, entitlement, from_handshake=True)
    await database_sync_to_async(lambda: ApiKey.objects.get(pk=entitlement.key_id).revoke())()
    admission.recheck()
    rejection = await asyncio.wait_for(applicant.rejections.get(), TIMEOUT)
    assert (rejection.code, rejection.rule) == (codes.CloseCode.UNAUTHORIZED, Rule.REVOKED_KEY)
    await admission.release()
