"""Malformed handshakes, malformed frames and escalation attempts through a real daphne process; where keys end up.

Requests are written byte for byte over raw sockets (``asyncio.open_connection``): bad Authorization schemes, repeated
headers, non-ASCII and NUL bytes, very long keys and paths, percent-encoding tricks in the path and the query; then
RFC 6455 violations after the handshake, floods of bad items, keys that exist but must not stream, live revocations,
and a scan of the database and Redis for raw keys. The contract: a clear 4401 with ``auth_failed`` after
``connected``, or an HTTP refusal outside ``/v1/ws/`` — never a 500 or a 1011, never a traceback or a forged line in
the gateway's log, never a key or its secret in a log line, a table or Redis.

Run with ``-s`` to print each case's outcome as a Markdown table row (the table of RELIABILITY.md).
"""

from __future__ import annotations

import asyncio
import base64
import io
import os
import re
import statistics
import struct
import time
from dataclasses import dataclass, field

import orjson
import pytest
import redis
from channels.db import database_sync_to_async
from django.core.management import call_command
from django.db import connection as db_connection
from django.urls import reverse

from accounts.models import ApiKey, Plan, ProductTier, User
from tests.accounts.factories import ISSUED_KEYS, make_key, make_user
from tests.reliability.figures import record

pytestmark = [pytest.mark.reliability, pytest.mark.e2e]

# --- a hand-rolled WebSocket client: sends what real client libraries will not ------------------------------------

TIMEOUT = 10
WEBSOCKET_KEY = base64.b64encode(b"hostile-handshak").decode()  # 16 bytes, as RFC 6455 requires


def upgrade_request(
    target: bytes | str,
    headers: list[tuple[bytes | str, bytes | str]] = (),
    *,
    method: bytes = b"GET",
    version: bytes = b"HTTP/1.1",
) -> bytes:
    """A WebSocket upgrade request; *target* and extra *headers* are sent byte for byte (str as latin-1)."""

    def raw(value: bytes | str) -> bytes:
        return value if isinstance(value, bytes) else value.encode("latin-1")

    lines = [
        method + b" " + raw(target) + b" " + version,
        b"Host: 127.0.0.1",
        b"Upgrade: websocket",
        b"Connection: Upgrade",
        b"Sec-WebSocket-Key: " + WEBSOCKET_KEY.encode(),
        b"Sec-WebSocket-Version: 13",
    ]
    lines += [raw(name) + b": " + raw(value) for name, value in headers]
    return b"\r\n".join(lines) + b"\r\n\r\n"


def client_frame(payload: bytes | str, opcode: int | None = None, *, fin: bool = True, masked: bool = True) -> bytes:
    """One client frame (masked, as RFC 6455 requires of clients, unless *masked* is False)."""
    data = payload.encode("utf-8", "surrogatepass") if isinstance(payload, str) else payload
    if opcode is None:
        opcode = 0x1 if isinstance(payload, str) else 0x2
    head = bytes([(0x80 if fin else 0) | opcode])
    mask_bit = 0x80 if masked else 0
    if len(data) < 126:
        head += bytes([mask_bit | len(data)])
    elif len(data) < 1 << 16:
        head += bytes([mask_bit | 126]) + struct.pack("!H", len(data))
    else:
        head += bytes([mask_bit | 127]) + struct.pack("!Q", len(data))
    if not masked:
        return head + data
    mask = os.urandom(4)
    return head + mask + bytes(byte ^ mask[index % 4] for index, byte in enumerate(data))


def close_frame(code: int = 1000, reason: bytes = b"") -> bytes:
    return client_frame(struct.pack("!H", code) + reason, opcode=0x8)


@dataclass
class Reply:
    """What the server answered: the HTTP status, and after a 101 the status events and the close."""

    status: int | None = None
    head: bytes = b""
    body: bytes = b""
    events: list[dict] = field(default_factory=list)
    close_code: int | None = None
    close_reason: str = ""
    dropped: bool = False  # the TCP connection ended without a close frame (after a 101) or without a response

    @property
    def statuses(self) -> list[str]:
        return [event.get("status") for event in self.events]

    def summary(self) -> str:
        if self.status is None:
            return "connection dropped without an HTTP response"
        if self.status != 101:
            return f"HTTP {self.status}"
        verdict = ", ".join(f"{event['status']}" for event in self.events)
        if self.close_code is None:
            return f"101, {verdict}, open" if not self.dropped else f"101, {verdict}, dropped without close"
        reason = f' "{self.close_reason}"' if self.close_reason else ""
        return f"101, {verdict}, close {self.close_code}{reason}"


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    first, second = await reader.readexactly(2)
    assert not second & 0x80, "a server frame must not be masked"
    length = second & 0x7F
    if length == 126:
        (length,) = struct.unpack("!H", await reader.readexactly(2))
    elif length == 127:
        (length,) = struct.unpack("!Q", await reader.readexactly(8))
    return first & 0x0F, await reader.readexactly(length)


