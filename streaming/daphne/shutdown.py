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
from collections.abc import Awaitable, Callable
from typing import Any

from twisted.internet.interfaces import IListeningPort

from streaming.codes import CloseCode
from streaming.daphne.close import close_going_away, mark_draining

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_SECONDS = 10.0
CANCEL_GRACE_SECONDS = 1.0
"""How long instances cancelled after the timeout get to unwind before the reactor stops regardless."""

_after_drain: list[Callable[[], Awaitable[None]]] = []


def run_after_drain(hook: Callable[[], Awaitable[None]]) -> None:
    """Await *hook* once the applications have finished, before the reactor stops (the gateway writes the last
    interval's key-usage stamps). Applications register their own hooks, so this layer imports none of them."""
    if hook not in _after_drain:
        _after_drain.append(hook)


async def drain(server: Any, timeout: float) -> None:
    """Stop accepting, close every WebSocket with 1001, wait for the apps to finish, then cancel what is left.

    Instances that were mid-handshake at the first pass are waited for too: the shim closes their sockets as soon
    as they are accepted (see ``is_draining``).
    """
    mark_draining(server)
    _stop_listening()
    closed = sum(close_going_away(protocol) for protocol in list(server.connections))
    logger.info("shutdown: closing %d WebSocket(s) with %d", closed, CloseCode.GOING_AWAY)
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
    for hook in _after_drain:
        await hook()


def drain_timeout() -> float:
    """``GATEWAY_SHUTDOWN_TIMEOUT`` from Django settings, or the default for an app that does not use Django."""
    from django.conf import settings

    if not settings.configured:
        return DEFAULT_TIMEOUT_SECONDS
    return float(getattr(settings, "GATEWAY_SHUTDOWN_TIMEOUT", DEFAULT_TIMEOUT_SECONDS))


def _stop_listening() -> None:
    """Close the listening sockets, so the load balancer sends new connections to the other processes."""
    from twisted.internet import reactor  # daphne's (asyncio) reactor: importing it earlier could install another

    for reader in reactor.getReaders():  # type: ignore[misc]  # zope.interface methods take no self
        if IListeningPort.providedBy(reader):
            reader.stopListening()


def _running_applications(server: Any) -> list[asyncio.Future]:
    return [
        instance
        for details in list(server.connections.values())
        if (instance := details.get("application_instance")) is not None and not instance.done()
    ]


def patched_kill_all_applications(original: Callable[..., Any]) -> Callable[..., Any]:
    def kill_all_applications(self: Any) -> Any:
        """daphne's "before shutdown" trigger: drain gracefully instead of cancelling at once.

        Returns a Deferred, so the reactor stops only once every WebSocket got its 1001 and the apps finished, or
        the shutdown timeout passed. daphne's original would also fail on a connection with no application instance.
        """
        from twisted.internet import defer

        return defer.Deferred.fromFuture(asyncio.ensure_future(drain(self, drain_timeout())))

    return kill_all_applications
