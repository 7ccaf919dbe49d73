"""Drop WebSocket upgrade requests from addresses the application names, before daphne spends anything on them.

A refused handshake is answered properly (a status and close 1013), and that answer costs the server a WebSocket
handshake, an application instance and three frames: an address ignoring its 1013s and reconnecting at once made
the gateway do that hundreds of times a second, on the event loop every customer shares. The application names the
addresses whose upgrades are to be dropped (``drop_upgrades_from``); the patched ``WebRequest.process`` aborts such a
request's connection once its headers are in, before daphne builds a WebSocket protocol or an application for it.
Plain HTTP requests (health, readiness, metrics) always pass. The address is the one daphne will report: with
``--proxy-headers``, the forwarded one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from streaming import metrics

_should_drop: Callable[[str], bool] | None = None


def drop_upgrades_from(should_drop: Callable[[str], bool] | None) -> None:
    """Name the client addresses whose upgrade requests are dropped unanswered (None: drop none)."""
    global _should_drop
    _should_drop = should_drop


def reported_client_address(request: Any) -> str:
    """The client address daphne puts in the request's scope: the peer's, or the forwarded one behind a proxy."""
    from daphne.http_protocol import parse_x_forwarded_for

    address = [str(request.client.host), request.client.port] if hasattr(request.client, "host") else None
    server = request.server
    if server.proxy_forwarded_address_header:
        address, _ = parse_x_forwarded_for(
            request.requestHeaders, server.proxy_forwarded_address_header, server.proxy_forwarded_port_header,
            server.proxy_forwarded_proto_header, address, None,
        )
    return str(address[0]) if address else ""


def patched_process(original: Callable[..., Any]) -> Callable[..., Any]:
    def process(self: Any) -> Any:
        """Abort an upgrade request from an address the application drops; everything else as daphne does it."""
        should_drop = _should_drop
        if should_drop is not None and _is_upgrade(self) and should_drop(reported_client_address(self)):
            metrics.socket_dropped("address_refused_repeatedly")
            self.channel.transport.abortConnection()
            return None
        return original(self)

    return process


def _is_upgrade(request: Any) -> bool:
    upgrade = request.requestHeaders.getRawHeaders(b"Upgrade")
    return bool(upgrade) and upgrade[0].lower() == b"websocket"
