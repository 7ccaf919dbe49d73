"""Installs the project's daphne patches (``install()``, called by ``cutemarkets/asgi.py``).

Each patch lives with the concern it serves: ``close`` (any sendable close code and its reason as a clean close frame),
``flow_control`` (send-side flow control and the direct text-frame write), ``inbound`` (the budget on queued inbound
bytes, and close 1009 for an oversize message), ``receive_queue`` (a WebSocket application's input queue, without
daphne's four deques, made with the connection's flow control and inbound budget), ``lifecycle`` (each connection's
timeouts and clean-up on its own events instead of daphne's sweeps over all connections), ``shutdown`` (SIGTERM closes
every WebSocket with 1001 and lets the apps clean up), ``upgrade_filter`` (upgrades from addresses the application drops
are aborted before daphne builds anything) and ``access_log`` (no query strings; through Python logging). This module
wires them into daphne's classes, and stops autobahn pretty-printing its configuration for a debug line nobody reads on
every connection. Before it touches anything, ``compatibility.check()`` makes sure every internal these patches rely on
is there, with the shape they expect: a process on other versions refuses to start.
"""

from __future__ import annotations

import pprint
import sys
from collections.abc import Callable
from typing import Any

from streaming.daphne import compatibility
from streaming.daphne.access_log import patched_write_entry
from streaming.daphne.close import patched_handle_reply
from streaming.daphne.flow_control import patched_send_ping
from streaming.daphne.handshake_deadline import (
    patched_all_headers_received,
    patched_connection_lost,
    patched_connection_made,
    patched_request_done,
)
from streaming.daphne.inbound import (
    patched_max_message_size_exceeded,
    patched_send_auto_ping,
    patched_send_close_frame,
)
from streaming.daphne.lifecycle import (
    patched_create_application as reaped_create_application,
    patched_protocol_connected,
    patched_protocol_disconnected,
    patched_sweep,
)
from streaming.daphne.pings import patched_on_ping
from streaming.daphne.receive_queue import patched_create_application
from streaming.daphne.shutdown import patched_kill_all_applications
from streaming.daphne.upgrade_filter import patched_process

_PATCH_MARKER = "_cutemarkets_daphne_shim"


def install() -> bool:
    """Patch the running daphne; idempotent. Returns whether daphne's classes are patched.

    Does nothing (returns False) unless ``daphne.server`` is already imported, as it is under daphne's CLI, its
    ``runserver`` and any process with the ``daphne`` Django app: importing it ourselves would install Twisted's
    asyncio reactor as a side effect in a process that may not want one. Raises ``IncompatibleServer``, patching
    nothing, when the installed daphne, autobahn or Twisted lacks an internal the patches rely on.
    """
    server_module = sys.modules.get("daphne.server")
    if server_module is None:
        return False
    compatibility.check()
    import autobahn.websocket.protocol
    from daphne.access import AccessLogGenerator
    from daphne.http_protocol import WebRequest
    from daphne.ws_protocol import WebSocketProtocol
    from twisted.web.http import HTTPChannel

    # Called like pformat; what it returns formats like pformat's str:
    autobahn.websocket.protocol.pformat = DeferredPformat  # type: ignore[assignment]
    _patch(WebSocketProtocol, "handle_reply", patched_handle_reply)
    _patch(server_module.Server, "create_application", patched_create_application)
    _patch(server_module.Server, "create_application", reaped_create_application)
    _patch(server_module.Server, "protocol_connected", patched_protocol_connected)
    _patch(server_module.Server, "protocol_disconnected", patched_protocol_disconnected)
    _patch(server_module.Server, "application_checker", patched_sweep)
    _patch(server_module.Server, "timeout_checker", patched_sweep)
    _patch(server_module.Server, "kill_all_applications", patched_kill_all_applications)
    _patch(AccessLogGenerator, "write_entry", patched_write_entry)
    _patch(WebSocketProtocol, "onPing", patched_on_ping)
    _patch(WebSocketProtocol, "sendPing", patched_send_ping)
    _patch(WebSocketProtocol, "sendCloseFrame", patched_send_close_frame)
    _patch(WebSocketProtocol, "_max_message_size_exceeded", patched_max_message_size_exceeded)
    _patch(WebSocketProtocol, "_sendAutoPing", patched_send_auto_ping)
    _patch(HTTPChannel, "connectionMade", patched_connection_made)
    _patch(HTTPChannel, "allHeadersReceived", patched_all_headers_received)
    _patch(HTTPChannel, "requestDone", patched_request_done)
    _patch(HTTPChannel, "connectionLost", patched_connection_lost)
    _patch(WebRequest, "process", patched_process)
    return True


class DeferredPformat:
    """``pprint.pformat(value)``, computed only if the result is formatted into a log line.

    autobahn's ``_connectionMade`` and ``startHandshake`` pass ``pformat(...)`` of the connection's ~40 settings to
    ``log.debug`` on every connection, whatever the log level: 15% of the gateway's CPU in an admission storm. As
    autobahn's module-level ``pformat`` this costs one small object unless debug logging is on, when the line reads
    as before. (autobahn's ``Timings.__str__`` also calls it; daphne never tracks timings.)
    """

    __slots__ = ("_value",)

    def __init__(self, value: Any) -> None:
        self._value = value

    def __str__(self) -> str:
        return pprint.pformat(self._value)

    def __format__(self, spec: str) -> str:
        return format(str(self), spec)


def _patch(cls: type, name: str, make: Callable[[Callable[..., Any]], Callable[..., Any]]) -> None:
    """Wrap ``cls.name`` in ``make(current)``, once per *make* (two concerns may wrap one method, each once). Each
    layer's ``__wrapped__`` is what it wraps, down to daphne's own function, which ``compatibility`` inspects when
    ``install()`` runs again."""
    current = getattr(cls, name)
    layer = current
    while layer is not None:
        if getattr(layer, _PATCH_MARKER, None) is make:
            return
        layer = getattr(layer, "__wrapped__", None)
    patched = make(current)
    setattr(patched, _PATCH_MARKER, make)
    patched.__wrapped__ = current  # type: ignore[attr-defined]
    setattr(cls, name, patched)
