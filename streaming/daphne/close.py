"""The WebSocket close path under daphne: any sendable close code, with its reason, as a clean close frame.

daphne hands ``websocket.close`` to autobahn's ``sendClose``, which refuses every code but 1000 and 3000-4999 (so
1001/1008/1011 reach the client only through daphne's crash path) and drops the ASGI ``reason``. The patched
``handle_reply`` sends the frame itself through autobahn's ``sendCloseFrame``; ``close_going_away`` is the same frame
for a server that is shutting down (``streaming.daphne.shutdown``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from daphne.ws_protocol import WebSocketProtocol

from streaming.codes import CloseCode

logger = logging.getLogger(__name__)

DEFAULT_CLOSE_CODE = 1000
FALLBACK_CLOSE_CODE = 1011
"""What an application's unsendable close code (1005, 1006, 1015, 999, 5000, ...) goes out as."""

SENDABLE_CLOSE_CODES = frozenset({1000, 1001, 1002, 1003, 1007, 1008, 1009, 1011, 1012, 1013, 1014}) | frozenset(
    range(3000, 5000)
)
"""RFC 6455 / IANA codes a server may put in a close frame: never 1004-1006, 1015 (reserved) or 1010 (client-only)."""

MAX_CLOSE_REASON_BYTES = 123
"""A close frame is a control frame (payload <= 125 bytes), two of which carry the code."""

CLOSE_HANDSHAKE_TIMEOUT_SECONDS = 2
"""How long an application's close waits for the client's close reply before autobahn resets the TCP connection.

autobahn's default is 1 s, but txaio's batched timer rounds the deadline down to a whole second of the reactor clock,
so a timeout of T fires after T-1 to T s: with 1 s, any client whose reply takes longer than the time left to the
next second boundary (a fraction of an RTT, sometimes) is reset instead of closed cleanly. 2 s gives every client at
least 1 s, and still drops a client that does not read its close frame within 2 s.
"""

SHUTDOWN_REASON = b"server shutting down"
_DRAINING_ATTRIBUTE = "_cutemarkets_draining"


def sanitize_close(code: int | None, reason: str | None) -> tuple[int, bytes]:
    """The code and UTF-8 reason an ASGI ``websocket.close`` puts on the wire.

    ``None`` means 1000 (ASGI's default); a code outside ``SENDABLE_CLOSE_CODES`` is logged and sent as 1011, keeping
    the reason, since the application did mean to close on an error. The reason is cut to 123 bytes on a character
    boundary.
    """
    if code is None:
        code = DEFAULT_CLOSE_CODE
    elif not isinstance(code, int) or isinstance(code, bool) or code not in SENDABLE_CLOSE_CODES:
        logger.warning("WebSocket close code %r cannot be sent; closing with %d", code, FALLBACK_CLOSE_CODE)
        code = FALLBACK_CLOSE_CODE
    else:
        code = int(code)  # an IntEnum member (CloseCode) goes out as its number
    encoded = reason.encode("utf-8") if isinstance(reason, str) else b""
    if len(encoded) > MAX_CLOSE_REASON_BYTES:
        encoded = encoded[:MAX_CLOSE_REASON_BYTES].decode("utf-8", "ignore").encode("utf-8")
    return code, encoded


def mark_draining(server: Any) -> None:
    """From now on, sockets *server* (a ``daphne.server.Server``) accepts are closed with 1001 at once."""
    setattr(server, _DRAINING_ATTRIBUTE, True)


def is_draining(server: Any) -> bool:
    """Whether *server* is shutting down (see ``mark_draining``)."""
    return getattr(server, _DRAINING_ATTRIBUTE, False)


def close_going_away(protocol: Any) -> bool:
    """Send an open WebSocket's close frame (1001); True if one was sent. The client's reply ends the connection and
    the app gets its ``websocket.disconnect``; a client that never replies is dropped after the close handshake
    timeout. Anything else (an HTTP request, a socket not yet accepted or already closing) is left alone.
    """
    if not isinstance(protocol, WebSocketProtocol) or protocol.state != protocol.STATE_OPEN:
        return False
    protocol.closeHandshakeTimeout = CLOSE_HANDSHAKE_TIMEOUT_SECONDS
    protocol.sendCloseFrame(code=CloseCode.GOING_AWAY, reasonUtf8=SHUTDOWN_REASON, isReply=False)
    return True


def patched_handle_reply(original: Callable[..., None]) -> Callable[..., None]:
    def handle_reply(self: Any, message: dict[str, Any]) -> None:
        """Send an accepted socket's ``websocket.close`` with its code and reason as a clean close frame.

        daphne passes only the code to autobahn's ``sendClose``, which raises for anything but 1000 and 3000-4999 (the
        app's ``send`` fails, daphne logs the traceback and closes with 1011 a second later) and the ASGI ``reason`` is
        dropped. ``sendCloseFrame`` sends any code, so ``sanitize_close`` vets it first; the close handshake gets
        ``CLOSE_HANDSHAKE_TIMEOUT_SECONDS``. A ``websocket.send`` once the close handshake has begun is dropped, as
        daphne drops it once the socket is closed (autobahn would raise in the app's ``send``); a socket accepted
        while the server shuts down is closed with 1001 at once. A close before accept (HTTP 403) and every other
        message go to daphne unchanged.
        """
        kind = message.get("type")
        if kind == "websocket.send" and self.state in (self.STATE_CLOSING, self.STATE_CLOSED):
            return
        if kind == "websocket.close" and self.state != self.STATE_CONNECTING:
            code, reason = sanitize_close(message.get("code"), message.get("reason"))
            self.closeHandshakeTimeout = CLOSE_HANDSHAKE_TIMEOUT_SECONDS
            self.sendCloseFrame(code=code, reasonUtf8=reason, isReply=False)
            return
        original(self, message)
        if kind == "websocket.accept" and is_draining(self.server):
            close_going_away(self)

    return handle_reply