class Connection:
    """An open raw connection after the handshake was written."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.reply = Reply()

    @classmethod
    async def open(cls, port: int, request: bytes) -> Connection:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 22)
        connection = cls(reader, writer)
        try:
            writer.write(request)
            await writer.drain()
        except ConnectionError:  # the server gave up on an oversized request before reading all of it
            pass
        await connection._read_response_head()
        return connection

    async def _read_response_head(self) -> None:
        try:
            async with asyncio.timeout(TIMEOUT):
                self.reply.head = await self.reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError) as error:
            partial = getattr(error, "partial", b"")
            self.reply.head = partial
            if not partial.startswith(b"HTTP/"):
                self.reply.dropped = True
                return
        self.reply.status = int(self.reply.head.split(b" ", 2)[1])

    async def _read_body(self) -> bytes:
        """An HTTP refusal's body: by Content-Length or chunks (the connection may stay open), else up to the end."""
        headers = {}
        for line in self.reply.head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        if b"content-length" in headers:
            return await self.reader.readexactly(int(headers[b"content-length"]))
        if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
            body = b""
            while size := int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16):
                body += (await self.reader.readexactly(size + 2))[:-2]
            await self.reader.readuntil(b"\r\n")
            return body
        try:
            return await self.reader.read()
        except ConnectionError:
            return b""

    async def send(self, frame: bytes) -> None:
        self.writer.write(frame)
        await self.writer.drain()

    async def next_events(self, count: int) -> list[dict]:
        """Read until *count* more status events arrived (or the server closed)."""
        wanted = len(self.reply.events) + count
        async with asyncio.timeout(TIMEOUT):
            while len(self.reply.events) < wanted and await self._read_one():
                pass
        return self.reply.events[wanted - count:]

    async def until_closed(self) -> Reply:
        """After a 101: read until the server's close frame (answered) or the end of the stream; else the body."""
        try:
            async with asyncio.timeout(TIMEOUT):
                if self.reply.status != 101:
                    self.reply.body = await self._read_body()
                else:
                    while await self._read_one():
                        pass
        finally:
            await self.abort()
        return self.reply

    async def close(self, code: int = 1000) -> Reply:
        """Client-initiated close: send a close frame, read until the server's answer."""
        try:
            await self.send(close_frame(code))
        except ConnectionError:  # the server closed first
            pass
        return await self.until_closed()

    async def _read_one(self) -> bool:
        """Read one frame; False once the stream is over (close frame answered, or the connection dropped)."""
        try:
            opcode, payload = await read_frame(self.reader)
        except (asyncio.IncompleteReadError, ConnectionError):
            self.reply.dropped = True
            return False
        if opcode == 0x8:
            if len(payload) >= 2:
                (self.reply.close_code,) = struct.unpack("!H", payload[:2])
                self.reply.close_reason = payload[2:].decode("utf-8", "replace")
            else:
                self.reply.close_code = 1005
            try:
                await self.send(close_frame(self.reply.close_code if self.reply.close_code != 1005 else 1000))
            except ConnectionError:
                pass
            return False
        if opcode == 0x1:
            self.reply.events.extend(orjson.loads(payload))
        elif opcode == 0x9:
            try:
                await self.send(client_frame(payload, opcode=0xA))
            except ConnectionError:
                self.reply.dropped = True
                return False
        return True

    async def abort(self) -> None:
        if not self.writer.is_closing():
            self.writer.close()
        try:
            await self.writer.wait_closed()
        except ConnectionError:
            pass


async def attempt(port: int, request: bytes, send: list[bytes] = ()) -> Reply:
    """One handshake as a client would make it: after a 101, read the verdict (the event after ``connected``);
    an admitted stream is closed by the client, a refused one is read until the server closes it."""
    connection = await Connection.open(port, request)
    if connection.reply.status != 101:
        return await connection.until_closed()
    for frame in send:
        await connection.send(frame)
    await connection.next_events(2)
    if connection.reply.statuses[-1:] == ["auth_success"]:
        return await connection.close()
    return await connection.until_closed()


# --- the gateway and its keys --------------------------------------------------------------------------------------

GATEWAY_ENV = {"STREAM_AUTH_TIMEOUT": "1", "STREAM_REJECT_GRACE": "0.2", "STREAM_KEY_USAGE_INTERVAL": "0.2"}
LOG_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) ")
# With DJANGO_DEBUG=1 (the test gateways) Django's own console handler repeats django.request warnings unformatted.
DJANGO_DEBUG_ECHO = re.compile(r"(Not Found|Bad Request|Forbidden|Method Not Allowed)( \(\w+\))?: /")


def secret_of(raw_key: str) -> str:
    return raw_key.rsplit("_", 1)[1]


def assert_clean_log(gateway) -> None:
    """No traceback, no error, one printable line per record, and no key or secret part of any issued key."""
    log = gateway.log()
    assert "Traceback" not in log, log[-3000:]
    lines = log.splitlines()  # splits on \\r, \\x1c-\\x1e, \\x85, U+2028/2029 too: forged lines would show up here
    assert lines, "empty gateway log"
    for line in lines:
        assert LOG_LINE.match(line) or DJANGO_DEBUG_ECHO.match(line), f"not a log record: {line[:200]!r}"
        assert " ERROR " not in line and " CRITICAL " not in line, line[:300]
        assert line.isprintable(), f"control characters in a log line: {line[:200]!r}"
    leaked = [key[:8] for key in ISSUED_KEYS if secret_of(key) in log]
    assert not leaked, f"{gateway.name} logged the secret of {leaked}"


class Keys:
    """Fresh Expert users, one per admission, so that no case waits for another's connection lock."""

    def __init__(self, count: int) -> None:
        self._users = {}
        for n in range(count):
            user = make_user(f"hs-{n}", plans={"options": "expert", "stocks": "expert"})
            self._users[make_key(user, "options")[1]] = user.pk
        self._keys = list(self._users)

    def take(self) -> str:
        return self._keys.pop()

    def user_of(self, key: str) -> int:
        return self._users[key]


async def lock_released(client: redis.Redis, user_id: int, timeout: float = TIMEOUT) -> float | None:
    """Seconds until the user's connection lock is gone (None if it is still held after *timeout*)."""
    from streaming.runtime.lock import KEY_PREFIX

    started = time.monotonic()
    while client.exists(f"{KEY_PREFIX}{user_id}"):
        if time.monotonic() - started > timeout:
            return None
        await asyncio.sleep(0.01)
    return round(time.monotonic() - started, 3)


@pytest.fixture
def keys(transactional_db):
    return Keys(60)


@pytest.fixture
def gateway(gateway_factory):
    return gateway_factory("hostile", **GATEWAY_ENV)


# --- the handshake cases -------------------------------------------------------------------------------------------

ADMITTED = "admitted"
AUTH_TIMEOUT = "auth_timeout"
TOO_LONG = "too long"  # Twisted refuses request lines and headers over 16 KiB: a 400, or a reset before it arrives


def refused(text: str) -> str:
    return f"4401: {text}"


def http(status: int) -> str:
    return f"HTTP {status}"


