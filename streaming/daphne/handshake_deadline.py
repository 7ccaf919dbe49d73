"""A deadline for each HTTP request's headers, so a client cannot hold a socket open by sending them slowly.

Twisted's HTTP channel has an idle timeout (60 s) that every received byte resets: a client drip-feeding the
upgrade request one byte every two seconds kept its socket, and the server's memory for it, forever. Here every
request gets ``STREAM_HANDSHAKE_TIMEOUT`` seconds (10 s) from its first moment, the connection's start or the end of
the previous response, to deliver all of its headers; a connection that has not is dropped. Once headers are in,
the request proceeds under daphne's own timeouts (the WebSocket handshake, the application's accept).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from streaming import metrics

DEFAULT_TIMEOUT_SECONDS = 10.0
_DEADLINE_ATTRIBUTE = "_cutemarkets_header_deadline"


def header_timeout() -> float:
    """``STREAM_HANDSHAKE_TIMEOUT`` from the gateway's settings, or the default for an app without Django."""
    from django.conf import settings

    if not settings.configured:
        return DEFAULT_TIMEOUT_SECONDS
    from streaming.conf import stream_settings

    return stream_settings().handshake_timeout


def start_deadline(channel: Any) -> None:
    from twisted.internet import reactor  # daphne's (asyncio) reactor: importing it earlier could install another

    cancel_deadline(channel)
    # zope.interface declares callLater without self, so mypy takes the delay for the callable:
    deadline = reactor.callLater(header_timeout(), _expire, channel)  # type: ignore[arg-type]
    setattr(channel, _DEADLINE_ATTRIBUTE, deadline)


def cancel_deadline(channel: Any) -> None:
    deadline = getattr(channel, _DEADLINE_ATTRIBUTE, None)
    if deadline is not None:
        setattr(channel, _DEADLINE_ATTRIBUTE, None)
        if deadline.active():
            deadline.cancel()


def _expire(channel: Any) -> None:
    setattr(channel, _DEADLINE_ATTRIBUTE, None)
    if channel.transport is not None:
        metrics.socket_dropped("handshake_timeout")
        channel.transport.abortConnection()


def patched_connection_made(original: Callable[..., None]) -> Callable[..., None]:
    def connectionMade(self: Any) -> None:
        """The first request's headers are due within the deadline."""
        original(self)
        start_deadline(self)

    return connectionMade


def patched_all_headers_received(original: Callable[..., None]) -> Callable[..., None]:
    def allHeadersReceived(self: Any) -> None:
        """The headers are in: the request proceeds under daphne's own timeouts."""
        cancel_deadline(self)
        original(self)

    return allHeadersReceived


def patched_request_done(original: Callable[..., None]) -> Callable[..., None]:
    def requestDone(self: Any, request: Any) -> None:
        """A kept-alive connection's next request is due within the deadline too."""
        original(self, request)
        if self.transport is not None and not self._handlingRequest:
            start_deadline(self)

    return requestDone


def patched_connection_lost(original: Callable[..., None]) -> Callable[..., None]:
    def connectionLost(self: Any, reason: Any) -> None:
        cancel_deadline(self)
        original(self, reason)

    return connectionLost
