"""What ``streaming.daphne`` needs of daphne, autobahn and Twisted internals, checked before anything is patched.

None of these internals is public API, so a release may rename or reshape any of them, and nothing would fail
loudly: a patch would land beside the code daphne calls, a close would raise on every socket, flow control would
read attributes that no longer mean anything. ``install()`` runs ``check()`` first, and a process on versions that
lack one of them refuses to start, naming each. The lock files (``requirements/``) pin the tested versions.

``REQUIREMENTS`` is the whole list, each entry with the reason the shim needs it. No connection exists at start-up,
so what lives on instances is looked for in the classes' code: an attribute counts as present when the class (or
one of its bases) has it, or when one of their functions assigns it.
"""

from __future__ import annotations

import dis
import importlib
import importlib.metadata
import inspect
from collections.abc import Iterator
from dataclasses import dataclass
from types import CodeType
from typing import Any

from streaming.exceptions import IncompatibleServer

DISTRIBUTIONS = ("daphne", "autobahn", "Twisted")
LOCK_FILES = ("requirements/production.txt", "requirements/development.txt")

_PROTOCOL = "daphne.ws_protocol:WebSocketProtocol"
_SERVER = "daphne.server:Server"
_ACCESS_LOG = "daphne.access:AccessLogGenerator"
_HTTP_CHANNEL = "twisted.web.http:HTTPChannel"
_TRANSPORT = "twisted.internet.tcp:Server"
"""The Twisted transport of a WebSocket daphne accepted on a TCP port (``FlowControl`` writes to its socket)."""


@dataclass(frozen=True)
class Attribute:
    """*owner* (``module`` or ``module:Class``) has *name*, or assigns it to its instances."""

    owner: str
    name: str
    why: str

    @property
    def label(self) -> str:
        return _dotted(self.owner, self.name)

    def problem(self) -> str | None:
        target = _resolve(self.owner)
        if hasattr(target, self.name):
            return None
        if isinstance(target, type) and _assigns(target, self.name):
            return None
        return "missing"


@dataclass(frozen=True)
class Method:
    """*owner*.*name* is a function whose parameters begin with *parameters*, or are exactly them if *exact*.

    A patched method is exact: its replacement takes what daphne passes to the original. A called one needs only
    the parameters the shim passes.
    """

    owner: str
    name: str
    parameters: tuple[str, ...]
    why: str
    exact: bool = False

    @property
    def label(self) -> str:
        return _dotted(self.owner, self.name)

    def problem(self) -> str | None:
        function = getattr(_resolve(self.owner), self.name, None)
        if function is None:
            return "missing"
        try:
            actual = tuple(inspect.signature(inspect.unwrap(function)).parameters)
        except (TypeError, ValueError):
            return "is not a function with a signature"
        matches = actual == self.parameters if self.exact else actual[: len(self.parameters)] == self.parameters
        if matches:
            return None
        expected = ", ".join(self.parameters) + ("" if self.exact else ", ...")
        return f"takes ({', '.join(actual)}), expected ({expected})"


@dataclass(frozen=True)
class Reference:
    """The code of *owner*.*function* names *name*: an attribute it reads or calls, or a string it uses as a key.

    This is how the shim knows daphne still calls what it patches, and still reads what it sets.
    """

    owner: str
    function: str
    name: str
    why: str

    @property
    def label(self) -> str:
        return _dotted(self.owner, self.function)

    def problem(self) -> str | None:
        function = getattr(_resolve(self.owner), self.function, None)
        if not inspect.isfunction(function):
            return "missing" if function is None else "is not a Python function"
        if self.name not in _names(inspect.unwrap(function).__code__):
            return f"no longer uses {self.name!r}"
        return None


Requirement = Attribute | Method | Reference