MALFORMED_HEADER = "Authorization header must be 'Bearer <API key>'"
INVALID_KEY = "invalid API key"
UNSUPPORTED = "unsupported market"


@dataclass(frozen=True)
class Case:
    """One handshake. ``{K}`` is replaced by a fresh valid options key, ``{KENC}`` by that key fully %-encoded."""

    name: str
    target: bytes | str
    headers: tuple[tuple[bytes | str, bytes | str], ...] = ()
    expect: str = ""
    note: str = ""
    raw_request: bytes | None = None  # sent instead of a built upgrade request


def bearer(value: str = "{K}") -> tuple[tuple[str, str]]:
    return (("Authorization", f"Bearer {value}"),)


CASES = {
    "authorization": [
        Case("Bearer KEY (baseline)", "/v1/ws/options/", bearer(), ADMITTED),
        Case("Basic scheme", "/v1/ws/options/",
             (("Authorization", "Basic " + base64.b64encode(b"{K}:").decode()),), refused(MALFORMED_HEADER)),
        Case("Token scheme", "/v1/ws/options/", (("Authorization", "Token {K}"),), refused(MALFORMED_HEADER)),
        Case("lowercase bearer", "/v1/ws/options/", (("Authorization", "bearer {K}"),), ADMITTED,
             "auth schemes are case-insensitive (RFC 9110 11.1)"),
        Case("BEARER", "/v1/ws/options/", (("Authorization", "BEARER {K}"),), ADMITTED),
        Case("Bearer with two tokens", "/v1/ws/options/", bearer("{K} {K}"), refused(MALFORMED_HEADER)),
        Case("Bearer<TAB>KEY", "/v1/ws/options/", (("Authorization", "Bearer\t{K}"),), refused(MALFORMED_HEADER)),
        Case("Bearer, two spaces", "/v1/ws/options/", bearer(" {K}"), ADMITTED, "surrounding spaces trimmed"),
        Case("Bearer KEY<TAB> (trailing)", "/v1/ws/options/", bearer("{K}\t"), ADMITTED,
             "trailing whitespace is not part of a header value"),
        Case("Bearer without token", "/v1/ws/options/", (("Authorization", "Bearer"),), refused(MALFORMED_HEADER)),
        Case("empty Authorization", "/v1/ws/options/", (("Authorization", ""),), refused(MALFORMED_HEADER)),
        Case("two Authorization headers, same key", "/v1/ws/options/", bearer() + bearer(),
             refused(MALFORMED_HEADER), "Twisted joins repeated headers with ',': 'Bearer K,Bearer K'"),
        Case("two Authorization headers, key + junk", "/v1/ws/options/", bearer() + (("authorization", "x"),),
             refused(INVALID_KEY), "joined to 'Bearer K,x': one token, not a key"),
        Case("valid header + invalid query", "/v1/ws/options/?api_key=cmo_junk", bearer(), ADMITTED,
             "the header wins"),
        Case("invalid header + valid query", "/v1/ws/options/?api_key={K}", bearer("cmo_junk"),
             refused(INVALID_KEY), "the header wins"),
        Case("empty Authorization + valid query", "/v1/ws/options/?api_key={K}", (("Authorization", ""),),
             refused(MALFORMED_HEADER), "a present header wins even when empty"),
        Case("Basic header + valid query", "/v1/ws/options/?api_key={K}",
             (("Authorization", "Basic eDp5"),), refused(MALFORMED_HEADER)),
        Case("valid key via Sec-WebSocket-Protocol", "/v1/ws/options/", (("Sec-WebSocket-Protocol", "{K}"),),
             AUTH_TIMEOUT, "not a credential source: no key, so the auth message is awaited"),
    ],
    "query": [
        Case("api_key=KEY (baseline)", "/v1/ws/options/?api_key={K}", (), ADMITTED),
        Case("api_key=%00", "/v1/ws/options/?api_key=%00", (), refused(INVALID_KEY)),
        Case("api_key=%ZZ", "/v1/ws/options/?api_key=%ZZ", (), refused(INVALID_KEY)),
        Case("api_key= (empty)", "/v1/ws/options/?api_key=", (), refused("empty api_key query parameter")),
        Case("api%5Fkey=KEY", "/v1/ws/options/?api%5Fkey={K}", (), ADMITTED, "names are %-decoded too"),
        Case("api_key fully %-encoded", "/v1/ws/options/?api_key={KENC}", (), ADMITTED),
        Case("api_key twice, same key", "/v1/ws/options/?api_key={K}&api_key={K}", (),
             refused("several api_key query parameters")),
        Case("api_key twice, key + empty", "/v1/ws/options/?api_key={K}&api_key=", (),
             refused("several api_key query parameters")),
        Case("api_key=+KEY", "/v1/ws/options/?api_key=+{K}", (), refused(INVALID_KEY), "'+' decodes to a space"),
        Case("api_key=%2BKEY", "/v1/ws/options/?api_key=%2B{K}", (), refused(INVALID_KEY)),
        Case("api_key=KEY+", "/v1/ws/options/?api_key={K}+", (), refused(INVALID_KEY)),
        Case("API_KEY=KEY (uppercase name)", "/v1/ws/options/?API_KEY={K}", (), AUTH_TIMEOUT,
             "not the parameter: no key, the auth message is awaited"),
        Case("api_key=KEY;x=1", "/v1/ws/options/?api_key={K};x=1", (), refused(INVALID_KEY),
             "';' is not a separator"),
        Case("api_key=KEY&x=%ZZ&&=", "/v1/ws/options/?api_key={K}&x=%ZZ&&=", (), ADMITTED),
        Case("raw non-ASCII byte in query", b"/v1/ws/options/?api_key=\xe9", (), http(400),
             "daphne: Invalid query string"),
        Case("1,500 parameters", "/v1/ws/options/?" + "&".join(f"p{n}=1" for n in range(1500)) + "&api_key={K}",
             (), ADMITTED, "~15 KB query, still under Twisted's line limit"),
    ],
    "path": [
        Case("/v1/ws/%6Fptions/", "/v1/ws/%6Fptions/?api_key={K}", (), ADMITTED, "the path is %-decoded"),
        Case("/v1/ws/options%2F", "/v1/ws/options%2F?api_key={K}", (), ADMITTED, "decodes to /v1/ws/options/"),
        Case("/v1/ws/options%2F%2F", "/v1/ws/options%2F%2F?api_key={K}", (), refused(UNSUPPORTED)),
        Case("/v1/ws/../admin/", "/v1/ws/../admin/?api_key={K}", (), refused(UNSUPPORTED),
             "no normalisation; stays under /v1/ws/"),
        Case("/v1/ws/%2e%2e/admin/", "/v1/ws/%2e%2e/admin/?api_key={K}", (), refused(UNSUPPORTED)),
        Case("/v1//ws/options", "/v1//ws/options?api_key={K}", (), http(403)),
        Case("//v1/ws/options", "//v1/ws/options?api_key={K}", (), http(403)),
        Case("/V1/WS/OPTIONS/", "/V1/WS/OPTIONS/?api_key={K}", (), http(403)),
        Case("/v1/ws/OPTIONS/", "/v1/ws/OPTIONS/?api_key={K}", (), refused(UNSUPPORTED), "markets are lowercase"),
        Case("/v1/ws/options/extra", "/v1/ws/options/extra?api_key={K}", (), refused(UNSUPPORTED)),
        Case("/v1/ws/options%00/", "/v1/ws/options%00/?api_key={K}", (), refused(UNSUPPORTED)),
        Case("/v1/ws/x%0DFORGED/ (CR)", "/v1/ws/x%0D2026-01-01%2000:00:00,000%20CRITICAL%20forged/?api_key={K}", (),
             refused(UNSUPPORTED), "was logged raw: a forged log line (fixed in streaming/routing.py)"),
        Case("/v1/ws/x%0AFORGED/ (LF)", "/v1/ws/x%0Aforged/?api_key={K}", (), refused(UNSUPPORTED),
             "was HTTP 403 (the market pattern did not match across a newline)"),
        Case("/v1/ws/%1B[31m/ (ANSI escape)", "/v1/ws/%1B[31mred/?api_key={K}", (), refused(UNSUPPORTED),
             "was logged raw (terminal escape)"),
        Case("/v1/ws/x%E2%80%A8/ (U+2028)", "/v1/ws/x%E2%80%A8forged/?api_key={K}", (), refused(UNSUPPORTED),
             "was logged raw (a line separator to Python and many log shippers)"),
        Case("raw ESC byte in path", b"/v1/ws/\x1b[31mraw/", (), http(400)),
        Case("raw non-ASCII byte in path", b"/v1/ws/\xe9/", (), http(400), "daphne: Invalid characters in path"),
        Case("10 KB path", "/v1/ws/" + "a" * 10_000 + "?api_key={K}", (), refused(UNSUPPORTED),
             "was logged in full as the market, twice per connection"),
        Case("100 KB path", "/v1/ws/" + "a" * 100_000, (), TOO_LONG),
        Case("/elsewhere/", "/elsewhere/?api_key={K}", (), http(403)),
        Case("/admin/ as WebSocket", "/admin/?api_key={K}", (), http(403)),
        Case("absolute-form target", "http://127.0.0.1/v1/ws/options/?api_key={K}", (), ADMITTED,
             "RFC 9112 3.2.2: servers accept absolute-form"),
        Case("asterisk-form target", "*", (), http(403)),
    ],
    "bytes": [
        Case("latin-1 bytes in the key", "/v1/ws/options/", ((b"Authorization", b"Bearer \xe9\xff{K}"),),
             refused(INVALID_KEY)),
        Case("UTF-8 bytes in the key", "/v1/ws/options/", ((b"Authorization", "Bearer €{K}".encode()),),
             refused(INVALID_KEY)),
        Case("NUL byte after the key", "/v1/ws/options/", ((b"Authorization", b"Bearer {K}\x00"),), http(400),
             "Twisted refuses it"),
        Case("VT byte in Authorization", "/v1/ws/options/", ((b"Authorization", b"Bearer {K}\x0b"),), http(400),
             "daphne: Invalid header value"),
        Case("NEL (0x85) smuggling a header", "/v1/ws/options/",
             ((b"X-Note", b"x\x85Authorization: Bearer {K}"),), http(400), "daphne refuses 0x85 in values"),
        Case("bare CR in Authorization", "/v1/ws/options/", ((b"Authorization", b"Bearer \r{K}"),), http(400)),
        Case("obs-fold continuation line", "/v1/ws/options/", ((b"Authorization", b"Bearer\r\n {K}"),), ADMITTED,
             "Twisted unfolds it to 'Bearer {K}' (RFC 9112 5.2 allows replacing it with a space)"),
        Case("non-ASCII header name", "/v1/ws/options/", ((b"Authorizati\xf6n", b"Bearer {K}"),), http(400)),
        Case("header name with underscore", "/v1/ws/options/", ((b"Api_Key", b"{K}"),), AUTH_TIMEOUT,
             "dropped by daphne (CVE-2015-0219); not a credential anyway"),
        Case("10 KB key in Authorization", "/v1/ws/options/", bearer("k" * 10_000), refused(INVALID_KEY)),
        Case("100 KB key in Authorization", "/v1/ws/options/", bearer("k" * 100_000), TOO_LONG),
        Case("10 KB key in the query", "/v1/ws/options/?api_key=" + "k" * 10_000, (), refused(INVALID_KEY)),
        Case("100 KB key in the query", "/v1/ws/options/?api_key=" + "k" * 100_000, (), TOO_LONG),
        Case("200 headers", "/v1/ws/options/", tuple((f"X-H{n}", "v") for n in range(200)) + bearer(), ADMITTED),
    ],
    "protocol": [
        Case("POST upgrade", "/v1/ws/options/?api_key={K}", (), http(405),
             raw_request=upgrade_request("/v1/ws/options/?api_key={K}", method=b"POST")),
        Case("HTTP/1.0 upgrade", "/v1/ws/options/?api_key={K}", (), ADMITTED, "autobahn accepts it",
             raw_request=upgrade_request("/v1/ws/options/?api_key={K}", version=b"HTTP/1.0")),
        Case("no Sec-WebSocket-Key", "/v1/ws/options/", (), http(400), raw_request=(
            b"GET /v1/ws/options/?api_key={K} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n")),
        Case("Sec-WebSocket-Version: 8", "/v1/ws/options/", (), ADMITTED, "hybi-10, still supported by autobahn",
             raw_request=(
            b"GET /v1/ws/options/?api_key={K} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: " + WEBSOCKET_KEY.encode() +
            b"\r\nSec-WebSocket-Version: 8\r\n\r\n")),
        Case("plain GET on /v1/ws/options/", "/v1/ws/options/", (), http(404), raw_request=(
            b"GET /v1/ws/options/?api_key={K} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"),
            note="HTTP side: Django has no such page"),
        Case("Origin malformed (http://[::1)", "/v1/ws/options/", bearer() + (("Origin", "http://[::1"),),
             http(400), "autobahn refuses it before the application"),
        Case("Origin port out of range", "/v1/ws/options/", bearer() + (("Origin", "http://a:99999"),), http(400)),
        Case("two Origin headers", "/v1/ws/options/",
             bearer() + (("Origin", "https://a.example"), ("Origin", "https://b.example")), ADMITTED,
             "Twisted joins them into one; no allowlist configured"),
        Case("Origin: null", "/v1/ws/options/", bearer() + (("Origin", "null"),), ADMITTED,
             "no allowlist configured (STREAM_ALLOWED_ORIGINS empty)"),
        Case("subprotocol offered", "/v1/ws/options/", bearer() + (("Sec-WebSocket-Protocol", "chat, x"),),
             ADMITTED, "no subprotocol is selected"),
    ],
}


