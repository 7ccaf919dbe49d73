"""A feed relay's probe port: ``GET /healthz``, ``/readyz`` and ``/metrics`` over plain HTTP/1.1, one request per
connection.

The relay has no web server, and its feed must not suffer for its probes, so this is the smallest HTTP that
orchestrators and Prometheus need, on the relay's own event loop: GET only, a request head of at most
`MAX_HEAD_BYTES` that must arrive within `HEAD_TIMEOUT_SECONDS`, one answer, then the connection is closed. At most
`MAX_CONNECTIONS` connections are served at once; more are dropped on arrival, so a flood of sockets costs the relay
a bounded amount of memory (while it lasts, probes may fail, which is what it should look like from outside).
Bodies of ``/healthz`` and ``/readyz`` have the gateway's JSON shape (`cutemarkets.health`).
"""

from __future__ import annotations

import asyncio
import json
from http import HTTPStatus

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from streaming.relay.status import RelayStatus

MAX_HEAD_BYTES = 8192
HEAD_TIMEOUT_SECONDS = 5.0
WRITE_TIMEOUT_SECONDS = 5.0
MAX_CONNECTIONS = 64
HEAD_END = b"\r\n\r\n"
JSON = "application/json"
TEXT = "text/plain; charset=utf-8"
PATHS = ("/healthz", "/readyz", "/metrics")


class ProbeServer:
    """Serves one relay's probes from its `RelayStatus` and its metrics from *registry*."""

    def __init__(self, status: RelayStatus, registry: CollectorRegistry) -> None:
        self.status = status
        self.registry = registry
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    async def start(self, host: str, port: int) -> None:
        """Listen on *host*:*port* (0: a free port, see `port`). Raises `OSError` when the address is taken."""
        self._server = await asyncio.start_server(self._handle, host, port, limit=MAX_HEAD_BYTES)

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        """Stop listening and drop the connections being served."""
        if self._server is None:
            return
        self._server.close()
        for handler in self._handlers:
            handler.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handler = asyncio.current_task()
        if handler is None or len(self._handlers) >= MAX_CONNECTIONS:
            writer.transport.abort()
            return
        self._handlers.add(handler)
        answered = False
        try:
            writer.write(self._answer(await self._read_head(reader)))
            async with asyncio.timeout(WRITE_TIMEOUT_SECONDS):
                await writer.drain()
            writer.close()
            answered = True
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError):
            pass  # a client that left, or does not read its answer: nothing to tell it
        finally:
            if not answered:
                writer.transport.abort()
            self._handlers.discard(handler)

    @staticmethod
    async def _read_head(reader: asyncio.StreamReader) -> bytes | HTTPStatus:
        """The request's head, or the status that refuses it (too slow, too large). Raises `IncompleteReadError`
        when the client closes first."""
        try:
            async with asyncio.timeout(HEAD_TIMEOUT_SECONDS):
                return await reader.readuntil(HEAD_END)
        except TimeoutError:
            return HTTPStatus.REQUEST_TIMEOUT
        except asyncio.LimitOverrunError:
            return HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE

    def _answer(self, head: bytes | HTTPStatus) -> bytes:
        if isinstance(head, HTTPStatus):
            return _response(head, f"{head.phrase}\n".encode(), TEXT)
        lines = head.decode("latin-1").split("\r\n")
        request_line = lines[0].split(" ")
        if len(request_line) != 3 or not request_line[2].startswith("HTTP/1."):
            return _response(HTTPStatus.BAD_REQUEST, b"not an HTTP/1.x request\n", TEXT)
        method, target, _ = request_line
        if method != "GET":
            return _response(HTTPStatus.METHOD_NOT_ALLOWED, b"GET only\n", TEXT, {"Allow": "GET"})
        path = target.partition("?")[0]
        if path == "/healthz":
            running = self.status.running
            return _json(HTTPStatus.OK if running else HTTPStatus.SERVICE_UNAVAILABLE,
                         {"status": "ok" if running else "stopped"})
        if path == "/readyz":
            readiness = self.status.readiness()
            return _json(HTTPStatus.OK if readiness.ready else HTTPStatus.SERVICE_UNAVAILABLE, readiness.body())
        if path == "/metrics":
            encode, content_type = choose_encoder(_header(lines[1:], "accept"))  # text or OpenMetrics, as asked
            return _response(HTTPStatus.OK, encode(self.registry), content_type)
        return _response(HTTPStatus.NOT_FOUND, f"not found: try {', '.join(PATHS)}\n".encode(), TEXT)


def _header(lines: list[str], wanted: str) -> str:
    for line in lines:
        name, _, value = line.partition(":")
        if name.strip().lower() == wanted:
            return value.strip()
    return ""


def _json(status: HTTPStatus, body: dict[str, object]) -> bytes:
    return _response(status, json.dumps(body).encode(), JSON)


def _response(status: HTTPStatus, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> bytes:
    fields = {"Content-Type": content_type, "Content-Length": str(len(body)), "Connection": "close", **(headers or {})}
    head = "".join(f"{name}: {value}\r\n" for name, value in fields.items())
    return f"HTTP/1.1 {status.value} {status.phrase}\r\n{head}\r\n".encode("latin-1") + body
