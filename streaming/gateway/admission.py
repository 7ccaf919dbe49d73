"""One connection's admission: the 4401 rules, the connection lock (4409, or 1011 without Redis), then live re-checks.

Admission runs once per connection, with the key of the handshake or of the client's ``{"action":"auth"}``
message: ``rules.decide`` on the resolved key, then the user's ``ConnectionLock``, then ``auth_success``. While the
connection is admitted its lock is kept alive, and a change to the user's keys, account or plans runs the rules
again. ``Admission`` owns what it takes (the entitlement, the locks, the registration for re-checks) and gives it
back in ``release``; it moves the connection's phase up to ``ADMITTED`` and reaches the connection only through
``Candidate``.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from accounts.keys import Denial, Entitlement
from streaming import metrics
from streaming.conf import FAILURE_MODE_OPEN, stream_settings
from streaming.exceptions import LeaseUnavailable
from streaming.gateway.credentials import (
    SOURCE_MESSAGE,
    Credential,
    MalformedCredential,
    ResolutionFailed,
    StreamAuth,
    resolve_credential,
)
from streaming.gateway.fairness import BLOCKED_MESSAGE, AddressBudgets, PendingSocket
from streaming.gateway.key_usage import KeyUsage
from streaming.gateway.rechecks import ControlListener, Recheckable
from streaming.gateway.rules import Rejection, Rule, decide, reject
from streaming.runtime.lease import LossReason
from streaming.runtime.lock import ConnectionLock, local_locks
from streaming.runtime.lock_keeper import LockKeeper
from streaming.runtime.redis_client import redis_client
from streaming.runtime.tasks import BackgroundTasks

logger = logging.getLogger(__name__)

RECHECK_RETRY_SECONDS = 2.0
LOCK_RETRY_FIRST_DELAY = 0.05
LOCK_RETRY_MAX_DELAY = 0.25


class Phase(enum.Enum):
    """Where a connection stands. Admission moves it up to ADMITTED; the consumer moves it on to CLOSED."""

    AWAITING_AUTH = "awaiting_auth"  # no key in the handshake: waiting for {"action":"auth"}
    REJECTING = "rejecting"  # a 4401 is decided, waiting briefly for the client's auth message
    ADMITTED = "admitted"
    CLOSING = "closing"  # the close is decided and on its way; nothing else is sent or processed
    CLOSED = "closed"


class Candidate(Recheckable, Protocol):
    """What admission needs from the connection it admits or turns away."""

    market: str
    phase: Phase

    async def open_stream(self) -> None:
        """Tell the client it is admitted (``auth_success``) and start serving its stream (phase ADMITTED)."""

    async def close_with(self, rejection: Rejection) -> None:
        """Send the rejection's status message, then close with its code."""

    def live_record(self, entitlement: Entitlement) -> bytes:
        """The connection's record for operators (``live_connections``), written with its lock."""


async def acquire_patiently(attempt: Callable[[], Awaitable[bool]], wait: float) -> bool:
    """A client that closes and reconnects at once races its old connection's release (which follows the
    close handshake): *attempt* to take the lock again for a short while before answering 4409."""
    deadline = time.monotonic() + wait
    delay = LOCK_RETRY_FIRST_DELAY
    while not await attempt():
        if time.monotonic() + delay > deadline:
            return False
        await asyncio.sleep(delay)
        delay = min(delay * 2, LOCK_RETRY_MAX_DELAY)
    return True