def materialise(case: Case, key: str) -> bytes:
    encoded = "".join(f"%{byte:02X}" for byte in key.encode())

    def fill(value):
        if isinstance(value, bytes):
            return value.replace(b"{KENC}", encoded.encode()).replace(b"{K}", key.encode())
        return value.replace("{KENC}", encoded).replace("{K}", key)

    if case.raw_request is not None:
        return fill(case.raw_request)
    return upgrade_request(fill(case.target), [(fill(name), fill(value)) for name, value in case.headers])


def mismatch(case: Case, reply: Reply) -> str | None:
    """None when *reply* is what the case expects; else what went wrong."""
    if reply.status == 500 or reply.close_code == 1011:
        return f"server error: {reply.summary()}"
    expect = case.expect
    if expect == ADMITTED:
        ok = reply.status == 101 and reply.statuses == ["connected", "auth_success"] and reply.close_code == 1000
    elif expect == AUTH_TIMEOUT:
        ok = reply.statuses == ["connected", "auth_timeout"] and reply.close_code == 4401
    elif expect.startswith("4401: "):
        ok = (
            reply.statuses == ["connected", "auth_failed"]
            and reply.close_code == 4401
            and reply.close_reason == reply.events[-1]["message"]
            and expect[6:] in reply.close_reason
        )
    elif expect == TOO_LONG:
        ok = reply.dropped or reply.status in (400, 414, 431)
    else:
        ok = reply.status == int(expect.split()[1])
    return None if ok else f"expected {expect}, got {reply.summary()[:200]}"


