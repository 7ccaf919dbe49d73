"""The WebSocket consumer: admits one client (key, plan, market, connection lock) and then serves its stream.

Every socket is accepted first, because a close before accept reaches the client as an HTTP 403 with the close
code lost; the contract's codes (4401, 4409, 1011) are delivered after a status message in the feed's own shape.
Clients that cannot send headers (official SDKs) authenticate with ``{"action":"auth"}`` instead, exactly as on
the upstream feed; their later messages wait, in order, until admission is decided.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time

import redis.exceptions
from channels.consumer import get_handler_name
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer

from accounts.keys import Entitlement
from streaming import codes, metrics
from streaming.exceptions import LeaseUnavailable, UpstreamError
from streaming.gateway import protocol
from streaming.gateway.rules import Rejection, Rule, decide, reject
from streaming.conf import FAILURE_MODE_OPEN, stream_settings
from streaming.gateway.rechecks import ControlListener
from streaming.gateway.credentials import (
    SOURCE_MESSAGE,
    Credential,
    MalformedCredential,
    ResolutionFailed,
    StreamAuth,
    resolve_credential,
)
from streaming.daphne.flow_control import get_flow_control
from streaming.hub.hub import UpstreamHub
from streaming.gateway.key_usage import KeyUsage
from streaming.runtime.lease import LossReason, hold
from streaming.runtime.lock import ConnectionLock, local_locks
from streaming.gateway.outbox import Outbox
from streaming.runtime.ratelimit import TokenBucket
from streaming.runtime.redis_client import redis_client
from streaming.runtime.tasks import BackgroundTasks

logger = logging.getLogger(__name__)

RECHECK_RETRY_SECONDS = 2.0
LOCK_RETRY_FIRST_DELAY = 0.05
LOCK_RETRY_MAX_DELAY = 0.25


class Phase(enum.Enum):
    AWAITING_AUTH = "awaiting_auth"  # no key in the handshake: waiting for {"action":"auth"}
    REJECTING = "rejecting"  # a 4401 is decided, waiting briefly for the client's auth message
    ADMITTED = "admitted"
    CLOSING = "closing"  # the close is decided and on its way; nothing else is sent or processed
    CLOSED = "closed"


class MarketDataConsumer(AsyncWebsocketConsumer):
    phase: Phase
    market: str
    entitlement: Entitlement | None = None
    credential: Credential | None = None
    lock: ConnectionLock | None = None
    local_lock: tuple[int, str] | None = None  # (user id, token) in this process's LocalLocks (fail-open mode)
    closed_with: int | None = None
    hub: UpstreamHub | None = None
    outbox: Outbox | None = None
    control: ControlListener | None = None
    channel_layer_alias = None  # live re-checks come through the process's ControlListener, not a channel each

    async def __call__(self, scope, receive, send):
        self._tasks = BackgroundTasks()
        self.phase = Phase.AWAITING_AUTH
        self.market = ""
        self._pending_rejection: Rejection | None = None
        self._opened_at = time.monotonic()
        settings = stream_settings()
        self._message_bucket = TokenBucket(settings.client_message_rate, settings.client_message_burst)
        self._refusals = 0
        try:
            await self._serve(scope, receive, send)
        except redis.exceptions.RedisError as error:
            # Redis failed under a step that does not handle it: an operational fault; the contract says 1011.
            logger.error("stream gateway error market=%s: Redis unreachable (%s)", self.market, error)
            await self._close_quietly(codes.CloseCode.INTERNAL_ERROR, "stream gateway error: Redis unreachable")
        except Exception:
            logger.exception("stream gateway error market=%s", self.market)
            await self._close_quietly(codes.CloseCode.INTERNAL_ERROR, "stream gateway error")
        finally:
            await asyncio.shield(self._cleanup())

    async def _serve(self, scope, receive, send) -> None:
        """Channels' ``AsyncConsumer.__call__`` without a channel layer: one source of messages (the socket), read in
        this task, where Channels' ``await_many_dispatch`` would add a task and an ``asyncio.wait`` per message.

        The loop yields after each message: messages a client already sent are read without suspending, and a
        flooding client must neither hold up others nor keep its own outbox from writing the answers."""
        self.scope = scope
        self.channel_layer = None
        self.base_send = send
        try:
            while True:
                await self.dispatch(await receive())
                await asyncio.sleep(0)
        except StopConsumer:
            pass

    async def dispatch(self, message: dict) -> None:
        """Run the message's handler, without Channels' ``aclose_old_connections()`` before it.

        Channels checks the database connections before every handler through its one shared sync thread: a thread
        hop per connect, client message and disconnect, all of them queued behind each other. This consumer never
        uses the database on the event loop (key resolution and usage stamps run in ``database_sync_to_async``,
        which does the same check in its own thread), so it has nothing to check.
        """
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    async def websocket_disconnect(self, message: dict) -> None:
        """Channels' version also ends with ``aclose_old_connections()`` (see ``dispatch``) and leaves the consumer's
        Channels ``groups``; this consumer has none (it leaves its ``ControlListener`` in ``_cleanup``)."""
        await self.disconnect(message["code"])
        raise StopConsumer()

    # --- lifecycle ------------------------------------------------------------------------------------------------

    async def connect(self) -> None:
        self.market = self.scope["url_route"]["kwargs"]["market"]
        auth: StreamAuth = self.scope.get("stream_auth") or StreamAuth(credential=None)
        await self.accept()
        await self.send(codes.CONNECTED_FRAME)
        credential = auth.credential
        if credential is None:
            self._tasks.spawn(self._expire_auth_wait())
        elif isinstance(credential, MalformedCredential):
            self._reject_after_grace(reject(Rule.MALFORMED_CREDENTIAL, problem=credential.problem))
        else:
            await self._admit(credential, auth.outcome, from_handshake=True)

    async def disconnect(self, code: int) -> None:
        logger.info(
            "stream closed user=%s key=%s market=%s code=%s duration=%.1fs",
            getattr(self.entitlement, "user_id", None),
            getattr(self.entitlement, "key_prefix", None),
            self.market,
            self.closed_with if self.closed_with is not None else code,
            time.monotonic() - self._opened_at,
        )
        self.phase = Phase.CLOSED
        if self.entitlement is not None:
            metrics.connection_closed(self.market, self.closed_with if self.closed_with is not None else code)
        # Release at once, not when the consumer's tasks have wound down: on Python 3.11 a cancelled Redis read can
        # linger for seconds, and the user's next connection must not meet a stale lock.
        await self._cleanup()

    async def _cleanup(self) -> None:
        self._tasks.cancel()
        if self.outbox is not None:
            self.outbox.stop()
        if self.hub is not None:
            hub, self.hub = self.hub, None
            hub.detach(self)
        if self.lock is not None:
            lock, self.lock = self.lock, None
            try:
                await lock.release()
            except LeaseUnavailable:
                if lock.confirmed_at is not None:
                    logger.warning("lock of user %s not released (Redis unreachable); it expires by TTL", lock.user_id)
        if self.local_lock is not None:
            local_locks.release(*self.local_lock)
            self.local_lock = None
        if self.control is not None:
            self.control.unregister(self.entitlement.user_id, self)
            self.control = None

    # --- admission ------------------------------------------------------------------------------------------------

    async def _admit(self, credential: Credential, outcome, from_handshake: bool) -> None:
        upstream_configured = stream_settings().upstream(self.market) is not None
        decision = decide(self.market, outcome, upstream_configured)
        if isinstance(decision, Rejection):
            if from_handshake:
                self._reject_after_grace(decision)
            else:
                await self._close_with(decision)
            return
        rejection = await self._acquire_lock(decision)
        if rejection is not None:
            await self._close_with(rejection)
            return
        self.entitlement = decision
        self.credential = credential
        metrics.admitted(self.market)
        await self.send(codes.AUTH_SUCCESS_FRAME)
        self.hub = UpstreamHub.for_market(self.market)
        self._forwarded = metrics.ForwardedCounter(self.market)
        self.outbox = Outbox(
            self._send_frame, stream_settings().client_buffer_bytes, get_flow_control(self.scope), self._count_sent
        )
        self.outbox.start()
        self.phase = Phase.ADMITTED
        self.control = ControlListener.for_loop()
        if self.control is not None:
            self.control.register(decision.user_id, self)
        logger.info(
            "stream accepted user=%s key=%s market=%s plan=%s via=%s",
            decision.user_id, decision.key_prefix, self.market, decision.plan, credential.source,
        )
        KeyUsage.for_loop().note(decision.key_id)

    async def _acquire_lock(self, entitlement: Entitlement) -> Rejection | None:
        settings = stream_settings()
        lock = ConnectionLock(redis_client(), entitlement.user_id, ttl=settings.lock_ttl)
        fail_open = settings.lock_failure_mode == FAILURE_MODE_OPEN
        if fail_open:
            # In open mode the per-process lock is always taken too, so that it still holds if Redis comes back.
            if not local_locks.try_acquire(entitlement.user_id, lock.token):
                return reject(Rule.ALREADY_CONNECTED)
            self.local_lock = (entitlement.user_id, lock.token)
        self.lock = lock  # released on every exit path; the release is token-checked, so always safe
        try:
            acquired = await self._acquire_patiently(lock, settings.lock_wait)
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
        self._tasks.spawn(hold(lock, self._on_lock_lost))
        return None

    @staticmethod
    async def _acquire_patiently(lock: ConnectionLock, wait: float) -> bool:
        """A client that closes and reconnects at once races its old connection's release (which follows the
        close handshake): retry for a short while before answering 4409."""
        deadline = time.monotonic() + wait
        delay = LOCK_RETRY_FIRST_DELAY
        while not await lock.acquire():
            if time.monotonic() + delay > deadline:
                return False
            await asyncio.sleep(delay)
            delay = min(delay * 2, LOCK_RETRY_MAX_DELAY)
        return True

    async def _on_lock_lost(self, reason: LossReason) -> None:
        metrics.lock_refresh_failure(reason.value)
        if reason is LossReason.LOST:
            await self._close_with(reject(Rule.ALREADY_CONNECTED))
        else:
            logger.error("lock refresh failing for user %s: closing before the lock could expire",
                         self.entitlement.user_id if self.entitlement else None)
            await self._close_with(reject(Rule.LOCK_UNAVAILABLE))

    async def _expire_auth_wait(self) -> None:
        await asyncio.sleep(stream_settings().auth_timeout)
        if self.phase is Phase.AWAITING_AUTH:
            await self._close_with(reject(Rule.AUTH_TIMEOUT))

    def _reject_after_grace(self, rejection: Rejection) -> None:
        """Official clients read ``connected``, send their auth message, and take only the *next* frame as the
        verdict; answering that message (or a short grace period) makes them surface an auth error, not retry."""
        self.phase = Phase.REJECTING
        self._pending_rejection = rejection
        self._tasks.spawn(self._reject_when_grace_ends())

    async def _reject_when_grace_ends(self) -> None:
        await asyncio.sleep(stream_settings().reject_grace)
        if self.phase is Phase.REJECTING and self._pending_rejection is not None:
            await self._close_with(self._pending_rejection)

    def recheck(self) -> None:
        """A key, account or plan of this user changed (``ControlListener``): run the 4401 rules again."""
        self._tasks.spawn(self._recheck())

    async def _recheck(self) -> None:
        """The admission rules again, with fresh data; while the data cannot be read (Redis or the database
        unreachable), try again every ``RECHECK_RETRY_SECONDS`` rather than cut a stream that may be entitled."""
        while self.phase is Phase.ADMITTED and self.credential is not None:
            outcome = await resolve_credential(self.credential)
            if not isinstance(outcome, ResolutionFailed):
                break
            logger.warning("re-check of user %s postponed: the key could not be resolved", self.entitlement.user_id)
            await asyncio.sleep(RECHECK_RETRY_SECONDS)
        else:
            return
        decision = decide(self.market, outcome, True)
        if isinstance(decision, Rejection):
            logger.info("stream revoked user=%s rule=%s", self.entitlement.user_id, decision.rule)
            await self._close_with(decision)

    # --- client messages ------------------------------------------------------------------------------------------

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if self.phase in (Phase.CLOSING, Phase.CLOSED):
            return
        if not self._message_bucket.take():
            await self._refuse_flood()
            return
        parsed = protocol.parse_client_message(text_data, bytes_data)
        if isinstance(parsed, protocol.ClientError):
            await self._status(codes.Status.ERROR, parsed.message)
            return
        if parsed.action == codes.Action.AUTH:
            await self._on_auth_message(parsed)
        elif self.phase is Phase.ADMITTED:
            await self._on_stream_request(parsed)
        else:
            await self._status(codes.Status.ERROR, protocol.MESSAGE_NOT_AUTHENTICATED)

    async def _on_auth_message(self, message: protocol.ClientMessage) -> None:
        if self.phase is Phase.ADMITTED:
            await self._status(codes.Status.AUTH_SUCCESS, codes.MESSAGE_AUTHENTICATED)
        elif self.phase is Phase.REJECTING and self._pending_rejection is not None:
            await self._close_with(self._pending_rejection)
        elif self.phase is Phase.AWAITING_AUTH:
            key = message.params if isinstance(message.params, str) else ""
            credential = Credential(SOURCE_MESSAGE, key)
            outcome = await resolve_credential(credential) if key else None
            await self._admit(credential, outcome, from_handshake=False)

    async def _on_stream_request(self, message: protocol.ClientMessage) -> None:
        items, errors = protocol.parse_subscriptions(message.params, self.market)
        error_frames = [codes.status_frame_bytes(codes.Status.ERROR, error) for error in errors]
        if message.action == codes.Action.SUBSCRIBE:
            items, refused = self._within_plan_cap(items)
            error_frames += [codes.status_frame_bytes(codes.Status.ERROR, error) for error in refused]
            acks = [codes.ack_frame_bytes(codes.Action.SUBSCRIBE, str(item)) for item in items]
            if not items:
                self._queue(error_frames)
                return
            try:
                await self.hub.subscribe(self, items, acknowledge=lambda: self._queue(acks + error_frames))
            except UpstreamError as error:
                await self._close(codes.CloseCode.INTERNAL_ERROR, codes.Status.ERROR, str(error))
        else:
            if items:
                await self.hub.unsubscribe(self, items)
            acks = [codes.ack_frame_bytes(codes.Action.UNSUBSCRIBE, str(item)) for item in items]
            self._queue(acks + error_frames)

    def _within_plan_cap(self, items: list[protocol.Subscription]) -> tuple[list, list[str]]:
        """Split requested items into those the plan's per-connection cap allows and refusal messages."""
        cap = self.entitlement.max_subscriptions
        if cap is None:
            return items, []
        held = self.hub.subscriptions_of(self)
        room = cap - len(held)
        allowed, refused = [], []
        for item in items:
            if item in held:
                allowed.append(item)
            elif room > 0:
                allowed.append(item)
                room -= 1
            else:
                refused.append(f"subscription limit reached ({cap} per connection on your plan): {item} refused")
        return allowed, refused

    async def _refuse_flood(self) -> None:
        self._refusals += 1
        settings = stream_settings()
        if self._refusals >= settings.client_refusals_before_close:
            await self._close(
                codes.CloseCode.POLICY_VIOLATION, codes.Status.ERROR,
                f"too many messages: more than {settings.client_message_rate:g} per second, closing",
            )
        else:
            await self._status(
                codes.Status.ERROR,
                f"rate limit exceeded ({settings.client_message_rate:g} messages per second): message ignored",
            )

    # --- what the hub calls ---------------------------------------------------------------------------------------

    def deliver(self, frames: list[bytes]) -> None:
        if self.phase is Phase.ADMITTED and not self.outbox.put(frames):
            metrics.slow_consumer(self.market)
            self.phase = Phase.CLOSING
            self.outbox.stop()
            self._tasks.spawn(self._close(
                codes.CloseCode.POLICY_VIOLATION, codes.Status.SLOW_CONSUMER,
                f"client is not reading fast enough: more than {self.outbox.limit_bytes} bytes queued, closing",
            ))

    def upstream_failed(self, message: str) -> None:
        if self.phase is not Phase.ADMITTED:
            return
        self.phase = Phase.CLOSING
        self.hub = None
        self._tasks.spawn(self._close(codes.CloseCode.INTERNAL_ERROR, codes.Status.ERROR, message))


    # --- sending and closing --------------------------------------------------------------------------------------

    async def _status(self, status: str, message: str) -> None:
        if self.outbox is not None:
            self._queue([codes.status_frame_bytes(status, message)])
        else:
            await self.send(codes.status_frame(status, message))

    async def _send_frame(self, frame: bytes) -> None:
        # The outbox's path when the server is not daphne: straight to the server, past Channels' wrappers.
        await self.base_send({"type": "websocket.send", "text": frame.decode()})

    def _count_sent(self, frame: bytes) -> None:
        self._forwarded.add(1, len(frame))

    def _queue(self, frames: list[bytes]) -> None:
        """After admission everything goes through the outbox, so acks stay in order with data."""
        if frames:
            self.deliver(frames)

    async def _close_with(self, rejection: Rejection) -> None:
        await self._close(rejection.code, rejection.status, rejection.message, rejection.rule)

    async def _close(self, code: int, status: str, message: str, rule: str | None = None) -> None:
        """The last word: one status message, then the close (queued data is dropped)."""
        if self.phase is Phase.CLOSED:
            return
        if self.entitlement is None:
            metrics.rejected(self.market, code)
        logger.info(
            "stream closing code=%s status=%s rule=%s user=%s market=%s",
            code, status, rule or "-", getattr(self.entitlement, "user_id", None), self.market,
        )
        self.phase = Phase.CLOSED
        self.closed_with = code
        if self.outbox is not None:
            self.outbox.stop()
        await self.send(codes.status_frame(status, message))
        await self.close(code=code, reason=message)

    async def _close_quietly(self, code: int, reason: str) -> None:
        try:
            await self._close(code, codes.Status.ERROR, reason)
        except Exception:
            logger.warning("could not deliver close %s", code)
