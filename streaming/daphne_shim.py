"""Shim over daphne's WebSocket close path, send-side flow control, shutdown and access log.

daphne hands ``websocket.close`` to autobahn's ``sendClose``, which refuses every code but 1000 and 3000-4999 (so
1001/1008/1011 reach the client only through daphne's crash path) and drops the ASGI ``reason``; and it writes every
``websocket.send`` straight into the Twisted transport, so a client that stops reading makes the server buffer without
bound. ``install()`` patches daphne so that any sendable close code and its reason leave as a clean close frame, so
that each WebSocket scope carries a ``FlowControl`` extension telling the application when the socket is not draining,
so that SIGTERM closes every WebSocket with 1001 and lets the apps clean up (``streaming.shutdown``), so that its
access log never shows a query string (browsers send their API key in one) and goes through Python logging, and so
that autobahn stops pretty-printing its configuration for a debug line nobody reads on every connection.
"""

from __future__ import annotations

import asyncio
import logging
import pprint
import struct
import sys
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

FLOW_CONTROL_EXTENSION = "cutemarkets.flow_control"
"""Key of the ``FlowControl`` object in ``scope["extensions"]``; absent when the server is not a patched daphne."""

DEFAULT_CLOSE_CODE = 1000
FALLBACK_CLOSE_CODE = 1011
"""What an application's unsendable close code (1005, 1006, 1015, 999, 5000, ...) goes out as."""

SENDABLE_CLOSE_CODES = frozenset({1000, 1001, 1002, 1003, 1007, 1008, 1009, 1011, 1012, 1013, 1014}) | frozenset(
    range(3000, 5000)
)
"""RFC 6455 / IANA codes a server may put in a close frame: never 1004-1006 or 1015 (reserved), nor 1010 (client-only)."""

MAX_CLOSE_REASON_BYTES = 123
"""A close frame is a control frame (payload <= 125 bytes), two of which carry the code."""

CLOSE_HANDSHAKE_TIMEOUT_SECONDS = 2
"""How long an application's close waits for the client's close reply before autobahn resets the TCP connection.

autobahn's default is 1 s, but txaio's batched timer rounds the deadline down to a whole second of the reactor clock,
so a timeout of T fires after T-1 to T s: with 1 s, any client whose reply takes longer than the time left to the
next second boundary (a fraction of an RTT, sometimes) is reset instead of closed cleanly. 2 s gives every client at
least 1 s, and still drops a client that does not read its close frame within 2 s.
"""

MAX_LOGGED_PATH_LENGTH = 256
"""Access-log lines carry at most this much of a request path (a client chooses its path, and its length)."""

TEXT_FRAME_FIRST_BYTE = 0x81
"""FIN set, no RSV bits, opcode 1 (text)."""

_PATCH_MARKER = "_cutemarkets_daphne_shim"

access_logger = logging.getLogger("cutemarkets.access")


def sanitize_close(code: int | None, reason: str | None) -> tuple[int, bytes]:
    """The code and UTF-8 reason an ASGI ``websocket.close`` puts on the wire.

    ``None`` means 1000 (ASGI's default); a code outside ``SENDABLE_CLOSE_CODES`` is logged and sent as 1011, keeping
    the reason, since the application did mean to close on an error. The reason is cut to 123 bytes on a character
    boundary.
    """
    if code is None:
        code = DEFAULT_CLOSE_CODE
    elif type(code) is not int or code not in SENDABLE_CLOSE_CODES:
        logger.warning("WebSocket close code %r cannot be sent; closing with %d", code, FALLBACK_CLOSE_CODE)
        code = FALLBACK_CLOSE_CODE
    encoded = reason.encode("utf-8") if isinstance(reason, str) else b""
    if len(encoded) > MAX_CLOSE_REASON_BYTES:
        encoded = encoded[:MAX_CLOSE_REASON_BYTES].decode("utf-8", "ignore").encode("utf-8")
    return code, encoded