async def run_cases(gateway, keys: Keys, cases: list[Case]) -> list[tuple[Case, Reply]]:
    results = []
    for case in cases:
        key = keys.take()
        results.append((case, await attempt(gateway.port, materialise(case, key))))
    return results


@pytest.mark.parametrize("group", list(CASES))
async def test_malformed_handshakes(gateway, keys, group):
    results = await run_cases(gateway, keys, CASES[group])
    for case, reply in results:
        print(f"| {group} | {case.name} | {reply.summary()[:150]} | {case.note} |")
    problems = [f"{case.name}: {problem}" for case, reply in results if (problem := mismatch(case, reply))]
    try:
        assert_clean_log(gateway)
    except AssertionError as failure:
        problems.append(f"gateway log: {failure}")
    assert not problems, "\n".join(problems)


async def test_refused_handshakes_leave_no_application_running(gateway_factory, keys):
    """A refused handshake (HTTP 403 outside /v1/ws/) must not leave its application instance behind.

    The refusal consumer used to join the channel layer; its receive, cancelled while the Redis BZPOPMIN was in
    flight, kept the instance alive until daphne killed it application_close_timeout later (a WARNING each time,
    and a task per refused handshake meanwhile). The gateway's shutdown log counts instances still running.
    """
    gateway = gateway_factory("refusals", **GATEWAY_ENV)
    for target in ("/elsewhere/", "/", "/v1/ws", "/admin/", "*") * 4:
        assert (await attempt(gateway.port, upgrade_request(target))).status == 403
    admitted = await attempt(gateway.port, upgrade_request("/v1/ws/options/", bearer(keys.take())))
    assert admitted.statuses == ["connected", "auth_success"]  # the gateway is alive and idle again
    started = time.monotonic()
    gateway.stop()
    log = gateway.log()
    assert "still running" not in log and "took too long to shut down" not in log, log[-1500:]
    assert time.monotonic() - started < 5
    assert_clean_log(gateway)


# --- malformed frames after the handshake ----------------------------------------------------------------------------

AUTH_PROBE = '{"action":"auth","params":"x"}'  # answered auth_success on an open stream: proves it is still open


DROPPED = 1006  # what a client reports when the TCP connection ends without a close frame


@dataclass(frozen=True)
class FrameCase:
    name: str
    frames: tuple[bytes, ...]
    expect_close: int | None  # None: the stream stays open (proved by AUTH_PROBE), after these statuses
    expect_statuses: tuple[str, ...] = ()


