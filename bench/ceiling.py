"""The ceiling: a minimal fan-out server written directly on ``websockets``, the practical limit for Python here.

It opens one upstream connection, subscribes it to the union of its clients' items, and sends each upstream frame to
the clients that want it with ``websockets.broadcast`` (no per-client task, no copy per client): a group of clients
with identical subscriptions that take every event of a frame gets the upstream's bytes unchanged; other groups get
one frame built from the events they take (routing on ``ev`` and ``sym``, each event's bytes cut from the upstream
frame, never re-encoded). It does what the gateway must do for its clients and nothing else: no plans, no budgets,
and it does not cut slow clients: it stops reading the upstream while any client has more than
``BACKLOG_LIMIT_BYTES`` unsent, which bounds its memory and slows the feed instead.

Admission, with ``--redis``: a client with a Bearer key costs what a gateway admission essentially must: one ``GET``
of the key's cached record, one ``SET NX`` of the user's connection lock (a held lock: ``max_connections`` and 4409),
the two statuses, and the lock's ``DEL`` at the close. A record not in Redis yet (a cold key) is written there, as a
gateway writes what its database returned; the ceiling has no database. Without a key (the load scenarios' clients)
it answers ``connected`` and ``auth_success`` at once.

``python -m bench.ceiling --port P --upstream ws://127.0.0.1:U/options --api-key K [--redis redis://...]``
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import secrets
import signal

import orjson
import redis.asyncio
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, broadcast, serve
from websockets.exceptions import ConnectionClosed

CONNECTED_FRAME = b'[{"ev":"status","status":"connected","message":"Connected Successfully"}]'
AUTH_SUCCESS_FRAME = b'[{"ev":"status","status":"auth_success","message":"authenticated"}]'
MAX_CONNECTIONS_FRAME = b'[{"ev":"status","status":"max_connections","message":"already connected"}]'
REDIS_PREFIX = "cm:bench-ceiling:"
RECORD_TTL_SECONDS = 300  # the gateway's key cache
LOCK_TTL_MS = 30_000  # the gateway's STREAM_LOCK_TTL
REDIS_CONNECTIONS = 64  # the gateway's pool
BACKLOG_LIMIT_BYTES = 4 * 1024 * 1024


class Group:
    __slots__ = ("items", "wildcards", "symbols", "members", "batch")

    def __init__(self, items: frozenset[str]) -> None:
        self.items = items
        self.wildcards = {item.split(".", 1)[0] for item in items if item.endswith(".*")}
        self.symbols = {tuple(item.split(".", 1)) for item in items if not item.endswith(".*")}
        self.members: set[ServerConnection] = set()
        self.batch: list[bytes] = []


class Ceiling:
    def __init__(self, upstream_url: str, api_key: str, registry: redis.asyncio.Redis | None = None) -> None:
        self.upstream_url = upstream_url
        self.api_key = api_key
        self.registry = registry
        self.groups: dict[frozenset[str], Group] = {}
        self.group_of: dict[ServerConnection, Group] = {}
        self.wildcard_groups: dict[str, set[Group]] = {}
        self.symbol_groups: dict[tuple[str, ...], set[Group]] = {}
        self.upstream: ClientConnection | None = None
        self.upstream_items: set[str] = set()

    async def run_upstream(self) -> None:
        async with connect(self.upstream_url, compression=None, max_size=None) as upstream:
            await upstream.recv()
            await upstream.send(orjson.dumps({"action": "auth", "params": self.api_key}).decode())
            await upstream.recv()
            self.upstream = upstream
            while True:
                frame = await upstream.recv(decode=False)
                self.dispatch(frame)
                await self.wait_for_backlog()

    async def wait_for_backlog(self) -> None:
        while any(
            member.transport.get_write_buffer_size() > BACKLOG_LIMIT_BYTES
            for group in self.groups.values() for member in group.members
        ):
            await asyncio.sleep(0.001)

    def dispatch(self, frame: bytes) -> None:
        if frame.startswith(b'[{"ev":"status"'):
            return
        events = orjson.loads(frame)
        if len(self.groups) == 1:
            (group,) = self.groups.values()
            if all(event["ev"] in group.wildcards for event in events):
                broadcast(group.members, frame, text=True)
                return
        bodies = frame[2:-2].split(b"},{")  # generated events are flat objects: cut, never re-encode
        touched: list[Group] = []
        for event, body in zip(events, bodies, strict=False):
            ev = event["ev"]
            for group in self.wildcard_groups.get(ev, ()):
                if not group.batch:
                    touched.append(group)
                group.batch.append(body)
            for group in self.symbol_groups.get((ev, event.get("sym")), ()):
                if not group.batch:
                    touched.append(group)
                group.batch.append(body)
        for group in touched:
            broadcast(group.members, b"[{" + b"},{".join(group.batch) + b"}]", text=True)
            group.batch = []

    async def admit(self, key: str) -> str | None:
        """The user's lock key, taken; None if another connection holds it."""
        assert self.registry is not None
        record_key = f"{REDIS_PREFIX}key:{hashlib.sha256(key.encode()).hexdigest()}"
        record = await self.registry.get(record_key)
        if record is None:
            record = orjson.dumps({"user": record_key[-16:]})
            await self.registry.set(record_key, record, ex=RECORD_TTL_SECONDS)
        lock = f"{REDIS_PREFIX}lock:{orjson.loads(record)['user']}"
        taken = await self.registry.set(lock, secrets.token_hex(8), nx=True, px=LOCK_TTL_MS)
        return lock if taken else None

    async def converse(self, connection: ServerConnection) -> None:
        await connection.send(CONNECTED_FRAME, text=True)
        authorization = connection.request.headers.get("Authorization", "") if connection.request else ""
        lock = None
        if self.registry is not None and authorization.startswith("Bearer "):
            lock = await self.admit(authorization[len("Bearer "):])
            if lock is None:
                await connection.send(MAX_CONNECTIONS_FRAME, text=True)
                await connection.close(4409, "already connected")
                return
        await connection.send(AUTH_SUCCESS_FRAME, text=True)
        try:
            async for message in connection:
                request = orjson.loads(message)
                if request.get("action") != "subscribe":
                    continue
                items = [item.strip() for item in str(request.get("params", "")).split(",") if item.strip()]
                self.join(connection, frozenset(items) | (self.group_of[connection].items
                                                          if connection in self.group_of else frozenset()))
                new = set(items) - self.upstream_items
                if new and self.upstream is not None:
                    self.upstream_items |= new
                    await self.upstream.send(orjson.dumps({"action": "subscribe", "params": ",".join(new)}).decode())
                acks = [{"ev": "status", "status": "success", "message": f"subscribed to: {item}"} for item in items]
                await connection.send(orjson.dumps(acks), text=True)
        except ConnectionClosed:
            pass
        finally:
            self.leave(connection)
            if lock is not None:
                assert self.registry is not None
                await self.registry.delete(lock)

    def join(self, connection: ServerConnection, items: frozenset[str]) -> None:
        self.leave(connection)
        group = self.groups.get(items)
        if group is None:
            group = self.groups[items] = Group(items)
            for ev in group.wildcards:
                self.wildcard_groups.setdefault(ev, set()).add(group)
            for key in group.symbols:
                if key[0] not in group.wildcards:
                    self.symbol_groups.setdefault(key, set()).add(group)
        group.members.add(connection)
        self.group_of[connection] = group

    def leave(self, connection: ServerConnection) -> None:
        group = self.group_of.pop(connection, None)
        if group is None:
            return
        group.members.discard(connection)
        if not group.members:
            del self.groups[group.items]
            for ev in group.wildcards:
                self.wildcard_groups[ev].discard(group)
            for key in group.symbols:
                self.symbol_groups.get(key, set()).discard(group)


def registry_client(url: str) -> redis.asyncio.Redis:
    """Like the gateway's: a bounded pool that waits for a free connection (a plain pool refuses the 101st
    concurrent command, and the closes of a storm's connections come all at once)."""
    pool = redis.asyncio.BlockingConnectionPool.from_url(url, max_connections=REDIS_CONNECTIONS)
    return redis.asyncio.Redis(connection_pool=pool)


async def main_async(options: argparse.Namespace) -> None:
    registry = registry_client(options.redis) if options.redis else None
    ceiling = Ceiling(options.upstream, options.api_key, registry)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopping.set)
    async with serve(ceiling.converse, "127.0.0.1", options.port, compression=None, max_size=None,
                     ping_interval=None):
        upstream = asyncio.ensure_future(ceiling.run_upstream())
        await asyncio.wait([upstream, asyncio.ensure_future(stopping.wait())], return_when=asyncio.FIRST_COMPLETED)
        upstream.cancel()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ceiling")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--api-key", required=True)
    parser.add_argument("--redis", default="", help="Admit Bearer keys through this Redis (see the module docstring).")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
