"""Send-side flow control for daphne WebSockets, and a direct way to write text frames and pings to the socket.

daphne writes every ``websocket.send`` straight into the Twisted transport, so a client that stops reading makes the
server buffer without bound. The patched ``create_application`` (``streaming.daphne.receive_queue``) puts a
``FlowControl`` in each WebSocket scope's extensions, telling the application when the socket is not draining (the
gateway's outbox waits for it). The patched ``sendPing`` writes daphne's keep-alive pings the same direct way: one per
connection every ping interval was, through Twisted's buffered write, most of what 10,000 idle connections cost.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable
from typing import Any

FLOW_CONTROL_EXTENSION = "cutemarkets.flow_control"
"""Key of the ``FlowControl`` object in ``scope["extensions"]``; absent when the server is not a patched daphne."""

TEXT_FRAME_FIRST_BYTE = 0x81
"""FIN set, no RSV bits, opcode 1 (text)."""
PING_FRAME_FIRST_BYTE = 0x89
"""FIN set, no RSV bits, opcode 9 (ping)."""
MAX_CONTROL_PAYLOAD = 125

_PROTOCOL_ATTRIBUTE = "_cutemarkets_flow_control"


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
        self._paused = False
        # Who waits for the socket to drain: futures made only then (an asyncio.Event's deque of waiters cost every
        # connection 760 bytes, most of them never paused).
        self._drain_waiters: list[asyncio.Future[None]] | None = None
        self._closed = False
        self._pending_pong: bytes | None = None
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
        setattr(protocol, _PROTOCOL_ATTRIBUTE, flow_control)
        return flow_control

    @staticmethod
    def of(protocol: Any) -> FlowControl | None:
        """The ``FlowControl`` attached to *protocol*, if any."""
        return getattr(protocol, _PROTOCOL_ATTRIBUTE, None)

    def is_writable(self) -> bool:
        """False while the transport's unsent bytes are over the high-water mark, and once the connection is closed."""
        return not self._paused and not self._closed

    async def wait_writable(self) -> None:
        """Return once the transport has drained (at once if it has), or once it is closed (check ``is_closed()``)."""
        if not self._paused:
            return
        waiter = asyncio.get_running_loop().create_future()
        if self._drain_waiters is None:
            self._drain_waiters = []
        self._drain_waiters.append(waiter)
        try:
            await waiter
        finally:
            waiters = self._drain_waiters
            if waiters is not None and waiter in waiters:  # cancelled before the drain
                waiters.remove(waiter)

    def is_closed(self) -> bool:
        return self._closed

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
        self._write_frame(text_frame_header(len(payload)), payload)

    def write_ping(self, payload: bytes) -> None:
        """Send a ping carrying *payload* (at most 125 bytes), the way ``write_text`` sends text (control frames are
        never compressed); nothing happens once the close has begun."""
        protocol = self._protocol
        if protocol.state != protocol.STATE_OPEN:
            return
        if len(payload) > MAX_CONTROL_PAYLOAD:
            raise ValueError(f"a ping carries at most {MAX_CONTROL_PAYLOAD} bytes, not {len(payload)}")
        self._write_frame(bytes((PING_FRAME_FIRST_BYTE, len(payload))), payload)

    def _write_frame(self, header: bytes, payload: bytes) -> None:
        """Header and payload to the kernel in one ``sendmsg`` when nothing waits in Twisted's buffer; the rest, or
        all of it while something waits, through the buffer (see ``write_text``)."""
        protocol = self._protocol
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

    def pong(self, payload: bytes) -> None:
        """Answer a ping now if the socket drains; while it does not, keep only the latest ping's payload and answer
        that one once it drains (RFC 6455 allows answering only the most recent ping). A client that pings without
        reading thus costs at most one pending pong, instead of a pong per ping in Twisted's buffer."""
        if self.is_writable():
            self._protocol.sendPong(payload)
        else:
            self._pending_pong = payload

    # Twisted IPushProducer, called by the transport.

    def pauseProducing(self) -> None:
        if not self._closed:
            self._paused = True

    def resumeProducing(self) -> None:
        self._drained()
        pong, self._pending_pong = self._pending_pong, None
        if pong is not None and not self._closed:
            self._protocol.sendPong(pong)

    def stopProducing(self) -> None:
        self._mark_closed()

    def _on_protocol_closed(self, result: Any) -> Any:
        self._mark_closed()
        return result

    def _mark_closed(self) -> None:
        self._closed = True
        self._drained()

    def _drained(self) -> None:
        self._paused = False
        waiters, self._drain_waiters = self._drain_waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

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


def patched_send_ping(original: Callable[..., None]) -> Callable[..., None]:
    def sendPing(self: Any, payload: bytes | None = None) -> None:
        """Write the ping straight to the socket through the connection's ``FlowControl`` (autobahn's own path
        otherwise: a connection without one, an empty payload)."""
        flow_control = FlowControl.of(self)
        if flow_control is None or not payload:
            original(self, payload)
        else:
            flow_control.write_ping(payload)

    return sendPing


def get_flow_control(scope: dict[str, Any]) -> FlowControl | None:
    """The connection's ``FlowControl``; None unless the server is a patched daphne (uvicorn, test communicators)."""
    return scope.get("extensions", {}).get(FLOW_CONTROL_EXTENSION)