class Admission:
    """The admission of one connection, from its first key to its close. Create one per connection."""

    def __init__(self, candidate: Candidate, tasks: BackgroundTasks) -> None:
        self._candidate = candidate
        self._tasks = tasks  # the connection's: cancelled when it closes
        self.entitlement: Entitlement | None = None
        self.credential: Credential | None = None
        self.lock: ConnectionLock | None = None
        self.local_lock: tuple[int, str] | None = None  # (user id, token) in this process's LocalLocks (fail-open)
        self._control: ControlListener | None = None
        self._pending_rejection: Rejection | None = None
        self._address = ""
        self._pending_socket: PendingSocket | None = None

    async def start(self, auth: StreamAuth) -> None:
        """Admit with the handshake's key, or wait for the client's auth message if the handshake had none; an
        address over its budget is refused at once (1013)."""
        self._address = auth.address
        self._pending_socket = auth.pending
        if auth.refusal is not None:
            await self._candidate.close_with(reject(Rule.ADDRESS_OVER_BUDGET, reason=auth.refusal))
            return
        credential = auth.credential
        if credential is None:
            self._tasks.spawn(self._expire_auth_wait())
        elif isinstance(credential, MalformedCredential):
            self._reject_after_grace(reject(Rule.MALFORMED_CREDENTIAL, problem=credential.problem))
        else:
            await self.admit(credential, auth.outcome, from_handshake=True)

    async def admit(
        self,
        credential: Credential,
        outcome: Entitlement | Denial | ResolutionFailed | None,
        from_handshake: bool,
    ) -> None:
        market = self._candidate.market
        upstream_configured = stream_settings().upstream(market) is not None
        decision = decide(market, outcome, upstream_configured)
        if isinstance(decision, Rejection):
            if from_handshake:
                self._reject_after_grace(decision)
            else:
                await self._candidate.close_with(decision)
            return
        rejection = await self._acquire_lock(decision)
        if rejection is not None:
            await self._candidate.close_with(rejection)
            return
        self.entitlement = decision
        self.credential = credential
        if self._pending_socket is not None:
            self._pending_socket.release()  # admitted: no longer one of its address's waiting sockets
        metrics.admitted(market)
        await self._candidate.open_stream()
        self._control = ControlListener.for_loop()
        if self._control is not None:
            self._control.register(decision.user_id, self._candidate)
        logger.info(
            "stream accepted user=%s key=%s market=%s plan=%s via=%s",
            decision.user_id, decision.key_prefix, market, decision.plan, credential.source,
        )
        KeyUsage.for_loop().note(decision.key_id)

    async def admit_message_key(self, key: str) -> None:
        """Admit with the key of the client's auth message, unless its address may not have keys looked up."""
        budgets = AddressBudgets.for_loop()
        if key and budgets.is_blocked(self._address):
            await self._candidate.close_with(reject(Rule.ADDRESS_OVER_BUDGET, reason=BLOCKED_MESSAGE))
            return
        credential = Credential(SOURCE_MESSAGE, key)
        outcome = await resolve_credential(credential) if key else None
        if isinstance(outcome, Denial):
            budgets.resolution_failed(self._address)
        await self.admit(credential, outcome, from_handshake=False)

    async def reject_now(self) -> None:
        """The client's auth message came before the grace period ended: it gets the pending rejection at once."""
        if self._pending_rejection is not None:
            await self._candidate.close_with(self._pending_rejection)

    def recheck(self) -> None:
        """A key, account or plan of this user changed (``ControlListener``): run the 4401 rules again."""
        self._tasks.spawn(self._recheck())

    async def release(self) -> None:
        """Give back what admission took. Safe to repeat: the consumer releases at once when the client leaves,
        and again when it ends."""
        if self._pending_socket is not None:
            self._pending_socket.release()
        if self.lock is not None:
            lock, self.lock = self.lock, None
            try:
                await LockKeeper.for_loop().release(lock)
            except LeaseUnavailable:
                if lock.confirmed_at is not None:
                    logger.warning("lock of user %s not released yet (Redis unreachable); retrying until it expires",
                                   lock.user_id)
        if self.local_lock is not None:
            local_locks.release(*self.local_lock)
            self.local_lock = None
        if self._control is not None and self.entitlement is not None:
            self._control.unregister(self.entitlement.user_id, self._candidate)
            self._control = None

    # --- the connection lock --------------------------------------------------------------------------------------

    async def _acquire_lock(self, entitlement: Entitlement) -> Rejection | None:
        settings = stream_settings()
        lock = ConnectionLock(
            redis_client(), entitlement.user_id, ttl=settings.lock_ttl,
            describe=functools.partial(self._candidate.live_record, entitlement),
        )
        fail_open = settings.lock_failure_mode == FAILURE_MODE_OPEN
        if fail_open:
            # In open mode the per-process lock is always taken too, so that it still holds if Redis comes back.
            if not local_locks.try_acquire(entitlement.user_id, lock.token):
                return reject(Rule.ALREADY_CONNECTED)
            self.local_lock = (entitlement.user_id, lock.token)
        self.lock = lock  # released on every exit path; the release is token-checked, so always safe
        try:
            attempt = functools.partial(LockKeeper.for_loop().acquire, lock)
            acquired = await acquire_patiently(attempt, settings.lock_wait)
        except LeaseUnavailable:
            if not fail_open:
                logger.error("admission refused: Redis unreachable (STREAM_LOCK_FAILURE_MODE=closed)")
                return reject(Rule.LOCK_UNAVAILABLE)
            logger.critical(
                "FAIL-OPEN admission of user %s without the Redis lock (only this process is checked)",
                entitlement.user_id,
            )
            return None
        if not acquired:
            return reject(Rule.ALREADY_CONNECTED)
        LockKeeper.for_loop().keep(lock, self._on_lock_lost)
        return None

    def _on_lock_lost(self, reason: LossReason) -> None:
        self._tasks.spawn(self._close_for_lost_lock(reason))

    async def _close_for_lost_lock(self, reason: LossReason) -> None:
        metrics.lock_refresh_failure(reason.value)
        if reason is LossReason.LOST:
            await self._candidate.close_with(reject(Rule.ALREADY_CONNECTED))
        else:
            logger.error("lock refresh failing for user %s: closing before the lock could expire",
                         self.entitlement.user_id if self.entitlement else None)
            await self._candidate.close_with(reject(Rule.LOCK_UNAVAILABLE))

    # --- waiting for the client -----------------------------------------------------------------------------------

    async def _expire_auth_wait(self) -> None:
        await asyncio.sleep(stream_settings().auth_timeout)
        if self._candidate.phase is Phase.AWAITING_AUTH:
            await self._candidate.close_with(reject(Rule.AUTH_TIMEOUT))

    def _reject_after_grace(self, rejection: Rejection) -> None:
        """Official clients read ``connected``, send their auth message, and take only the *next* frame as the
        verdict; answering that message (or a short grace period) makes them surface an auth error, not retry."""
        self._candidate.phase = Phase.REJECTING
        self._pending_rejection = rejection
        self._tasks.spawn(self._reject_when_grace_ends())

    async def _reject_when_grace_ends(self) -> None:
        await asyncio.sleep(stream_settings().reject_grace)
        if self._candidate.phase is Phase.REJECTING and self._pending_rejection is not None:
            await self._candidate.close_with(self._pending_rejection)

    # --- live re-checks -------------------------------------------------------------------------------------------

    async def _recheck(self) -> None:
        """The admission rules again, with fresh data; while the data cannot be read (Redis or the database
        unreachable), try again every ``RECHECK_RETRY_SECONDS`` rather than cut a stream that may be entitled."""
        entitlement, credential = self.entitlement, self.credential
        if entitlement is None or credential is None:
            return  # not admitted: nothing to re-check
        while self._candidate.phase is Phase.ADMITTED:
            outcome = await resolve_credential(credential)
            if not isinstance(outcome, ResolutionFailed):
                break
            logger.warning("re-check of user %s postponed: the key could not be resolved", entitlement.user_id)
            await asyncio.sleep(RECHECK_RETRY_SECONDS)
        else:
            return
        decision = decide(self._candidate.market, outcome, True)
        if isinstance(decision, Rejection):
            logger.info("stream revoked user=%s rule=%s", entitlement.user_id, decision.rule)
            await self._candidate.close_with(decision)
