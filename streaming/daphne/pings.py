"""A budget on the pings each WebSocket client sends, enforced where autobahn answers them.

autobahn answers every ping at once, without limit: a client pinging as fast as it can made the gateway spend most
of a core on pongs (and its neighbours wait behind them), and one that never read its pongs made the server buffer
them without bound. Every connection gets a token bucket of ``STREAM_CLIENT_PING_RATE`` pings per second with bursts
of ``STREAM_CLIENT_PING_BURST`` (clients ping every few tens of seconds); a client over it gets one ``error``
status and close 1008. Pongs go out through ``FlowControl.pong``, which holds at most one while the client is not
reading. A ping within the budget is a sign of life like a message: it postpones daphne's own keep-alive ping (the
official clients ping every 20 s, so they need none of ours).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from streaming import metrics
from streaming.codes import CloseCode, Status, status_frame_bytes
from streaming.daphne.close import CLOSE_HANDSHAKE_TIMEOUT_SECONDS
from streaming.daphne.flow_control import FlowControl
from streaming.runtime.ratelimit import TokenBucket

DEFAULT_RATE = 2.0
DEFAULT_BURST = 20
CLOSE_REASON = b"too many pings"
_BUDGET_ATTRIBUTE = "_cutemarkets_ping_budget"


def ping_budget() -> TokenBucket:
    """A new connection's budget, from the gateway's settings (or the defaults, for an app without Django)."""
    from django.conf import settings

    if not settings.configured:
        return TokenBucket(DEFAULT_RATE, DEFAULT_BURST)
    from streaming.conf import stream_settings

    limits = stream_settings()
    return TokenBucket(limits.client_ping_rate, limits.client_ping_burst)


def refuse_flood(protocol: Any, rate: float) -> None:
    """Tell the client, then close 1008: the status goes before the close frame, like every status of the feed.

    Then stop reading from the client: a flood does not stop at our close frame, and reading it until the close
    handshake times out once cost the gateway ~550,000 ping frames (the whole event loop) per flooding connection.
    The client's close reply is not read either, so the connection is dropped at the close handshake's timeout.
    """
    message = f"too many pings: more than {rate:g} per second, closing"
    protocol.sendMessage(status_frame_bytes(Status.ERROR, message), False)
    protocol.closeHandshakeTimeout = CLOSE_HANDSHAKE_TIMEOUT_SECONDS
    protocol.sendCloseFrame(code=CloseCode.POLICY_VIOLATION, reasonUtf8=CLOSE_REASON, isReply=False)
    protocol.transport.pauseProducing()


def patched_on_ping(original: Callable[..., None]) -> Callable[..., None]:
    def onPing(self: Any, payload: bytes) -> None:
        """Answer within the connection's ping budget (see the module docstring), through its ``FlowControl``."""
        if self.state != self.STATE_OPEN:
            return
        budget = getattr(self, _BUDGET_ATTRIBUTE, None)
        if budget is None:
            budget = ping_budget()
            setattr(self, _BUDGET_ATTRIBUTE, budget)
        if not budget.take():
            metrics.socket_dropped("ping_flood")
            refuse_flood(self, budget.rate)
            return
        self.last_ping = time.time()  # daphne's keep-alive clock (see the module docstring)
        flow_control = FlowControl.of(self)
        if flow_control is None:
            original(self, payload)
        else:
            flow_control.pong(payload)

    return onPing
