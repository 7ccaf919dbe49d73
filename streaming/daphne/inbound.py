"""Receive-side limits for daphne WebSockets: a budget on queued inbound bytes, and oversize messages closed 1009.

daphne's ``onMessage`` puts every message a client sends into the application's input queue, which has no bound of its
own: a client sending faster than its consumer handles messages made the gateway hold any amount of memory. Each
connection gets an ``InboundBudget`` counting the bytes of messages queued but not yet taken by the application's
``receive()`` (its ``ReceiveQueue`` reports both, ``streaming.daphne.receive_queue``); past
``STREAM_CLIENT_INBOUND_BYTES`` the server stops reading the client's socket (TCP back-pressure: the client's sends
block, nobody else pays) until the application has taken all but half.

autobahn fails a message over its size limit by dropping TCP (the client sees 1006, and learns nothing). With the limit
at ``STREAM_CLIENT_MAX_MESSAGE_BYTES``, such a message now gets an ``error`` status and close 1009 with a reason;
autobahn discards the rest of it while the close handshake completes.

While reading is paused the client's pongs wait unread behind its messages, so daphne's keep-alive (a ping every
``--ping-interval``, the connection dropped when no pong comes within ``--ping-timeout``) would drop a live client for
its consumer's slowness: a paused connection is not pinged, and a ping already out stops counting.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from streaming import metrics
from streaming.codes import CloseCode, Status, status_frame_bytes
from streaming.daphne.close import CLOSE_HANDSHAKE_TIMEOUT_SECONDS

DEFAULT_INBOUND_BYTES = 1024 * 1024
DEFAULT_MAX_MESSAGE_BYTES = 1024 * 1024
TOO_BIG_REASON = b"message too big"
_BUDGET_ATTRIBUTE = "_cutemarkets_inbound_budget"


def limits() -> tuple[int, int]:
    """(inbound bytes budget, max message bytes) from the gateway's settings; the defaults for an app without them
    (no Django settings, or another project's)."""
    from django.conf import settings

    if not settings.configured or not hasattr(settings, "STREAM_CLIENT_INBOUND_BYTES"):
        return DEFAULT_INBOUND_BYTES, DEFAULT_MAX_MESSAGE_BYTES
    from streaming.conf import stream_settings

    configured = stream_settings()
    return configured.client_inbound_bytes, configured.client_max_message_bytes


class InboundBudget:
    """The bytes of one connection's received messages that the application has not yet taken, and the pause.

    Sizes are the messages' payload lengths on the wire. All methods run on daphne's event loop.
    """

    def __init__(self, protocol: Any, limit: int) -> None:
        self._protocol = protocol
        self.limit = limit
        self.queued_bytes = 0
        self.paused = False

    @classmethod
    def attach(cls, protocol: Any) -> InboundBudget:
        """Count what *protocol*'s application has yet to take (its ``ReceiveQueue`` reports each message in and
        out), and set autobahn's message size limit."""
        budget_limit, max_message = limits()
        budget = cls(protocol, budget_limit)
        protocol.maxMessagePayloadSize = max_message
        protocol.maxFramePayloadSize = max_message
        setattr(protocol, _BUDGET_ATTRIBUTE, budget)
        return budget

    @staticmethod
    def of(protocol: Any) -> InboundBudget | None:
        """The ``InboundBudget`` attached to *protocol*, if any."""
        return getattr(protocol, _BUDGET_ATTRIBUTE, None)

    def queued(self, size: int) -> None:
        """A message of *size* bytes went into the queue; stop reading once the queue holds more than the limit.

        Only while the socket is open: once a close frame is out, reading goes on so the client's reply arrives.
        """
        self.queued_bytes += size
        if self.queued_bytes > self.limit and not self.paused and self._protocol.state == self._protocol.STATE_OPEN:
            self.paused = True
            metrics.inbound_paused()
            self._protocol.transport.pauseProducing()
            self._forget_keep_alive_ping()

    def taken(self, size: int) -> None:
        """The application took a message of *size* bytes; read again once the queue is down to half the limit."""
        self.queued_bytes -= size
        if self.paused and self.queued_bytes <= self.limit // 2:
            self.resume()

    def resume(self) -> None:
        """Read from the client again (a no-op when not paused, or once the connection is gone)."""
        if self.paused:
            self.paused = False
            if self._protocol.transport is not None and self._protocol.transport.connected:
                self._protocol.transport.resumeProducing()

    def _forget_keep_alive_ping(self) -> None:
        """Stop the timeout of a keep-alive ping already sent: its pong cannot be read until reading resumes (it is
        then an unsolicited pong, which autobahn ignores)."""
        protocol = self._protocol
        if protocol.autoPingTimeoutCall is not None:
            protocol.autoPingTimeoutCall.cancel()
            protocol.autoPingTimeoutCall = None
        protocol.autoPingPending = None


def patched_send_auto_ping(original: Callable[..., None]) -> Callable[..., None]:
    def _sendAutoPing(self: Any) -> None:
        """Send daphne's keep-alive ping, unless reading from the client is paused (see the module docstring);
        daphne tries again an interval later."""
        budget = InboundBudget.of(self)
        if budget is None or not budget.paused:
            original(self)

    return _sendAutoPing


def patched_send_close_frame(original: Callable[..., None]) -> Callable[..., None]:
    def sendCloseFrame(
        self: Any, code: int | None = None, reasonUtf8: bytes | None = None, isReply: bool = False
    ) -> None:
        """Every close frame goes out through here: a paused connection reads again, or the client's close reply
        would wait unread until the close handshake timeout reset the connection."""
        original(self, code=code, reasonUtf8=reasonUtf8, isReply=isReply)
        budget = InboundBudget.of(self)
        if budget is not None:
            budget.resume()

    return sendCloseFrame


def patched_max_message_size_exceeded(original: Callable[..., None]) -> Callable[..., None]:
    def _max_message_size_exceeded(self: Any, msg_size: int, max_msg_size: int, reason: str) -> None:
        """Tell the client, then close 1009, instead of autobahn's TCP drop (its ``failByDrop`` stays on for real
        protocol violations). ``failedByMe`` makes autobahn discard the rest of the message, as when it fails."""
        if self.state != self.STATE_OPEN:
            original(self, msg_size, max_msg_size, reason)
            return
        self.failedByMe = True
        metrics.socket_dropped("message_too_big")
        message = f"message too large: {msg_size} bytes, the limit is {max_msg_size}, closing"
        self.sendMessage(status_frame_bytes(Status.ERROR, message), False)
        self.closeHandshakeTimeout = CLOSE_HANDSHAKE_TIMEOUT_SECONDS
        self.sendCloseFrame(code=CloseCode.MESSAGE_TOO_BIG, reasonUtf8=TOO_BIG_REASON, isReply=False)

    return _max_message_size_exceeded