class FlowControl:
    """Whether one daphne WebSocket connection's socket is draining, and a direct way to write text frames to it.

    It is the Twisted transport's streaming producer: the transport calls ``pauseProducing()`` when a write leaves
    more than its ``bufferSize`` (64 KiB) unsent in user space (the kernel's socket buffers are full, or the app wrote
    that much within one loop iteration) and ``resumeProducing()`` once all of it has been handed to the kernel. All
    methods run on daphne's event loop, which the Twisted reactor and asyncio share.

    ``write_text`` is the data path for applications that send many frames (see its docstring): it costs a fraction
    of an ASGI ``websocket.send``, and the pacing above applies to it unchanged.
    """

    def __init__(self, protocol: Any) -> None:
        self._protocol = protocol
        self._writable = asyncio.Event()
        self._writable.set()
        self._closed = False
        transport = self._socket_transport()
        # Direct socket writes only when the protocol writes to the TCP transport itself (no TLS layer between).
        self._direct = transport if transport is protocol.transport and hasattr(transport, "socket") else None

    @classmethod
    def attach(cls, protocol: Any) -> FlowControl:
        """Make a ``FlowControl`` the producer of ``protocol``'s transport.

        The producer it replaces is the ``HTTPChannel`` that parsed the upgrade request: it stays registered after
        daphne hands the socket to the WebSocket protocol, ignores pauses while its request is unfinished (forever),
        and autobahn itself never registers one.
        """
        flow_control = cls(protocol)
        protocol.transport.unregisterProducer()
        protocol.transport.registerProducer(flow_control, True)
        protocol.is_closed.addBoth(flow_control._on_protocol_closed)
        return flow_control

    def is_writable(self) -> bool:
        """False while the transport's unsent bytes are over the high-water mark, and once the connection is closed."""
        return self._writable.is_set() and not self._closed

    async def wait_writable(self) -> None:
        """Return once the transport has drained, or at once if it has or when it gets closed (check ``is_closed()``)."""
        await self._writable.wait()

    def is_closed(self) -> bool:
        return self._closed

    def buffered_bytes(self) -> int:
        """Bytes queued in the socket transport's user-space buffer (not the kernel's), 0 if it does not tell."""
        transport = self._socket_transport()
        if transport is None:
            return 0
        return len(transport.dataBuffer) - transport.offset + getattr(transport, "_tempDataLen", 0)

    @property
    def high_water_mark(self) -> int:
        """Unsent bytes above which the transport pauses its producer, i.e. ``is_writable()`` turns False."""
        transport = self._socket_transport()
        return transport.bufferSize if transport is not None else 0

    def write_text(self, payload: bytes) -> None:
        """Send *payload* (UTF-8 text) as one WebSocket text message, now; nothing happens once the close has begun.

        An ASGI ``websocket.send`` goes through daphne's ``handle_reply``, a UTF-8 encode, autobahn's ``sendMessage``
        and ``sendFrame`` (which copies the payload behind its header), and Twisted's buffered write, which registers
        the socket with the event loop and sends on the next turn: tens of microseconds, paid per client per frame
        by a fan-out server. This builds the frame header itself and, when nothing is waiting in Twisted's buffer,
        hands header and payload to the kernel in one ``sendmsg``; what the kernel does not take (and everything
        while data is waiting) goes through Twisted's buffer as before, so bytes keep their order with frames sent
        any other way, and ``pauseProducing`` still fires when the buffer passes the high-water mark. With
        permessage-deflate negotiated, autobahn compresses and sends it.
        """
        protocol = self._protocol
        if protocol.state != protocol.STATE_OPEN:
            return
        if protocol._perMessageCompress is not None:
            protocol.sendMessage(payload, False)
            return
        header = text_frame_header(len(payload))
        transport = self._direct
        if (
            transport is None
            or not transport.connected
            or transport.disconnecting
            or transport._writeDisconnected
            or transport._tempDataLen
            or len(transport.dataBuffer) != transport.offset
            or protocol.send_queue
        ):
            protocol.transport.writeSequence((header, payload))
            return
        try:
            sent = transport.socket.sendmsg((header, payload))
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            sent = 0  # Twisted meets the error on its own write and reports the connection lost
        if sent < len(header):
            transport.writeSequence((header[sent:], payload))
        elif sent < len(header) + len(payload):
            transport.write(payload[sent - len(header):])

    def abort(self) -> None:
        """Drop the TCP connection now with a reset, discarding what is still buffered.

        For a client that will not even read its close frame; without it, such a client is reset
        ``CLOSE_HANDSHAKE_TIMEOUT_SECONDS`` after the close. The application then receives ``websocket.disconnect``
        (1006).
        """
        self._protocol.wasNotCleanReason = "aborted by the application"
        self._protocol.dropConnection(abort=True)

    # Twisted IPushProducer, called by the transport.

    def pauseProducing(self) -> None:
        if not self._closed:
            self._writable.clear()

    def resumeProducing(self) -> None:
        self._writable.set()

    def stopProducing(self) -> None:
        self._mark_closed()

    def _on_protocol_closed(self, result: Any) -> Any:
        self._mark_closed()
        return result

    def _mark_closed(self) -> None:
        self._closed = True
        self._writable.set()

    def _socket_transport(self) -> Any:
        """The byte-buffering ``FileDescriptor`` under the protocol (below the TLS layer, if any), or None."""
        transport = self._protocol.transport
        while transport is not None and not hasattr(transport, "dataBuffer"):
            transport = getattr(transport, "transport", None)
        return transport