def fragments(text: str, parts: int) -> tuple[bytes, ...]:
    data = text.encode()
    size = -(-len(data) // parts)
    chunks = [data[index:index + size] for index in range(0, len(data), size)]
    return tuple(
        client_frame(chunk, opcode=0x1 if index == 0 else 0x0, fin=index == len(chunks) - 1)
        for index, chunk in enumerate(chunks)
    )


FRAME_CASES = [
    FrameCase("invalid UTF-8 in a text frame", (client_frame(b"\xff\xfe", opcode=0x1),), DROPPED),
    FrameCase("lone surrogate (CESU-8) in a text frame", (client_frame(b'{"a":"\xed\xa0\x80"}', opcode=0x1),), DROPPED),
    FrameCase("unmasked client frame", (client_frame(AUTH_PROBE, masked=False),), DROPPED),
    FrameCase("reserved opcode 0x3", (client_frame(b"x", opcode=0x3),), DROPPED),
    FrameCase("RSV1 set without an extension", (bytes([0xC1]) + client_frame("x")[1:],), DROPPED),
    FrameCase("ping with a 126-byte payload", (client_frame(b"p" * 126, opcode=0x9),), DROPPED),
    FrameCase("fragmented ping", (client_frame(b"p", opcode=0x9, fin=False),), DROPPED),
    FrameCase("continuation without a first fragment", (client_frame(b"x", opcode=0x0),), DROPPED),
    FrameCase("close code 999", (client_frame(struct.pack("!H", 999), opcode=0x8),), DROPPED),
    FrameCase("close with a 1-byte payload", (client_frame(b"\x03", opcode=0x8),), DROPPED),
    FrameCase("2 MiB text frame (the limit is 1 MiB)", (client_frame("x" * (2 << 20)),), 1009),
    FrameCase("1 MiB - 64 B text frame", (client_frame("x" * ((1 << 20) - 64)), client_frame(AUTH_PROBE)), None,
              ("error", "auth_success")),
    FrameCase("100 KB text frame", (client_frame("x" * 100_000), client_frame(AUTH_PROBE)), None,
              ("error", "auth_success")),
    FrameCase("empty text frame", (client_frame(""), client_frame(AUTH_PROBE)), None, ("error", "auth_success")),
    FrameCase("empty binary frame", (client_frame(b""), client_frame(AUTH_PROBE)), None, ("error", "auth_success")),
    FrameCase("auth message in 3 fragments", fragments(AUTH_PROBE, 3), None, ("auth_success",)),
    FrameCase("ping then auth", (client_frame(b"hi", opcode=0x9), client_frame(AUTH_PROBE)), None, ("auth_success",)),
]


async def test_malformed_frames_after_the_handshake(gateway, keys, clean_redis):
    """RFC 6455 violations end the connection (autobahn fails it by dropping TCP, its default ``failByDrop``: the
    client sees 1006), never a 1011 or a traceback, and the consumer lets its connection lock go; a message over
    ``STREAM_CLIENT_MAX_MESSAGE_BYTES`` is closed 1009; bad but well-framed input gets an error status and the stream
    stays open."""
    problems = []
    for case in FRAME_CASES:
        key = keys.take()
        connection = await Connection.open(gateway.port, upgrade_request("/v1/ws/options/", bearer(key)))
        assert await connection.next_events(2) and connection.reply.statuses == ["connected", "auth_success"]
        for frame in case.frames:
            try:
                await connection.send(frame)
            except ConnectionError:  # dropped before the whole frame was written: an outcome too
                break
        if case.expect_close is None:
            statuses = [event["status"] for event in await connection.next_events(len(case.expect_statuses))]
            reply = await connection.close()
            ok = tuple(statuses) == case.expect_statuses and reply.close_code == 1000
        else:
            reply = await connection.until_closed()
            code = DROPPED if reply.dropped and reply.close_code is None else reply.close_code
            ok = code == case.expect_close
        released = await lock_released(clean_redis, keys.user_of(key))
        ok = ok and released is not None
        print(f"| frames | {case.name} | {reply.summary()[:150]} | lock released after {released} s |")
        if not ok:
            problems.append(f"{case.name}: {reply.summary()}")
    try:
        assert_clean_log(gateway)
    except AssertionError as failure:
        problems.append(f"gateway log: {failure}")
    assert not problems, "\n".join(problems)


async def test_bad_items_cannot_amplify_into_a_slow_consumer_close(gateway, keys):
    """Three 64 KiB messages of invalid items, sent back to back by a client that reads all the time.

    Each invalid item used to get its own error event: 32,000 one-letter items made ~3.4 MB of errors from 64 KB
    (x53), so the third message overflowed the client's 4 MiB outbox and a client doing nothing but sending bad input
    was closed 1008 slow_consumer, which README promises never happens ("Bad input never closes the socket").
    """
    connection = await Connection.open(gateway.port, upgrade_request("/v1/ws/options/", bearer(keys.take())))
    await connection.next_events(2)
    flood = orjson.dumps({"action": "subscribe", "params": ",".join("a" * 32_000)}).decode()
    assert len(flood) > 64_000
    for _ in range(3):
        await connection.send(client_frame(flood))
    await connection.send(client_frame(AUTH_PROBE))
    while connection.reply.statuses.count("auth_success") < 2 and connection.reply.close_code is None:
        await connection.next_events(1)
    reply = await connection.close()
    answered = reply.events[2:]
    assert reply.close_code == 1000, reply.summary()[:300]
    assert [event["status"] for event in answered] == ["error"] * (len(answered) - 1) + ["auth_success"]
    output = sum(len(orjson.dumps(event)) for event in answered)
    print(f"| amplification | 3 x {len(flood)} bytes of invalid items | {len(answered) - 1} error events, "
          f"{output} bytes |")
    assert output < 3 * len(flood)  # no amplification at all
    assert_clean_log(gateway)


# --- escalation attempts ---------------------------------------------------------------------------------------------


@dataclass
class Attempt:
    name: str
    key: str
    market: str
    message: str


@pytest.fixture
def escalations(transactional_db) -> list[Attempt]:
    """Keys that exist but must not open a stream, each with the exact refusal the README promises."""
    stocks_only = make_user("esc-stocks", plans={"stocks": "expert"})
    developer = make_user("esc-developer", plans={"options": "developer", "stocks": "commercial"})
    free = make_user("esc-free")
    revoked_user = make_user("esc-revoked", plans={"options": "expert"})
    inactive = make_user("esc-inactive", plans={"options": "expert"})
    expired_user = make_user("esc-expired", plans={"options": "expert"})
    real = make_user("esc-real", plans={"options": "expert"})

    revoked_row, revoked_key = make_key(revoked_user, "options")
    revoked_row.revoke()
    inactive_key = make_key(inactive, "options")[1]
    inactive.is_active = False
    inactive.save()
    expired_key = make_key(expired_user, "options", expires_at="2000-01-01T00:00Z")[1]
    real_key = make_key(real, "options")[1]
    forged = real_key.rsplit("_", 1)[0] + "_" + "A" * 40  # a real prefix, a guessed secret
    ISSUED_KEYS.append(forged)
    return [
        Attempt("stocks key on /options/", make_key(stocks_only, "stocks")[1], "options",
                "authentication failed: this API key is for stocks; use it on /v1/ws/stocks/"),
        Attempt("options key on /stocks/", make_key(developer, "options")[1], "stocks",
                "authentication failed: this API key is for options; use it on /v1/ws/options/"),
        Attempt("Developer tier", make_key(developer, "options")[1], "options",
                "authentication failed: your options plan (developer) does not include WebSocket access; "
                "Expert or Commercial is required"),
        Attempt("Free (no tier)", make_key(free, "options")[1], "options",
                "authentication failed: your options plan (free) does not include WebSocket access; "
                "Expert or Commercial is required"),
        Attempt("revoked key reused", revoked_key, "options", "authentication failed: this API key has been revoked"),
        Attempt("deactivated user", inactive_key, "options", "authentication failed: this account is inactive"),
        Attempt("expired key", expired_key, "options", "authentication failed: this API key has expired"),
        Attempt("real prefix, guessed secret", forged, "options", "authentication failed: invalid API key"),
    ]


async def test_escalation_attempts_are_refused_4401(gateway, escalations):
    problems = []
    for escalation in escalations:
        auth_message = orjson.dumps({"action": "auth", "params": escalation.key}).decode()
        ways = {
            "header": (upgrade_request(f"/v1/ws/{escalation.market}/", bearer(escalation.key)), ()),
            "query": (upgrade_request(f"/v1/ws/{escalation.market}/?api_key={escalation.key}"), ()),
            "auth message": (upgrade_request(f"/v1/ws/{escalation.market}/"), (client_frame(auth_message),)),
        }
        for way, (request, frames) in ways.items():
            reply = await attempt(gateway.port, request, send=list(frames))
            print(f"| escalation | {escalation.name} ({way}) | {reply.summary()[:170]} |")
            expected = (["connected", "auth_failed"], 4401, escalation.message)
            if (reply.statuses, reply.close_code, reply.close_reason) != expected:
                problems.append(f"{escalation.name} via {way}: {reply.summary()}")
            if escalation.key.rsplit("_", 1)[0] in reply.close_reason:
                problems.append(f"{escalation.name} via {way}: the refusal names the key")
    try:
        assert_clean_log(gateway)
    except AssertionError as failure:
        problems.append(f"gateway log: {failure}")
    assert not problems, "\n".join(problems)


def revoke(user: User, api_key: ApiKey) -> None:
    api_key.revoke()


def deactivate(user: User, api_key: ApiKey) -> None:
    user.is_active = False
    user.save()


def downgrade(user: User, api_key: ApiKey) -> None:
    tier = ProductTier.objects.get(user=user, product="options")
    tier.plan = Plan.objects.get(slug="developer")
    tier.save()


LIVE_CHANGES = {
    "revoke": ("authentication failed: this API key has been revoked", revoke),
    "deactivate": ("authentication failed: this account is inactive", deactivate),
    "downgrade": (
        "authentication failed: your options plan (developer) does not include WebSocket access; "
        "Expert or Commercial is required",
        downgrade,
    ),
}


@pytest.fixture
def live_users(transactional_db):
    users = []
    for n in range(len(LIVE_CHANGES) * 3):
        user = make_user(f"live-{n}", plans={"options": "expert", "stocks": "expert"})
        api_key, raw = make_key(user, "options")
        users.append((user, api_key, raw))
    return users


async def test_live_revocation_closes_within_seconds(gateway, live_users):
    """From the change in the database (revoke(), deactivation, downgrade) to the client's close frame."""
    samples: dict[str, list[float]] = {name: [] for name in LIVE_CHANGES}
    users = iter(live_users)
    for _ in range(3):
        for name, (message, change) in LIVE_CHANGES.items():
            user, api_key, raw = next(users)
            connection = await Connection.open(gateway.port, upgrade_request("/v1/ws/options/", bearer(raw)))
            await connection.next_events(2)
            assert connection.reply.statuses == ["connected", "auth_success"]
            started = time.monotonic()
            await database_sync_to_async(change)(user, api_key)
            reply = await connection.until_closed()
            samples[name].append(time.monotonic() - started)
            assert (reply.statuses[-1], reply.close_code, reply.close_reason) == ("auth_failed", 4401, message), (
                name, reply.summary())
    for name, seconds in samples.items():
        print(f"| live change | {name} | close after {', '.join(f'{s * 1000:.0f} ms' for s in seconds)} |")
        record(f"hostile.live_change_to_close.{name}", statistics.median(seconds), "s",
               max=round(max(seconds), 4), samples=len(seconds))
        assert max(seconds) < 5, f"{name}: {seconds}"
    assert_clean_log(gateway)


# --- where keys end up -----------------------------------------------------------------------------------------------


def every_stored_text() -> list[tuple[str, str, str]]:
    """(table, column, value) for every text or binary cell of every table, and the decoded session payloads."""
    from django.contrib.sessions.backends.db import SessionStore

    cells = []
    with db_connection.cursor() as cursor:
        for table in db_connection.introspection.table_names(cursor):
            columns = [column.name for column in db_connection.introspection.get_table_description(cursor, table)]
            quoted = db_connection.ops.quote_name(table)
            cursor.execute(f"SELECT * FROM {quoted}")
            for row in cursor.fetchall():
                for column, value in zip(columns, row, strict=True):
                    if isinstance(value, memoryview):
                        value = bytes(value)
                    if isinstance(value, bytes):
                        value = value.decode("latin-1")
                    if isinstance(value, str):
                        cells.append((table, column, value))
            if table == "django_session":
                cursor.execute(f"SELECT session_data FROM {quoted}")
                for (data,) in cursor.fetchall():
                    cells.append((table, "session_data (decoded)", repr(SessionStore().decode(data))))
    return cells


def every_redis_value(client: redis.Redis) -> list[tuple[bytes, bytes]]:
    values = []
    for name in client.scan_iter(count=1000):
        kind = client.type(name)
        if kind == b"string":
            found = [client.get(name)]
        elif kind == b"hash":
            found = [item for pair in client.hgetall(name).items() for item in pair]
        elif kind == b"list":
            found = client.lrange(name, 0, -1)
        elif kind == b"set":
            found = list(client.smembers(name))
        elif kind == b"zset":
            found = [member for member, _ in client.zrange(name, 0, -1, withscores=True)]
        else:
            found = []
        values += [(name, name)] + [(name, value) for value in found if value is not None]
    return values


NEW_KEY = re.compile(r'<code class="new-api-key">(cm[so]_[A-Za-z0-9]+_[A-Za-z0-9]+)</code>')


async def use_every_way(
    port: int, keys: dict[str, str], users: dict[str, int], client: redis.Redis
) -> tuple[list[str], list[float]]:
    """Present each key by header, query and auth message (and a forged secret of each); return the verdicts, and
    how long each admitted connection's lock took to go after the client closed (the next use waits for it)."""
    verdicts, releases = [], []
    for name, key in keys.items():
        market = name.split("-")[0]
        forged = key.rsplit("_", 1)[0] + "_" + "Z" * 40
        for presented in (key, forged):
            message = orjson.dumps({"action": "auth", "params": presented}).decode()
            for request, frames in (
                (upgrade_request(f"/v1/ws/{market}/", bearer(presented)), []),
                (upgrade_request(f"/v1/ws/{market}/?api_key={presented}"), []),
                (upgrade_request(f"/v1/ws/{market}/"), [client_frame(message)]),
            ):
                reply = await attempt(port, request, send=frames)
                verdicts.append(reply.statuses[-1] if reply.statuses else reply.summary())
                if verdicts[-1] == "auth_success":
                    released = await lock_released(client, users[name], timeout=30)
                    assert released is not None, f"the lock of {name} outlived its connection by 30 s"
                    releases.append(released)
    return verdicts, releases


def test_no_raw_key_or_secret_is_stored_anywhere(gateway_factory, transactional_db, client, clean_redis):
    """Keys made every way (factory, management command, admin), used every way through daphne, some revoked in the
    admin: no table, column, session or Redis value holds a raw key or its secret; only prefixes and hashes."""
    gateway = gateway_factory("key-handling", **GATEWAY_ENV)
    issued = {}
    issued["options"] = make_key(make_user("kh-factory", plans={"options": "expert"}), "options")[1]
    make_user("kh-command", plans={"stocks": "expert"})
    out = io.StringIO()
    call_command("create_api_key", "kh-command", "--product", "stocks", "--label", "bot", stdout=out)
    issued["stocks-command"] = out.getvalue().strip()
    admin = User.objects.create_superuser("kh-root", "root@example.com", "pw")
    client.force_login(admin)
    customer = make_user("kh-admin", plans={"options": "commercial"})
    page = client.post(
        reverse("admin:accounts_apikey_add"),
        {"user": customer.pk, "product": "options", "label": "admin-made", "expires_at_0": "", "expires_at_1": ""},
        follow=True,
    ).content.decode()
    issued["options-admin"] = NEW_KEY.findall(page)[0]
    ISSUED_KEYS.extend(issued.values())
    forged = [key.rsplit("_", 1)[0] + "_" + "Z" * 40 for key in issued.values()]
    ISSUED_KEYS.extend(forged)

    users = {name: ApiKey.objects.get(prefix=key.rsplit("_", 1)[0]).user_id for name, key in issued.items()}
    verdicts, releases = asyncio.run(use_every_way(gateway.port, issued, users, clean_redis))
    print(f"| key handling | lock released after each admitted use | {sorted(releases)} s |")
    assert verdicts.count("auth_success") == 3 * len(issued) and verdicts.count("auth_failed") == 3 * len(issued)

    admin_made = ApiKey.objects.get(label="admin-made")
    client.post(reverse("admin:accounts_apikey_changelist"), {"action": "revoke_keys",
                                                               "_selected_action": [admin_made.pk]}, follow=True)
    assert ApiKey.objects.get(pk=admin_made.pk).is_revoked
    deadline = time.monotonic() + 5  # the gateway writes last_used_at in batches (STREAM_KEY_USAGE_INTERVAL)
    while ApiKey.objects.exclude(last_used_at=None).count() < len(issued) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ApiKey.objects.exclude(last_used_at=None).count() == len(issued)  # the gateway did write to these rows

    secrets = {secret_of(key): name for name, key in issued.items()}
    secrets.update({secret_of(key): "forged" for key in forged})
    cells = every_stored_text()
    stored = [(table, column) for table, column, value in cells for secret in secrets if secret in value]
    assert not stored, f"a key's secret is stored in {stored}"
    prefixes = {key.rsplit("_", 1)[0] for key in issued.values()}
    assert prefixes <= {value for table, column, value in cells if table == "accounts_apikey"}  # the scan sees keys
    in_redis = [name for name, value in every_redis_value(clean_redis) for secret in secrets
                if secret.encode() in value]
    assert not in_redis, f"a key's secret is in Redis under {in_redis}"
    gateway.stop()
    assert_clean_log(gateway)