REQUIREMENTS: tuple[Requirement, ...] = (
    # streaming.daphne.close
    Method(_PROTOCOL, "handle_reply", ("self", "message"), "patched: clean closes with any code", exact=True),
    Reference(_SERVER, "handle_reply", "handle_reply", "the application's messages reach the protocol through it"),
    Method(_PROTOCOL, "sendCloseFrame", ("self", "code", "reasonUtf8", "isReply"), "sends every close frame"),
    Reference(_PROTOCOL, "sendCloseFrame", "closeHandshakeTimeout", "the close handshake timeout the shim sets"),
    Attribute(_PROTOCOL, "state", "which messages and closes still apply"),
    Attribute(_PROTOCOL, "STATE_CONNECTING", "a close before accept goes to daphne (HTTP 403)"),
    Attribute(_PROTOCOL, "STATE_OPEN", "only an open socket is written to or closed with 1001"),
    Attribute(_PROTOCOL, "STATE_CLOSING", "sends after the close handshake began are dropped"),
    Attribute(_PROTOCOL, "STATE_CLOSED", "sends after the close are dropped"),
    Attribute(_PROTOCOL, "server", "a socket accepted while the server drains is closed with 1001"),
    # streaming.daphne.flow_control
    Attribute(_PROTOCOL, "transport", "flow control is the transport's producer"),
    Attribute(_PROTOCOL, "is_closed", "flow control learns of the connection's end from it"),
    Attribute(_PROTOCOL, "send_queue", "frames autobahn still queues come before a direct write"),
    Attribute(_PROTOCOL, "_perMessageCompress", "a compressed connection's frames go through autobahn"),
    Method(_PROTOCOL, "sendMessage", ("self", "payload", "isBinary"), "sends a compressed connection's frames"),
    Method(_TRANSPORT, "registerProducer", ("self", "producer", "streaming"), "flow control becomes the producer"),
    Method(_TRANSPORT, "unregisterProducer", ("self",), "replaces the HTTP channel as the producer"),
    Method(_TRANSPORT, "write", ("self", "bytes"), "the rest of a frame the kernel did not take"),
    Method(_TRANSPORT, "writeSequence", ("self", "iovec"), "frames written behind buffered data"),
    Attribute(_TRANSPORT, "socket", "direct writes go to it with sendmsg"),
    Attribute(_TRANSPORT, "dataBuffer", "direct writes only when nothing is buffered"),
    Attribute(_TRANSPORT, "offset", "direct writes only when nothing is buffered"),
    Attribute(_TRANSPORT, "_tempDataLen", "direct writes only when nothing is buffered"),
    Attribute(_TRANSPORT, "connected", "no direct writes to a closed connection"),
    Attribute(_TRANSPORT, "disconnecting", "no direct writes to a closing connection"),
    Attribute(_TRANSPORT, "_writeDisconnected", "no direct writes after a write shutdown"),
    Attribute(_TRANSPORT, "bufferSize", "the high-water mark that pauses flow control"),
    Method(_PROTOCOL, "sendPong", ("self", "payload"), "answers a ping once the socket drains"),
    Method(_PROTOCOL, "sendPing", ("self", "payload"), "patched: pings written straight to the socket", exact=True),
    Reference(_PROTOCOL, "_sendAutoPing", "sendPing", "the keep-alive ping goes through it"),
    # streaming.daphne.receive_queue
    Method(_SERVER, "create_application", ("self", "protocol", "scope"), "replaced for WebSockets", exact=True),
    Reference(_PROTOCOL, "onConnect", "create_application", "daphne makes a WebSocket's application through it"),
    Reference(_SERVER, "create_application", "Queue", "what it makes there, a ReceiveQueue replaces"),
    Reference(_SERVER, "create_application", "handle_reply", "the application's send, as daphne binds it"),
    Reference(_SERVER, "create_application", "ensure_future", "the application runs as a task, as daphne runs it"),
    Reference(_PROTOCOL, "applicationCreateWorked", "put_nowait", "the only way daphne puts into the queue"),
    Reference(_PROTOCOL, "onMessage", "put_nowait", "the only way daphne puts into the queue"),
    Reference(_PROTOCOL, "onClose", "put_nowait", "the only way daphne puts into the queue"),
    # streaming.daphne.pings
    Method(_PROTOCOL, "onPing", ("self", "payload"), "patched: the ping budget", exact=True),
    Reference("autobahn.twisted.websocket:WebSocketAdapterProtocol", "_onPing", "onPing", "autobahn's ping callback"),
    Reference(_PROTOCOL, "processControlFrame", "_onPing", "autobahn hands every ping to it"),
    # streaming.daphne.inbound
    Method(
        _PROTOCOL, "sendCloseFrame", ("self", "code", "reasonUtf8", "isReply"), "patched: reads again", exact=True
    ),
    Method(
        _PROTOCOL,
        "_max_message_size_exceeded",
        ("self", "msg_size", "max_msg_size", "reason"),
        "patched: close 1009 for an oversize message",
        exact=True,
    ),
    Reference(_PROTOCOL, "onMessageFrameBegin", "_max_message_size_exceeded", "autobahn's size check calls it"),
    Reference(_PROTOCOL, "onMessageEnd", "failedByMe", "the rest of an oversize message is discarded"),
    Attribute("daphne.ws_protocol:WebSocketFactory", "maxMessagePayloadSize", "the message size limit"),
    Attribute("daphne.ws_protocol:WebSocketFactory", "maxFramePayloadSize", "the frame size limit"),
    Method(_PROTOCOL, "_sendAutoPing", ("self",), "patched: no keep-alive ping while paused", exact=True),
    Reference("daphne.ws_protocol:WebSocketProtocol", "check_timeouts", "_sendAutoPing", "daphne's keep-alive"),
    # streaming.daphne.lifecycle
    Method(_SERVER, "protocol_connected", ("self", "protocol"), "patched: a connection's timers start", exact=True),
    Method(_SERVER, "protocol_disconnected", ("self", "protocol"), "patched: timers stop, clean-up", exact=True),
    Method(_SERVER, "application_checker", ("self",), "replaced: applications reap themselves", exact=True),
    Method(_SERVER, "timeout_checker", ("self",), "replaced: each connection's own timers", exact=True),
    Reference(_SERVER, "run", "application_checker", "daphne starts its sweeps there, and no longer elsewhere"),
    Reference(_SERVER, "run", "timeout_checker", "daphne starts its sweeps there, and no longer elsewhere"),
    Reference(_SERVER, "protocol_disconnected", "disconnected", "the time of a disconnect, which clean-up reads"),
    Reference(_SERVER, "application_checker", "application_close_timeout", "the rules a reaped app follows"),
    Reference(_SERVER, "application_checker", "handle_exception", "an app's exception goes to its protocol"),
    Reference(_PROTOCOL, "onConnect", "protocol_connected", "a WebSocket is registered there"),
    Reference(_PROTOCOL, "onClose", "protocol_disconnected", "a WebSocket's disconnect"),
    Reference("daphne.http_protocol:WebRequest", "__init__", "protocol_connected", "an HTTP request is registered"),
    Reference("daphne.http_protocol:WebRequest", "connectionLost", "protocol_disconnected", "a request's end"),
    Reference(_PROTOCOL, "check_timeouts", "websocket_connect_timeout", "the rules the timers keep"),
    Reference(_PROTOCOL, "check_timeouts", "last_ping", "a ping is due once nothing came for an interval"),
    Reference(_PROTOCOL, "onMessage", "last_ping", "every message from the client postpones the ping"),
    Attribute(_PROTOCOL, "last_ping", "a client's ping postpones daphne's keep-alive ping too"),
    Reference("daphne.http_protocol:WebRequest", "check_timeouts", "http_timeout", "what the HTTP timer enforces"),
    Attribute(_SERVER, "ping_interval", "the keep-alive timer's interval"),
    Attribute(_SERVER, "websocket_connect_timeout", "the handshake timer"),
    Attribute(_SERVER, "websocket_timeout", "the WebSocket's lifetime timer (-1: none)"),
    Attribute(_SERVER, "http_timeout", "the HTTP request's timer (None: none)"),
    Method(_PROTOCOL, "serverReject", ("self",), "a WebSocket not accepted in time"),
    Method(_PROTOCOL, "serverClose", ("self",), "a WebSocket past its lifetime"),
    Method("daphne.http_protocol:WebRequest", "duration", ("self",), "how long an HTTP request has run"),
    Attribute(_PROTOCOL, "autoPingTimeoutCall", "a keep-alive ping out when reading pauses stops counting"),
    Attribute(_PROTOCOL, "autoPingPending", "its pong, read later, is then ignored"),
    Method(_TRANSPORT, "pauseProducing", ("self",), "stops reading from a client over its inbound budget"),
    Method(_TRANSPORT, "resumeProducing", ("self",), "reads from it again"),
    # streaming.daphne.handshake_deadline
    Method(_HTTP_CHANNEL, "connectionMade", ("self",), "patched: the headers' deadline starts", exact=True),
    Method(_HTTP_CHANNEL, "allHeadersReceived", ("self",), "patched: the headers' deadline ends", exact=True),
    Method(_HTTP_CHANNEL, "requestDone", ("self", "request"), "patched: the next request's deadline", exact=True),
    Method(_HTTP_CHANNEL, "connectionLost", ("self", "reason"), "patched: the deadline is cancelled", exact=True),
    Reference(_HTTP_CHANNEL, "lineReceived", "allHeadersReceived", "the channel ends a request's headers there"),
    Attribute(_HTTP_CHANNEL, "_handlingRequest", "a kept-alive channel between requests gets a deadline"),
    Attribute(_HTTP_CHANNEL, "transport", "a channel past its deadline is aborted"),
    # streaming.daphne.upgrade_filter
    Method("daphne.http_protocol:WebRequest", "process", ("self",), "patched: dropped addresses' upgrades", exact=True),
    Attribute("daphne.http_protocol", "parse_x_forwarded_for", "the forwarded address, as daphne reads it"),
    # streaming.daphne.shutdown
    Method(_SERVER, "kill_all_applications", ("self",), "patched: graceful shutdown", exact=True),
    Reference(_SERVER, "run", "kill_all_applications", "daphne runs it before the reactor shuts down"),
    Attribute(_SERVER, "connections", "the sockets to close and the applications to wait for"),
    Reference(_SERVER, "create_application", "application_instance", "a connection's application, waited for"),
    # streaming.daphne.access_log
    Method(
        _ACCESS_LOG,
        "write_entry",
        ("self", "host", "date", "request", "status", "length", "ident", "user"),
        "patched: access log without query strings",
        exact=True,
    ),
    Reference(_ACCESS_LOG, "__call__", "write_entry", "daphne writes every access-log line through it"),
    # streaming.daphne.install
    Attribute("autobahn.websocket.protocol", "pformat", "replaced: no configuration dump on every connection"),
)


