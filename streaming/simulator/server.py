"""``FeedSimulator``: the WebSocket server that speaks the upstream protocol, paces the feed and injects faults.

It serves ``/stocks`` and ``/options``, authenticates, manages subscriptions, publishes each cluster's batches to
the connections that match them, and exposes what tests need: manual emission, recording, introspection, an
awaitable ``wait_for`` and fault injection (dropped connections, stalls, refused connects, malformed frames).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Callable, Mapping
from http import HTTPStatus
from types import TracebackType
from typing import Any

import orjson
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from .fanout import Batch
from .feed import ClusterFeed, cluster_feed
from .market import Event
from .pacing import RateBudget
from .protocol import (
    ACTION_AUTH,
    ACTION_SUBSCRIBE,
    ACTION_UNSUBSCRIBE,
    AUTH_FAILED_FRAME,
    AUTH_SUCCESS_FRAME,
    AUTH_TIMEOUT_FRAME,
    CLOSE_GOING_AWAY,
    CLOSE_POLICY_VIOLATION,
    CLUSTERS,
    CONNECTED_FRAME,
    INVALID_JSON_FRAME,
    MAX_CONNECTIONS_FRAME,
    MESSAGE_UNKNOWN_ACTION,
    NOT_AUTHORIZED_FRAME,
    STATUS_ERROR,
    status_frame,
)
from .session import Session

TICK_SECONDS = 0.01
DEFAULT_AUTH_TIMEOUT_SECONDS = 10.0
CLOSE_TIMEOUT_SECONDS = 2.0
# The pacer holds a cluster's generation while any of its connections has this much queued and unsent.
BACKLOG_HIGH_WATER_BYTES = 4_000_000
MAX_CLIENT_MESSAGE_BYTES = 64 * 1024
"""Like the feed, a message over this closes the connection (1009): the gateway must send large changes in parts."""

REASON_AUTH_FAILED = "authentication failed"
REASON_AUTH_TIMEOUT = "authentication timeout"
REASON_MAX_CONNECTIONS = "max connections"
REASON_SHUTDOWN = "server shutting down"


def _wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


def _cluster_of(path: str) -> str | None:
    cluster = path.partition("?")[0].removeprefix("/")
    return cluster if cluster in CLUSTERS else None


class FeedSimulator:
    """A Polygon.io/Massive-compatible market-data WebSocket server on loopback (or any host)."""

    def __init__(
        self,
        api_key: str,
        rate: float | Mapping[str, float] = 0,
        seed: int | str | None = None,
        max_connections: int | None = None,
        auth_timeout: float = DEFAULT_AUTH_TIMEOUT_SECONDS,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        rates = dict(rate) if isinstance(rate, Mapping) else dict.fromkeys(CLUSTERS, rate)
        if set(rates) != set(CLUSTERS):
            raise ValueError(f"rate must give every cluster of {CLUSTERS}, got {sorted(rates)}")
        self.api_key = api_key
        self.rates: dict[str, float] = rates
        self.max_connections = max_connections
        self.auth_timeout = auth_timeout
        self.host = host
        self.port = port
        self._feeds: dict[str, ClusterFeed] = {cluster: cluster_feed(cluster, seed) for cluster in CLUSTERS}
        self._sessions: dict[str, set[Session]] = {cluster: set() for cluster in CLUSTERS}
        self._opened: Counter[str] = Counter()
        self._budgets = {cluster: RateBudget(rates[cluster], time.monotonic()) for cluster in CLUSTERS}
        self._server: Server | None = None
        self._retired_servers: list[Server] = []
        self._clock: asyncio.Task[None] | None = None
        self._resumed = asyncio.Event()
        self._resumed.set()
        self._changed = asyncio.Event()

    async def start(self) -> None:
        """Listen (on ``port``, or a free port when it is 0, then available as ``port``) and start the clock."""
        server = await self._listen()
        self.port = server.sockets[0].getsockname()[1]
        self._restart_budgets()
        self._clock = asyncio.create_task(self._run_clock())

    async def stop(self) -> None:
        """Stop the clock, close every connection with 1001 (going away) and stop listening."""
        if self._clock is not None:
            self._clock.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._clock
            self._clock = None
        self._stop_listening()
        sessions = [session for sessions in self._sessions.values() for session in sessions]
        await asyncio.gather(
            *(session.connection.close(CLOSE_GOING_AWAY, REASON_SHUTDOWN) for session in sessions),
            return_exceptions=True,
        )
        for server in self._retired_servers:
            server.close()
            await server.wait_closed()
        self._retired_servers.clear()

    async def __aenter__(self) -> FeedSimulator:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        await self.stop()

    def url(self, cluster: str) -> str:
        """``ws://HOST:PORT/{cluster}``."""
        return f"ws://{self.host}:{self.port}/{cluster}"

    async def emit(self, cluster: str, count: int) -> None:
        """Generate *count* events of *cluster* now (plus any aggregates due) and send them to subscribers."""
        self._publish(cluster, self._feeds[cluster].generate(count, _wall_clock_ms()))

    async def send_events(self, cluster: str, events: list[Event]) -> None:
        """Send *events* as given to the subscribers they match (by ``ev`` and ``sym``, or ``T`` for LULD)."""
        self._publish(cluster, self._feeds[cluster].encode(events))

    async def flush_aggregates(self, cluster: str) -> None:
        """Emit ``A`` and ``AM`` for the open second and minute now, without waiting for them to end."""
        self._publish(cluster, self._feeds[cluster].flush_aggregates())

    def start_recording(self, cluster: str) -> None:
        """Record every event published to *cluster* from now on, whoever is subscribed."""
        self._feeds[cluster].start_recording()

    def stop_recording(self, cluster: str) -> None:
        """Stop recording *cluster*; ``recorded`` keeps returning what was recorded."""
        self._feeds[cluster].stop_recording()

    def recorded(self, cluster: str) -> list[dict[str, Any]]:
        """The events published to *cluster* since ``start_recording``, as dicts, in order."""
        return self._feeds[cluster].recorded()

    def connections_opened(self, cluster: str) -> int:
        """WebSocket connections ever accepted on *cluster* (after the handshake)."""
        return self._opened[cluster]

    def open_connections(self, cluster: str) -> int:
        return len(self._sessions[cluster])

    def authenticated_connections(self, cluster: str) -> int:
        return sum(1 for session in self._sessions[cluster] if session.authenticated)

    def subscriptions(self, cluster: str) -> set[str]:
        """The union of the subscription items (``"T.AAPL"``, ``"Q.*"``...) of *cluster*'s open connections."""
        return {item for session in self._sessions[cluster] for item in session.subscription.items}

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        """Return once *predicate()* is true, re-checking on every state change; TimeoutError after *timeout*."""
        async with asyncio.timeout(timeout):
            while True:
                changed = self._changed
                if predicate():
                    return
                await changed.wait()

    async def drop_connections(self, cluster: str | None = None, clean: bool = False) -> None:
        """Close every open connection (of *cluster*, or of all clusters) and wait until they are gone.

        ``clean=False`` aborts the TCP connection without a close frame; ``clean=True`` closes with 1001.
        """
        clusters = CLUSTERS if cluster is None else (cluster,)
        sessions = [session for name in clusters for session in self._sessions[name]]
        if clean:
            await asyncio.gather(
                *(session.connection.close(CLOSE_GOING_AWAY) for session in sessions), return_exceptions=True
            )
        else:
            for session in sessions:
                session.connection.transport.abort()
        await self.wait_for(lambda: not any(session in self._sessions[session.cluster] for session in sessions))

    def pause(self) -> None:
        """Stall: generate and send nothing (not even status replies) while keeping every socket open."""
        self._resumed.clear()
        self._notify()

    def resume(self) -> None:
        """End a stall: queued frames go out, and the feed resumes at its rate without replaying the pause."""
        self._restart_budgets()
        self._resumed.set()
        self._notify()

    @property
    def paused(self) -> bool:
        return not self._resumed.is_set()

    async def refuse_connections(self) -> None:
        """Stop listening, so new connects fail with ECONNREFUSED; open connections are kept."""
        self._stop_listening()
        self._notify()

    async def accept_connections(self) -> None:
        """Listen again, on the same port."""
        if self._server is None:
            await self._listen()
            self._notify()

    async def send_raw(self, cluster: str, text: str) -> None:
        """Send *text*, as is, as a text frame to every authenticated connection of *cluster*."""
        frame = text.encode()
        for session in self._sessions[cluster]:
            if session.authenticated:
                session.send(frame)

    async def _listen(self) -> Server:
        self._server = await serve(
            self._converse,
            self.host,
            self.port,
            process_request=self._route,
            compression=None,
            max_size=MAX_CLIENT_MESSAGE_BYTES,
            close_timeout=CLOSE_TIMEOUT_SECONDS,
        )
        return self._server

    def _stop_listening(self) -> None:
        if self._server is not None:
            # The asyncio server stops accepting synchronously; websockets' own close finishes in the background.
            self._server.server.close()
            self._server.close(close_connections=False)
            self._retired_servers.append(self._server)
            self._server = None

    def _route(self, connection: ServerConnection, request: Request) -> Response | None:
        if _cluster_of(request.path) is None:
            return connection.respond(HTTPStatus.NOT_FOUND, "Not Found\n")
        return None

    def _notify(self) -> None:
        """Wake every ``wait_for`` so it re-checks its predicate."""
        self._changed.set()
        self._changed = asyncio.Event()

    async def _converse(self, connection: ServerConnection) -> None:
        assert connection.request is not None
        cluster = _cluster_of(connection.request.path)
        assert cluster is not None, "_route refuses every other path"
        session = Session(connection, cluster, self._resumed)
        self._sessions[cluster].add(session)
        self._opened[cluster] += 1
        self._notify()
        writer = asyncio.create_task(session.write_pending())
        session.send(CONNECTED_FRAME)
        try:
            await self._read_requests(session)
            # A close is queued: the writer sends what precedes it, then closes (unless the peer or a drop does).
            await connection.wait_closed()
        except ConnectionClosed:
            pass
        finally:
            writer.cancel()
            self._sessions[cluster].discard(session)
            self._notify()

    async def _read_requests(self, session: Session) -> None:
        """Answer the client's requests until it is closed (returns once a close has been queued)."""
        deadline = asyncio.get_running_loop().time() + self.auth_timeout
        while True:
            try:
                async with asyncio.timeout_at(None if session.authenticated else deadline):
                    message = await session.connection.recv()
            except TimeoutError:
                session.send(AUTH_TIMEOUT_FRAME)
                session.close_after_pending(CLOSE_POLICY_VIOLATION, REASON_AUTH_TIMEOUT)
                return
            if not self._answer(session, message):
                return

    def _answer(self, session: Session, message: str | bytes) -> bool:
        """Handle one client request; False when the connection is being closed."""
        try:
            request = orjson.loads(message)
        except orjson.JSONDecodeError:
            request = None
        if not isinstance(request, dict):
            session.send(INVALID_JSON_FRAME)
            return True
        action = request.get("action")
        params = request.get("params")
        if action == ACTION_AUTH:
            return self._authenticate(session, params)
        if action in (ACTION_SUBSCRIBE, ACTION_UNSUBSCRIBE):
            if not session.authenticated:
                session.send(NOT_AUTHORIZED_FRAME)
            elif action == ACTION_SUBSCRIBE:
                session.subscribe(params if isinstance(params, str) else "")
            else:
                session.unsubscribe(params if isinstance(params, str) else "")
            self._notify()
            return True
        session.send(status_frame(STATUS_ERROR, MESSAGE_UNKNOWN_ACTION.format(action=action)))
        return True

    def _authenticate(self, session: Session, key: object) -> bool:
        if key != self.api_key:
            session.send(AUTH_FAILED_FRAME)
            session.close_after_pending(CLOSE_POLICY_VIOLATION, REASON_AUTH_FAILED)
            return False
        if (
            not session.authenticated
            and self.max_connections is not None
            and self.authenticated_connections(session.cluster) >= self.max_connections
        ):
            session.send(MAX_CONNECTIONS_FRAME)
            session.close_after_pending(CLOSE_POLICY_VIOLATION, REASON_MAX_CONNECTIONS)
            return False
        session.authenticated = True
        session.send(AUTH_SUCCESS_FRAME)
        self._notify()
        return True

    async def _run_clock(self) -> None:
        """Every tick: emit due aggregates and the events the rate makes due, unless paused or held back."""
        while True:
            behind = False
            if not self.paused:
                now_ms = _wall_clock_ms()
                for cluster, feed in self._feeds.items():
                    budget = self._budgets[cluster]
                    if self._backlogged(cluster):
                        budget.restart(time.monotonic())
                        count = 0
                    else:
                        count = budget.take(time.monotonic())
                        behind = behind or budget.behind
                    self._publish(cluster, feed.generate(count, now_ms))
            await asyncio.sleep(0 if behind else TICK_SECONDS)

    def _restart_budgets(self) -> None:
        now = time.monotonic()
        for budget in self._budgets.values():
            budget.restart(now)

    def _backlogged(self, cluster: str) -> bool:
        return any(session.backlog_bytes > BACKLOG_HIGH_WATER_BYTES for session in self._sessions[cluster])

    def _publish(self, cluster: str, batch: Batch) -> None:
        """Queue *batch* to each authenticated subscriber, computing frames once per distinct subscription."""
        if not batch:
            return
        frames_by_items: dict[frozenset[str], list[bytes]] = {}
        for session in self._sessions[cluster]:
            subscription = session.subscription
            if not session.authenticated or not subscription.items:
                continue
            frames = frames_by_items.get(subscription.items)
            if frames is None:
                frames = frames_by_items[subscription.items] = batch.frames_for(subscription)
            for frame in frames:
                session.send(frame)
        self._notify()
