"""Graceful shutdown of a daphne process: on SIGTERM every live WebSocket is closed with 1001 before the process exits.

daphne's own shutdown cancels every application instance and then drops the TCP connections, so clients see an
abrupt 1006 and a consumer's cleanup (releasing its connection lock) races the reactor. ``drain`` replaces that
step (``Server.kill_all_applications``, daphne's "before shutdown" trigger): it stops listening, closes each open
WebSocket with 1001 "server shutting down", and waits, up to ``GATEWAY_SHUTDOWN_TIMEOUT``, for the application
instances to handle their ``websocket.disconnect`` and finish; only what is still running then is cancelled.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import Any

from daphne.ws_protocol import WebSocketProtocol
from twisted.internet.interfaces import IListeningPort

from streaming.codes import CLOSE_GOING_AWAY
from streaming.daphne_shim import CLOSE_HANDSHAKE_TIMEOUT_SECONDS

logger = logging.getLogger(__name__)

SHUTDOWN_REASON = b"server shutting down"
DEFAULT_TIMEOUT_SECONDS = 10.0
CANCEL_GRACE_SECONDS = 1.0
"""How long instances cancelled after the timeout get to unwind before the reactor stops regardless."""

_DRAINING_ATTRIBUTE = "_cutemarkets_draining"


def is_draining(server: Any) -> bool:
    """Whether *server* (a ``daphne.server.Server``) is shutting down: sockets accepted now are closed at once."""
    return getattr(server, _DRAINING_ATTRIBUTE, False)


def close_going_away(protocol: Any) -> bool:
    """Send an open WebSocket's close frame (1001); True if one was sent. The client's reply ends the connection and
    the app gets its ``websocket.disconnect``; a client that never replies is dropped after the close handshake
    timeout. Anything else (an HTTP request, a socket not yet accepted or already closing) is left alone.
    """
    if not isinstance(protocol, WebSocketProtocol) or protocol.state != protocol.STATE_OPEN:
        return False
    protocol.closeHandshakeTimeout = CLOSE_HANDSHAKE_TIMEOUT_SECONDS
    protocol.sendCloseFrame(code=CLOSE_GOING_AWAY, reasonUtf8=SHUTDOWN_REASON, isReply=False)
    return True


async def drain(server: Any, timeout: float) -> None:
    """Stop accepting, close every WebSocket with 1001, wait for the apps to finish, then cancel what is left.

    Instances that were mid-handshake at the first pass are waited for too: the shim closes their sockets as soon
    as they are accepted (see ``is_draining``).
    """
    setattr(server, _DRAINING_ATTRIBUTE, True)
    _stop_listening()
    closed = sum(close_going_away(protocol) for protocol in list(server.connections))
    logger.info("shutdown: closing %d WebSocket(s) with %d", closed, CLOSE_GOING_AWAY)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    running = _running_applications(server)
    while running and loop.time() < deadline:
        await asyncio.wait(running, timeout=deadline - loop.time())
        running = _running_applications(server)
    if running:
        logger.warning(
            "shutdown: cancelling %d application instance(s) still running after %g s", len(running), timeout
        )
        for instance in running:
            instance.cancel()
        await asyncio.wait(running, timeout=CANCEL_GRACE_SECONDS)
    key_usage = sys.modules.get("streaming.key_usage")  # loaded by the gateway; the shim serves plain apps too
    if key_usage is not None:
        await key_usage.KeyUsage.flush_for_loop()  # the last interval's last_used_at stamps


def drain_timeout() -> float:
    """``GATEWAY_SHUTDOWN_TIMEOUT`` from Django settings, or the default for an app that does not use Django."""
    from django.conf import settings

    if not settings.configured:
        return DEFAULT_TIMEOUT_SECONDS
    return float(getattr(settings, "GATEWAY_SHUTDOWN_TIMEOUT", DEFAULT_TIMEOUT_SECONDS))


def _stop_listening() -> None:
    """Close the listening sockets, so the load balancer sends new connections to the other processes."""
    from twisted.internet import reactor  # daphne's (asyncio) reactor: importing it earlier could install another

    for reader in reactor.getReaders():
        if IListeningPort.providedBy(reader):
            reader.stopListening()


def _running_applications(server: Any) -> list[asyncio.Future]:
    return [
        instance
        for details in list(server.connections.values())
        if (instance := details.get("application_instance")) is not None and not instance.done()
    ]
