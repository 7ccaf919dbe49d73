"""The WebSocket consumer: admits one client (key, plan, market, connection lock) and then serves its stream.

Every socket is accepted first, because a close before accept reaches the client as an HTTP 403 with the close
code lost; the contract's codes (4401, 4409, 1011) are delivered after a status message in the feed's own shape.
Clients that cannot send headers (official SDKs) authenticate with ``{"action":"auth"}`` instead, exactly as on
the upstream feed; their later messages wait, in order, until admission is decided.

The consumer keeps the ASGI lifecycle, the dispatch of client messages and the way out to the socket; it hands
the admission to ``Admission`` (admission.py) and each parsed message to ``ClientRequests`` (requests.py), which
call back only through the small interfaces they declare (``Candidate``, ``Client``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

import redis.exceptions
from channels.consumer import get_handler_name
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer

from accounts.keys import Entitlement
from streaming import codes, metrics
from streaming.conf import stream_settings
from streaming.daphne.flow_control import get_flow_control
from streaming.gateway import protocol
from streaming.gateway.admission import Admission, Phase
from streaming.gateway.credentials import StreamAuth
from streaming.gateway.live_connections import HOST, LiveConnection, now_iso
from streaming.gateway.middleware import client_address
from streaming.gateway.outbox import Outbox
from streaming.gateway.requests import ClientRequests
from streaming.gateway.rules import Rejection
from streaming.hub.hub import UpstreamHub
from streaming.runtime.tasks import BackgroundTasks

logger = logging.getLogger(__name__)

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class MarketDataConsumer(AsyncWebsocketConsumer):
    phase: Phase
    market: str
    admission: Admission
    closed_with: int | None = None
    hub: UpstreamHub | None = None
    outbox: Outbox | None = None
    channel_layer_alias = None  # live re-checks come through the process's ControlListener, not a channel each

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._tasks = BackgroundTasks()
        self.phase = Phase.AWAITING_AUTH
        self.market = ""
        self._opened_at = time.monotonic()
        self._connected_at: str | None = None
        self._record_counters: tuple[int, int, int, int] | None = None
        self._record = b""
        self.admission = Admission(self, self._tasks)
        self._requests = ClientRequests(self, self.admission)
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

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
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

    async def dispatch(self, message: dict[str, Any]) -> None:
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

    async def websocket_disconnect(self, message: dict[str, Any]) -> None:
        """Channels' version also ends with ``aclose_old_connections()`` (see ``dispatch``) and leaves the consumer's
        Channels ``groups``; this consumer has none (its admission leaves the ``ControlListener`` in ``_cleanup``)."""
        await self.disconnect(message["code"])
        raise StopConsumer()

    # --- lifecycle ------------------------------------------------------------------------------------------------

    async def connect(self) -> None:
        self.market = self.scope["url_route"]["kwargs"]["market"]
        auth: StreamAuth = self.scope.get("stream_auth") or StreamAuth(credential=None)
        await self.accept()
        await self.send(codes.CONNECTED_FRAME)
        await self.admission.start(auth)

    async def disconnect(self, code: int) -> None:
        entitlement = self.admission.entitlement
        logger.info(
            "stream closed user=%s key=%s market=%s code=%s duration=%.1fs",
            getattr(entitlement, "user_id", None),
            getattr(entitlement, "key_prefix", None),
            self.market,
            self.closed_with if self.closed_with is not None else code,
            time.monotonic() - self._opened_at,
        )
        self.phase = Phase.CLOSED
        if entitlement is not None:
            metrics.connection_closed(self.market, self.closed_with if self.closed_with is not None else code)
        # Release at once, not when the consumer's tasks have wound down: on Python 3.11 a cancelled Redis read can
        # linger for seconds, and the user's next connection must not meet a stale lock.
        await self._cleanup()

    async def _cleanup(self) -> None:
        self._tasks.cancel()
        if self.outbox is not None:
            self.outbox.stop()
            metrics.FORWARDED.retire(self.market, self.outbox)
        if self.hub is not None:
            hub, self.hub = self.hub, None
            hub.detach(self)
        await self.admission.release()

    # --- client messages ------------------------------------------------------------------------------------------

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if self.phase in (Phase.CLOSING, Phase.CLOSED):
            return
        requests = self._requests
        if not requests.message_budget.take():
            await requests.refuse_flood()
            return
        parsed = protocol.parse_client_message(text_data, bytes_data)
        if isinstance(parsed, protocol.ClientError):
            await self.send_status(codes.Status.ERROR, parsed.message)
            return
        if parsed.action == codes.Action.AUTH:
            await requests.on_auth_message(parsed)
        elif self.phase is Phase.ADMITTED:
            await requests.on_stream_request(parsed)
        else:
            await self.send_status(codes.Status.ERROR, protocol.MESSAGE_NOT_AUTHENTICATED)

    # --- what admission and the ControlListener call --------------------------------------------------------------

    async def open_stream(self) -> None:
        """Admitted: confirm it, then serve the stream through a bounded outbox, shared with the hub's frames."""
        await self.send(codes.AUTH_SUCCESS_FRAME)
        self.hub = UpstreamHub.for_market(self.market)
        self.outbox = Outbox(self._send_frame, stream_settings().client_buffer_bytes, get_flow_control(self.scope))
        metrics.FORWARDED.track(self.market, self.outbox)
        self.outbox.start()
        self.phase = Phase.ADMITTED

    def recheck(self) -> None:
        """A key, account or plan of this user changed (``ControlListener``): admission runs its rules again."""
        self.admission.recheck()

    def force_disconnect(self) -> None:
        """An operator ended this user's connection (``disconnect_user``, the admin): say so, then close (1008);
        the close releases the lock, so the user may connect again at once."""
        if self.phase in (Phase.CLOSING, Phase.CLOSED):
            return
        self.phase = Phase.CLOSING
        logger.info("stream force-disconnected by an operator market=%s", self.market)
        self._tasks.spawn(self.close_with_status(
            codes.CloseCode.POLICY_VIOLATION, codes.Status.FORCE_DISCONNECT, codes.MESSAGE_FORCE_DISCONNECT,
        ))

    def live_record(self, entitlement: Entitlement) -> bytes:
        """The record, built again only when its counters moved: the lock keeper asks every connection at each
        refresh, and most of 10,000 idle ones have nothing new (the lock then sends nothing, see ConnectionLock)."""
        outbox, hub = self.outbox, self.hub
        counters = (
            len(hub.subscriptions_of(self)) if hub is not None else 0,
            outbox.events_queued if outbox is not None else 0,
            outbox.bytes_sent if outbox is not None else 0,
            outbox.queued_bytes if outbox is not None else 0,
        )
        if counters != self._record_counters:
            if self._connected_at is None:
                self._connected_at = now_iso()
            subscriptions, events, bytes_sent, outbox_bytes = self._record_counters = counters
            self._record = LiveConnection(
                user_id=entitlement.user_id, key_prefix=entitlement.key_prefix, market=self.market, host=HOST,
                pid=os.getpid(), client=client_address(self.scope), connected_at=self._connected_at,
                subscriptions=subscriptions, events=events, bytes_sent=bytes_sent, outbox_bytes=outbox_bytes,
            ).encode()
        return self._record

    # --- what the hub calls ---------------------------------------------------------------------------------------

    def deliver(self, frames: list[bytes], events: int = 0, received_at: float = 0.0) -> None:
        outbox = self.outbox
        if self.phase is Phase.ADMITTED and outbox is not None and not outbox.put(frames, events, received_at):
            metrics.slow_consumer(self.market)
            self.phase = Phase.CLOSING
            outbox.stop()
            self._tasks.spawn(self.close_with_status(
                codes.CloseCode.POLICY_VIOLATION, codes.Status.SLOW_CONSUMER,
                f"client is not reading fast enough: more than {outbox.limit_bytes} bytes queued, closing",
            ))

    def upstream_failed(self, message: str) -> None:
        if self.phase is not Phase.ADMITTED:
            return
        self.phase = Phase.CLOSING
        self.hub = None
        self._tasks.spawn(self.close_with_status(codes.CloseCode.INTERNAL_ERROR, codes.Status.ERROR, message))

    # --- sending and closing --------------------------------------------------------------------------------------

    async def send_status(self, status: codes.Status, message: str) -> None:
        if self.outbox is not None:
            self.queue([codes.status_frame_bytes(status, message)])
        else:
            await self.send(codes.status_frame(status, message))

    async def _send_frame(self, frame: bytes) -> None:
        # The outbox's path when the server is not daphne: straight to the server, past Channels' wrappers.
        await self.base_send({"type": "websocket.send", "text": frame.decode()})

    def queue(self, frames: list[bytes]) -> None:
        """After admission everything goes through the outbox, so acks stay in order with data."""
        if frames:
            self.deliver(frames)

    async def close_with(self, rejection: Rejection) -> None:
        await self.close_with_status(rejection.code, rejection.status, rejection.message, rejection.rule)

    async def close_with_status(self, code: int, status: codes.Status, message: str, rule: str | None = None) -> None:
        """The last word: one status message, then the close (queued data is dropped)."""
        if self.phase is Phase.CLOSED:
            return
        entitlement = self.admission.entitlement
        if entitlement is None:
            metrics.rejected(self.market, code)
            if rule is not None:
                metrics.refused(self.market, rule)
        logger.info(
            "stream closing code=%s status=%s rule=%s user=%s market=%s",
            code, status, rule or "-", getattr(entitlement, "user_id", None), self.market,
        )
        self.phase = Phase.CLOSED
        self.closed_with = code
        if self.outbox is not None:
            self.outbox.stop()
        await self.send(codes.status_frame(status, message))
        await self.close(code=code, reason=message)

    async def _close_quietly(self, code: int, reason: str) -> None:
        try:
            await self.close_with_status(code, codes.Status.ERROR, reason)
        except Exception:
            logger.warning("could not deliver close %s", code)