def check() -> None:
    """Raise ``IncompatibleServer`` naming every requirement the installed daphne, autobahn and Twisted miss."""
    found = problems()
    if found:
        lines = "\n".join(f"  - {problem}" for problem in found)
        raise IncompatibleServer(
            f"streaming.daphne cannot patch the installed {installed_versions()}: these internals it relies on are "
            f"missing or changed:\n{lines}\n"
            f"{' and '.join(LOCK_FILES)} pin the tested versions; install from them (make setup, the Dockerfile)."
        )


def problems() -> list[str]:
    """One line per unmet requirement: the internal, what is wrong with it, and what the shim needs it for."""
    found = []
    for requirement in REQUIREMENTS:
        try:
            problem = requirement.problem()
        except LookupError as error:
            problem = str(error)
        if problem is not None:
            found.append(f"{requirement.label}: {problem} ({requirement.why})")
    return found


def installed_versions() -> str:
    """E.g. ``daphne 4.2.3, autobahn 26.11.1, Twisted 26.10.0``."""
    versions = []
    for distribution in DISTRIBUTIONS:
        try:
            versions.append(f"{distribution} {importlib.metadata.version(distribution)}")
        except importlib.metadata.PackageNotFoundError:
            versions.append(f"{distribution} (not installed)")
    return ", ".join(versions)