def text_frame_header(length: int) -> bytes:
    """RFC 6455 header of an unfragmented, unmasked (server-to-client) text frame carrying *length* bytes."""
    if length < 126:
        return bytes((TEXT_FRAME_FIRST_BYTE, length))
    if length < 65536:
        return struct.pack("!BBH", TEXT_FRAME_FIRST_BYTE, 126, length)
    return struct.pack("!BBQ", TEXT_FRAME_FIRST_BYTE, 127, length)


def get_flow_control(scope: dict[str, Any]) -> FlowControl | None:
    """The connection's ``FlowControl``, or None when the server is not a patched daphne (uvicorn, test communicators)."""
    return scope.get("extensions", {}).get(FLOW_CONTROL_EXTENSION)


def install() -> bool:
    """Patch the running daphne; idempotent. Returns whether daphne's classes are patched.

    Does nothing (returns False) unless ``daphne.server`` is already imported, as it is under daphne's CLI, its
    ``runserver`` and any process with the ``daphne`` Django app: importing it ourselves would install Twisted's
    asyncio reactor as a side effect in a process that may not want one.
    """
    server_module = sys.modules.get("daphne.server")
    if server_module is None:
        return False
    import autobahn.websocket.protocol
    from daphne.access import AccessLogGenerator
    from daphne.ws_protocol import WebSocketProtocol

    autobahn.websocket.protocol.pformat = DeferredPformat
    _patch(WebSocketProtocol, "handle_reply", _patched_handle_reply)
    _patch(server_module.Server, "create_application", _patched_create_application)
    _patch(server_module.Server, "kill_all_applications", _patched_kill_all_applications)
    _patch(AccessLogGenerator, "write_entry", _patched_write_entry)
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
    original = getattr(cls, name)
    if getattr(original, _PATCH_MARKER, False):
        return
    patched = make(original)
    setattr(patched, _PATCH_MARKER, True)
    setattr(cls, name, patched)


def _patched_handle_reply(original: Callable[..., None]) -> Callable[..., None]:
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
        if kind == "websocket.accept":
            from streaming import shutdown

            if shutdown.is_draining(self.server):
                shutdown.close_going_away(self)

    return handle_reply


def _patched_create_application(original: Callable[..., Any]) -> Callable[..., Any]:
    def create_application(self: Any, protocol: Any, scope: dict[str, Any]) -> Any:
        """Add the ``FlowControl`` extension to a WebSocket scope before the application instance is made.

        daphne builds the scope inline in ``WebSocketProtocol.onConnect`` and has no hook for server extensions; this
        is the one place that sees both the protocol (and so its transport) and the scope.
        """
        if scope["type"] == "websocket":
            scope.setdefault("extensions", {})[FLOW_CONTROL_EXTENSION] = FlowControl.attach(protocol)
        return original(self, protocol, scope)

    return create_application


def _patched_kill_all_applications(original: Callable[..., Any]) -> Callable[..., Any]:
    def kill_all_applications(self: Any) -> Any:
        """daphne's "before shutdown" trigger: drain gracefully (``streaming.shutdown``) instead of cancelling at once.

        Returns a Deferred, so the reactor stops only once every WebSocket got its 1001 and the apps finished, or
        the shutdown timeout passed. daphne's original would also fail on a connection with no application instance.
        """
        from twisted.internet import defer

        from streaming import shutdown

        return defer.Deferred.fromFuture(asyncio.ensure_future(shutdown.drain(self, shutdown.drain_timeout())))

    return kill_all_applications


def _patched_write_entry(original: Callable[..., None]) -> Callable[..., None]:
    def write_entry(
        self: Any, host: Any, date: Any, request: str, status: Any = None, length: Any = None, **_: Any
    ) -> None:
        """One access-log line per request or WebSocket event, through the ``cutemarkets.access`` logger.

        daphne logs an HTTP request's full URI, query string included, and a browser's key travels in ``?api_key=``;
        the query string is cut off here, whatever the protocol. Going through logging gives the line the process's
        format (``LOG_FORMAT=json``) instead of daphne's own stream.
        """
        method, _, target = request.partition(" ")
        path = target.split("?", 1)[0]
        if len(path) > MAX_LOGGED_PATH_LENGTH:
            path = path[:MAX_LOGGED_PATH_LENGTH] + "…"
        access_logger.info("%s %s %s %s %s", host, method, path, status or "-", length or "-")

    return write_entry
