"""Each connection's timeouts and clean-up driven by its own events, instead of daphne's sweeps over every connection.

daphne walks all of its connections every second (``Server.application_checker``: reap finished applications, cancel
those that outlive ``--application-close-timeout`` after a disconnect, forget closed connections) and every two
seconds (``Server.timeout_checker``: ``check_timeouts`` on each, which sends the keep-alive pings and enforces the
WebSocket, handshake and HTTP timeouts). With 10,000 idle WebSockets those sweeps were most of an idle gateway's CPU.
Here the same rules run when they are due, for the one connection they concern:

- a finished application is reaped by a done-callback on its future (its exception logged as daphne logs it, and
  handed to the protocol if the client is still there); a disconnected connection is forgotten as soon as its
  application is done, or at once if it has none;
- a disconnect starts one timer that cancels the application if it is still running after the close timeout;
- a WebSocket gets a timer for ``--websocket_connect_timeout`` while it is being accepted, and, unless it is -1, one
  for ``--websocket_timeout``; an HTTP request gets one for ``--http-timeout`` when that is set. A connection's
  timers are cancelled when it disconnects;
- daphne's keep-alive ping goes to a WebSocket once nothing was received from it for ``--ping-interval`` (autobahn
  still drops a client whose pong is late). Every WebSocket is due for one each interval, so they are not timers of
  their own: ``KeepAlive`` files each connection under the second its ping is due and, once a second, pings the
  connections due then (written straight to the socket: ``FlowControl.write_ping``). A timer per connection cost a
  heap entry, a turn of the event loop and a buffered write per ping: with 10,000 idle connections, 500 of each a
  second.

The sweeps themselves are left unscheduled: ``Server.run`` starts each once, and they do nothing.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
from collections.abc import Callable
from typing import Any

logger = logging.getLogger("daphne.server")  # daphne's own words, in daphne's logger
_TIMERS_ATTRIBUTE = "_cutemarkets_timers"
_KEEP_ALIVE_ATTRIBUTE = "_cutemarkets_keep_alive"
_DUE_ATTRIBUTE = "_cutemarkets_ping_due"


def _call_later(protocol: Any, delay: float, callback: Callable[..., None], *args: Any) -> None:
    """Schedule *callback* (protocol, *args) on the event loop daphne's reactor runs on; a later call for the same
    callback replaces it, and all are cancelled when the protocol disconnects. Plain asyncio timer handles, not
    Twisted's ``DelayedCall``: a new WebSocket holds one (its handshake's) for its first 20 s."""
    timers: dict[Callable[..., None], asyncio.TimerHandle] | None = getattr(protocol, _TIMERS_ATTRIBUTE, None)
    if timers is None:
        timers = {}
        setattr(protocol, _TIMERS_ATTRIBUTE, timers)
    previous = timers.get(callback)
    if previous is not None:
        previous.cancel()
    timers[callback] = asyncio.get_running_loop().call_later(max(0.0, delay), callback, protocol, *args)


def _cancel_timers(protocol: Any) -> None:
    for timer in (getattr(protocol, _TIMERS_ATTRIBUTE, None) or {}).values():
        timer.cancel()
    setattr(protocol, _TIMERS_ATTRIBUTE, None)


# --- keep-alive pings ---------------------------------------------------------------------------------------------


class KeepAlive:
    """The keep-alive pings of one daphne server's WebSockets, in buckets of one second (``of`` gives the server's).

    daphne's rule, applied when a connection's bucket comes up: ping when nothing came from the client for a ping
    interval (every message counts: daphne's ``onMessage`` resets ``last_ping``), then file it an interval later;
    otherwise file it where its interval ends. One timer per process ticks once a second while connections are
    filed.
    """

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._buckets: dict[int, set[Any]] = {}
        self._ticker: asyncio.TimerHandle | None = None
        self._ticker_at: int | None = None  # the bucket the ticker comes up for
        self._ticking = False

    @staticmethod
    def of(server: Any) -> KeepAlive:
        keep_alive = getattr(server, _KEEP_ALIVE_ATTRIBUTE, None)
        if keep_alive is None:
            keep_alive = KeepAlive(server.ping_interval)
            setattr(server, _KEEP_ALIVE_ATTRIBUTE, keep_alive)
        return keep_alive

    def __len__(self) -> int:
        return sum(map(len, self._buckets.values()))

    def file(self, protocol: Any, due: float) -> None:
        """Look at *protocol* again at *due* (``time.time()``), within the second after it."""
        self.forget(protocol)
        bucket = math.ceil(due)
        self._buckets.setdefault(bucket, set()).add(protocol)
        setattr(protocol, _DUE_ATTRIBUTE, bucket)
        if not self._ticking and (self._ticker_at is None or bucket < self._ticker_at):
            self._schedule(bucket)

    def forget(self, protocol: Any) -> None:
        bucket = getattr(protocol, _DUE_ATTRIBUTE, None)
        if bucket is None:
            return
        setattr(protocol, _DUE_ATTRIBUTE, None)
        members = self._buckets.get(bucket)
        if members is not None:
            members.discard(protocol)
            if not members:
                del self._buckets[bucket]

    def _schedule(self, bucket: int) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
        self._ticker_at = bucket
        self._ticker = asyncio.get_running_loop().call_later(max(0.0, bucket - time.time()), self._tick)

    def _tick(self) -> None:
        self._ticker = self._ticker_at = None
        self._ticking = True
        try:
            now = time.time()
            for bucket in sorted(key for key in self._buckets if key <= now):
                for protocol in self._buckets.pop(bucket):
                    setattr(protocol, _DUE_ATTRIBUTE, None)
                    try:
                        self._look_at(protocol, now)
                    except Exception:  # one connection's failure must not stop the others' keep-alive
                        logger.exception("keep-alive ping of %r failed", protocol)
        finally:
            self._ticking = False
        if self._buckets:
            self._schedule(min(self._buckets))

    def _look_at(self, protocol: Any, now: float) -> None:
        if protocol.state == protocol.STATE_CLOSED:
            return
        if protocol.state != protocol.STATE_OPEN:
            self.file(protocol, now + self.interval)
            return
        if now - protocol.last_ping >= self.interval:
            protocol._sendAutoPing()
            protocol.last_ping = now
        self.file(protocol, protocol.last_ping + self.interval)


# --- WebSocket and HTTP timeouts ----------------------------------------------------------------------------------


def _connect_timeout(protocol: Any) -> None:
    if protocol.state == protocol.STATE_CONNECTING and hasattr(protocol, "handshake_deferred"):
        protocol.serverReject()


def _websocket_timeout(protocol: Any) -> None:
    if protocol.state == protocol.STATE_OPEN:
        protocol.serverClose()


def _http_timeout(protocol: Any) -> None:
    remaining = protocol.server.http_timeout - protocol.duration()
    if remaining > 0:
        _call_later(protocol, remaining, _http_timeout)
    else:
        protocol.check_timeouts()  # daphne's answer: 503, or the end of a response that started


def _start_timers(server: Any, protocol: Any) -> None:
    from daphne.ws_protocol import WebSocketProtocol

    if isinstance(protocol, WebSocketProtocol):
        KeepAlive.of(server).file(protocol, time.time() + server.ping_interval)
        _call_later(protocol, server.websocket_connect_timeout, _connect_timeout)
        if server.websocket_timeout >= 0:
            _call_later(protocol, server.websocket_timeout, _websocket_timeout)
    elif server.http_timeout:
        _call_later(protocol, server.http_timeout, _http_timeout)


# --- applications -------------------------------------------------------------------------------------------------


def _reap(server: Any, protocol: Any, instance: asyncio.Future) -> None:
    """*instance* is done: what ``application_checker`` did for it, now."""
    details = server.connections.get(protocol)
    if details is None or details.get("application_instance") is not instance:
        return
    try:
        exception = instance.exception()
    except asyncio.CancelledError:
        exception = None
    if exception is not None:
        if isinstance(exception, KeyboardInterrupt):
            server.stop()  # the application asks the server to exit (daphne's rule)
        else:
            logger.error("Exception inside application: %s", exception, exc_info=exception)
            if not details.get("disconnected"):
                protocol.handle_exception(exception)
    del details["application_instance"]
    if details.get("disconnected"):
        del server.connections[protocol]
        _cancel_timers(protocol)  # the close timeout's


def _cancel_if_running(protocol: Any, server: Any, instance: asyncio.Future) -> None:
    if not instance.done():
        logger.warning(
            "Application instance %r for connection %s took too long to shut down and was killed.",
            instance, repr(protocol),
        )
        instance.cancel()  # its done-callback reaps it


def patched_protocol_connected(original: Callable[..., None]) -> Callable[..., None]:
    def protocol_connected(self: Any, protocol: Any) -> None:
        """Register the connection, and start the timers of its timeouts."""
        original(self, protocol)
        _start_timers(self, protocol)

    return protocol_connected


def patched_protocol_disconnected(original: Callable[..., None]) -> Callable[..., None]:
    def protocol_disconnected(self: Any, protocol: Any) -> None:
        """Its timers stop; it is forgotten now if its application is done (or never started), else once it is,
        and the application gets the close timeout to finish. A second report of the same disconnect (daphne sends
        one from several places) changes nothing."""
        details = self.connections.get(protocol)
        if details is None or "disconnected" in details:
            return
        original(self, protocol)
        _cancel_timers(protocol)
        KeepAlive.of(self).forget(protocol)
        instance = details.get("application_instance")
        if instance is None:
            del self.connections[protocol]
        else:
            _call_later(protocol, self.application_close_timeout, _cancel_if_running, self, instance)

    return protocol_disconnected


def patched_create_application(original: Callable[..., Any]) -> Callable[..., Any]:
    def create_application(self: Any, protocol: Any, scope: dict[str, Any]) -> Any:
        """Make the application instance, which reaps itself when it is done."""
        if protocol not in self.connections:
            return None  # disconnected and forgotten already
        queue = original(self, protocol, scope)
        instance = self.connections.get(protocol, {}).get("application_instance")
        if instance is not None:
            instance.add_done_callback(functools.partial(_reap, self, protocol))
        return queue

    return create_application


def patched_sweep(original: Callable[..., None]) -> Callable[..., None]:
    def sweep(self: Any) -> None:
        """Not a sweep any more (see the module docstring): scheduled once by ``Server.run``, it does nothing and
        does not schedule itself again."""

    return sweep