def _dotted(owner: str, name: str) -> str:
    return f"{owner.replace(':', '.')}.{name}"


def _resolve(owner: str) -> Any:
    """The module or class ``module[:Qualified.name]`` names; ``LookupError`` saying what is missing."""
    module_name, _, qualified_name = owner.partition(":")
    try:
        target = importlib.import_module(module_name)
    except ImportError as error:
        raise LookupError(f"cannot import {module_name} ({error})") from error
    path = module_name
    for part in filter(None, qualified_name.split(".")):
        path = f"{path}.{part}"
        try:
            target = getattr(target, part)
        except AttributeError:
            raise LookupError(f"{path} is missing") from None
    return target


def _assigns(cls: type, name: str) -> bool:
    """Whether a function of *cls* or of its bases assigns *name* as an attribute (``self.name = ...``)."""
    for klass in cls.__mro__:
        for value in vars(klass).values():
            for code in _code_objects(value):
                if name in code.co_names and any(
                    instruction.opname == "STORE_ATTR" and instruction.argval == name
                    for instruction in dis.get_instructions(code)
                ):
                    return True
    return False


def _code_objects(value: Any) -> Iterator[CodeType]:
    """The code of a function, static or class method, or property, and of the functions nested in it."""
    if isinstance(value, property):
        functions = [value.fget, value.fset, value.fdel]
    else:
        functions = [getattr(value, "__func__", value)]
    for function in functions:
        if inspect.isfunction(function):
            yield from _nested(inspect.unwrap(function).__code__)


def _nested(code: CodeType) -> Iterator[CodeType]:
    yield code
    for constant in code.co_consts:
        if isinstance(constant, CodeType):
            yield from _nested(constant)


def _names(code: CodeType) -> set[str]:
    """The attribute and global names, and the string constants, of *code* and the functions nested in it."""
    names: set[str] = set()
    for nested in _nested(code):
        names.update(nested.co_names)
        names.update(constant for constant in nested.co_consts if isinstance(constant, str))
    return names
