"""The neighbours scenario's attackers: the abuse of one customer (issue: tenant isolation), from 127.0.0.2.

Each attack runs in its own client process from ``go`` until the end of the window the harness gives, then reports
what the attacker got (statuses and close codes counted, normalised so that counts add up), how many connections it
opened and the most it held at once (for the gateway's memory growth per attacking connection). An attack whose
connection is closed opens the next one, as a persistent abuser would; the ones that hold sockets (keyless,
drip-fed handshakes) replace only sockets the gateway dropped after holding them.

The attacks are the ones ``tests/e2e/test_isolation.py`` asserts outcomes of (that file is not imported: tests are
no dependency of the bench), at the issue's sizes and rates.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import re
import string
import struct
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

ATTACKER_ADDRESS = "127.0.0.2"
ITEMS_PER_MESSAGE = 5_000  # 5,000 stock items are ~40 KB, under the 64 KiB message limit
OPEN_TIMEOUT_SECONDS = 10
NUMBER = re.compile(r"\d+(?:\.\d+)?")


@dataclass
class AttackJob:
    url: str
    kind: str
    keys: list[str]
    address: str = ATTACKER_ADDRESS


class Tally:
    """What the attacker got, and its connections: opened in all, held now, held at most."""

    def __init__(self) -> None:
        self.outcomes: Counter[str] = Counter()
        self.opened = 0
        self.held = 0
        self.peak = 0

    def note(self, outcome: str, exact: str = "") -> None:
        """Count *outcome* with its figures (retry times, limits) as N; *exact* (a close code) is kept as it is."""
        self.outcomes[exact + NUMBER.sub("N", outcome)[:90]] += 1

    def open(self) -> None:
        self.opened += 1
        self.held += 1
        self.peak = max(self.peak, self.held)

    def close(self) -> None:
        self.held -= 1

    def statuses(self, frame: bytes) -> None:
        events = orjson.loads(frame)
        for event in events if isinstance(events, list) else [events]:
            if event.get("ev") == "status":
                message = event.get("message", "")
                if message.startswith(("subscribed to: ", "unsubscribed to: ")):
                    message = message.split(":", 1)[0]
                self.note(f"{event.get('status')}: {message}")

    def closed(self, websocket: ClientConnection) -> None:
        if websocket.protocol.close_rcvd_then_sent is False:
            self.note("closed by the attacker")
        else:
            self.note(websocket.close_reason or "", exact=f"close {websocket.close_code} ")


def made_up_tickers() -> Iterator[str]:
    """Distinct well-formed tickers no market lists (``XAAAAA``, ``XAAAAB``, ...): 11.8 million, more than any
    attack window asks for."""
    for letters in itertools.product(string.ascii_uppercase, repeat=5):
        yield "X" + "".join(letters)


def items(tickers: Iterator[str], count: int = ITEMS_PER_MESSAGE) -> str:
    return ",".join(f"T.{ticker}" for ticker in itertools.islice(tickers, count))


async def open_keyed(job: AttackJob, key: str, tally: Tally) -> ClientConnection:
    websocket = await connect(job.url, additional_headers={"Authorization": f"Bearer {key}"}, compression=None,
                              max_size=None, ping_interval=None, open_timeout=OPEN_TIMEOUT_SECONDS,
                              local_addr=(job.address, 0))
    tally.open()
    return websocket


async def read_all(websocket: ClientConnection, tally: Tally) -> None:
    """Count every status until the gateway closes the connection."""
    try:
        async for frame in websocket:
            tally.statuses(frame if isinstance(frame, bytes) else frame.encode())
    except ConnectionClosed:
        pass
    tally.closed(websocket)


async def sessions(job: AttackJob, end: float, tally: Tally,
                   behave: Callable[[ClientConnection], Coroutine[Any, Any, None]]) -> None:
    """Connect, ``behave``, and when the gateway closes the connection (or ``behave`` returns) connect again, with
    the attacker's keys in turn (so that no reconnect waits on the previous connection's lock)."""
    for key in itertools.cycle(job.keys):
        if time.time() >= end:
            return
        try:
            websocket = await open_keyed(job, key, tally)
        except (OSError, TimeoutError, InvalidHandshake) as error:
            tally.note(f"handshake failed: {type(error).__name__}")
            await asyncio.sleep(0.1)
            continue
        reader = asyncio.ensure_future(read_all(websocket, tally))
        try:
            await asyncio.wait_for(behave(websocket), max(0.0, end - time.time()))
        except (ConnectionClosed, TimeoutError):
            pass
        await websocket.close()
        await reader
        tally.close()


async def many_items(job: AttackJob, end: float, tally: Tally) -> None:
    """100,000 made-up items in 20 messages of 5,000, then leave (the leaving once sent the upstream one 800 KB
    unsubscribe and cut every client of the market)."""
    tickers = made_up_tickers()

    async def behave(websocket: ClientConnection) -> None:
        for _ in range(20):
            await websocket.send(f'{{"action":"subscribe","params":"{items(tickers)}"}}')
        await asyncio.sleep(1.0)  # the acks and refusals come back meanwhile

    await sessions(job, end, tally, behave)


async def churn(job: AttackJob, end: float, tally: Tally) -> None:
    """Subscribe and unsubscribe 5,000 fresh items per message, about 9 messages a second."""
    tickers = made_up_tickers()

    async def behave(websocket: ClientConnection) -> None:
        while True:
            params = items(tickers)
            for action in ("subscribe", "unsubscribe"):
                await websocket.send(f'{{"action":"{action}","params":"{params}"}}')
                await asyncio.sleep(1 / 9)

    await sessions(job, end, tally, behave)


async def hold_items(job: AttackJob, end: float, tally: Tally) -> None:
    """Ask for 200,000 items (the plan's cap refuses beyond its max_subscriptions) and stay."""
    tickers = made_up_tickers()

    async def behave(websocket: ClientConnection) -> None:
        for _ in range(40):
            await websocket.send(f'{{"action":"subscribe","params":"{items(tickers)}"}}')
        await websocket.wait_closed()

    await sessions(job, end, tally, behave)


async def ping_and_read(job: AttackJob, end: float, tally: Tally) -> None:
    """Pings as fast as their pongs come back (a client once had 367,000 answered in 20 s)."""

    async def behave(websocket: ClientConnection) -> None:
        while True:
            await (await websocket.ping())
            tally.note("pong")

    await sessions(job, end, tally, behave)


def handshake_request(job: AttackJob, key: str | None) -> bytes:
    parts = urlsplit(job.url)
    lines = [f"GET {parts.path} HTTP/1.1", f"Host: {parts.netloc}", "Upgrade: websocket", "Connection: Upgrade",
             "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version: 13"]
    if key:
        lines.append(f"Authorization: Bearer {key}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def server_frames(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(opcode, payload) of the unmasked frames a server sent, as far as *data* holds whole frames."""
    position = 0
    while position + 2 <= len(data):
        opcode, length = data[position] & 0x0F, data[position + 1] & 0x7F
        header = 2
        if length == 126:
            if position + 4 > len(data):
                return
            length, header = struct.unpack_from("!H", data, position + 2)[0], 4
        elif length == 127:
            if position + 10 > len(data):
                return
            length, header = struct.unpack_from("!Q", data, position + 2)[0], 10
        if position + header + length > len(data):
            return
        yield opcode, data[position + header:position + header + length]
        position += header + length


PING_FRAME = bytes([0x89, 0x80 | 4]) + b"\x00\x00\x00\x00" + b"ping"  # masked (zero mask), 4-byte payload


async def ping_without_reading(job: AttackJob, end: float, tally: Tally) -> None:
    """Pings written as fast as the socket takes them, the pongs never read (they pile up in the gateway's send
    buffer and the kernel's). At the end, what the gateway sent is read once: pongs, statuses, the close."""
    for key in itertools.cycle(job.keys):
        if time.time() >= end:
            return
        reader, writer = await asyncio.open_connection(*urlsplit(job.url).netloc.split(":"), limit=1024,
                                                       local_addr=(job.address, 0))
        tally.open()
        writer.write(handshake_request(job, key))
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 101"):
            tally.note(f"HTTP {head[9:12].decode()}")
        sent = 0
        try:
            while time.time() < end:
                writer.write(PING_FRAME * 100)
                await asyncio.wait_for(writer.drain(), max(0.01, end - time.time()))
                sent += 100
        except (ConnectionError, TimeoutError):
            pass
        tally.outcomes["pings written"] += sent
        received = b""
        try:
            while chunk := await asyncio.wait_for(reader.read(65536), 0.5):
                received += chunk
        except (ConnectionError, TimeoutError):
            pass
        for opcode, payload in server_frames(received):
            if opcode == 0xA:
                tally.note("pong")
            elif opcode == 0x1:
                tally.statuses(payload)
            elif opcode == 0x8:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
                tally.note(payload[2:].decode(errors="replace"), exact=f"close {code} ")
        writer.close()
        tally.close()


def random_key(rng: random.Random) -> str:
    """A well-formed stocks key that was never issued."""
    alphabet = string.ascii_letters + string.digits
    return f"cms_{''.join(rng.choices(alphabet, k=12))}_{''.join(rng.choices(alphabet, k=40))}"


async def key_guessing(job: AttackJob, end: float, tally: Tally) -> None:
    """171 handshakes a second with random well-formed keys (once: everyone's admission ×19 slower)."""
    rng = random.Random(171)
    tasks = []

    async def guess() -> None:
        try:
            websocket = await open_keyed(job, random_key(rng), tally)
        except (OSError, TimeoutError, InvalidHandshake) as error:
            tally.note(f"handshake failed: {type(error).__name__}")
            return
        await read_all(websocket, tally)
        tally.close()

    started = time.time()
    for index in itertools.count():
        due = started + index / 171
        if due >= end:
            break
        await asyncio.sleep(max(0.0, due - time.time()))
        tasks.append(asyncio.ensure_future(guess()))
    await asyncio.wait(tasks, timeout=OPEN_TIMEOUT_SECONDS)


async def keyless_sockets(job: AttackJob, end: float, tally: Tally) -> None:
    """3,000 sockets without a key from one address, opened 100 at a time and held (once: others' admission ×56)."""
    semaphore = asyncio.Semaphore(100)

    async def hold() -> None:
        async with semaphore:
            try:
                websocket = await connect(job.url, compression=None, ping_interval=None,
                                          open_timeout=OPEN_TIMEOUT_SECONDS, local_addr=(job.address, 0))
            except (OSError, TimeoutError, InvalidHandshake) as error:
                tally.note(f"handshake failed: {type(error).__name__}")
                return
            tally.open()
        try:
            await asyncio.wait_for(read_all(websocket, tally), max(0.01, end - time.time()))
        except TimeoutError:
            tally.note("still held at the end")
            await websocket.close()
        tally.close()

    await asyncio.gather(*(hold() for _ in range(3_000)))


async def slow_handshakes(job: AttackJob, end: float, tally: Tally) -> None:
    """200 connections sending their upgrade request one byte every 2 s; a dropped one is replaced."""
    request = handshake_request(job, None)

    async def drip() -> None:
        while time.time() < end:
            reader, writer = await asyncio.open_connection(*urlsplit(job.url).netloc.split(":"),
                                                           local_addr=(job.address, 0))
            tally.open()
            opened = time.time()
            try:
                for byte in itertools.cycle(request):
                    writer.write(bytes([byte]))
                    await writer.drain()
                    try:
                        if await asyncio.wait_for(reader.read(1), min(2.0, max(0.01, end - time.time()))) == b"":
                            tally.note(f"dropped after {round(time.time() - opened)} s")
                            break
                    except TimeoutError:
                        if time.time() >= end:
                            tally.note("still open at the end")
                            break
            except ConnectionError:
                tally.note(f"reset after {round(time.time() - opened)} s")
            writer.close()
            tally.close()

    await asyncio.gather(*(drip() for _ in range(200)))


ATTACKS: dict[str, Callable[[AttackJob, float, Tally], Coroutine[Any, Any, None]]] = {
    "many_items": many_items,
    "churn": churn,
    "hold_items": hold_items,
    "ping_no_read": ping_without_reading,
    "ping_read": ping_and_read,
    "key_guessing": key_guessing,
    "keyless_sockets": keyless_sockets,
    "slow_handshakes": slow_handshakes,
}


async def run_attack(job: AttackJob, pipe) -> None:
    pipe.send(("ready", 0))
    loop = asyncio.get_running_loop()
    command, start, end = await loop.run_in_executor(None, pipe.recv)
    assert command == "go"
    await asyncio.sleep(max(0.0, start - time.time()))
    tally = Tally()
    await ATTACKS[job.kind](job, end, tally)
    pipe.send(("result", {"outcomes": dict(tally.outcomes), "connections_opened": tally.opened,
                          "most_connections_held": tally.peak}))
