"""The gateway's Prometheus metrics, and the one-line functions the consumer and the upstream hub call to update them.

Each daphne process keeps its own registry (prometheus-client's default one, with process and GC metrics): every
process listens on its own port, so Prometheus scrapes each process as its own target and sums across them.
Label values are bounded (the two markets, a fixed set of close codes), never user ids or keys.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Protocol

from prometheus_client import REGISTRY, Counter, Gauge, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, Metric

from streaming.conf import MARKETS
from streaming.runtime.lease import LossReason

OTHER_LABEL = "other"
"""Label value of a market or close code outside the known set (a client can name any path or close code)."""

LABELLED_CLOSE_CODES = frozenset({1000, 1001, 1005, 1006, 1008, 1009, 1011, 1012, 1013, 4401, 4409})
"""Close codes that get their own label value: the contract's codes and the usual RFC 6455 ones."""

disable_created_metrics()  # no *_created series per counter: they double the output and nothing here reads them

LIVE_CONNECTIONS = Gauge(
    "cutemarkets_stream_connections", "Admitted WebSocket connections open now.", ["market"]
)
ADMISSIONS = Counter(
    "cutemarkets_stream_admissions", "WebSocket connections admitted to stream.", ["market"]
)
REJECTIONS = Counter(
    "cutemarkets_stream_rejections",
    "WebSocket connections closed before admission, by close code (4401, 4409, 1011, 1008).",
    ["market", "code"],
)
CLOSES = Counter(
    "cutemarkets_stream_closes", "Admitted WebSocket connections that ended, by close code.", ["market", "code"]
)
UPSTREAM_CONNECTED = Gauge(
    "cutemarkets_upstream_connected", "1 while this process's upstream feed connection is open, else 0.", ["market"]
)
UPSTREAM_RECONNECTS = Counter(
    "cutemarkets_upstream_reconnects",
    "Upstream connections that failed or were lost (each is retried with backoff while clients remain).",
    ["market"],
)
SLOW_CONSUMER_DISCONNECTS = Counter(
    "cutemarkets_stream_slow_consumer_disconnects", "Clients closed for not reading fast enough.", ["market"]
)
LOCK_REFRESH_FAILURES = Counter(
    "cutemarkets_stream_lock_refresh_failures",
    "Connection locks that could not be kept: lost (closed 4409) or Redis unreachable (closed 1011).",
    ["reason"],
)
LOCK_REFRESH_ROUND_TRIPS = Counter(
    "cutemarkets_stream_lock_refresh_round_trips",
    "Round trips of this process's lock keeper (one script call each), each refreshing up to 1,000 connection locks.",
)
LOCKS_REFRESHED = Counter(
    "cutemarkets_stream_locks_refreshed", "Connection locks refreshed by this process's lock keeper."
)
SOCKETS_DROPPED = Counter(
    "cutemarkets_sockets_dropped",
    "Connections the server dropped for what the client did, by reason (its budget, not the market's).",
    ["reason"],
)
INBOUND_PAUSES = Counter(
    "cutemarkets_inbound_pauses",
    "Times the server stopped reading from a client whose messages, queued for the application, passed "
    "STREAM_CLIENT_INBOUND_BYTES.",
)
REFUSALS = Counter(
    "cutemarkets_stream_refusals",
    "What the gateway refused, by reason: the admission rule that closed a connection before it streamed "
    "(invalid_key, already_connected, address_over_budget, ...), or an admitted client's request over a budget "
    "(plan_cap, item_rate, message_rate, feed_capacity).",
    ["market", "reason"],
)
DROP_REASONS = ("handshake_timeout", "ping_flood", "message_too_big", "address_refused_repeatedly")


def _export_initial_series() -> None:
    """Export each series whose labels are known in advance from the start, so rates and alerts see zeros."""
    for market in MARKETS:
        for metric in (LIVE_CONNECTIONS, ADMISSIONS, UPSTREAM_CONNECTED, UPSTREAM_RECONNECTS,
                       SLOW_CONSUMER_DISCONNECTS):
            metric.labels(market)
    for reason in LossReason:
        LOCK_REFRESH_FAILURES.labels(reason.value)
    for drop_reason in DROP_REASONS:
        SOCKETS_DROPPED.labels(drop_reason)


_export_initial_series()


def market_label(market: str) -> str:
    return market if market in MARKETS else OTHER_LABEL


def code_label(code: int | None) -> str:
    return str(code) if code in LABELLED_CLOSE_CODES else OTHER_LABEL


def admitted(market: str) -> None:
    """A connection passed admission (key, plan, lock) and now streams: once per connection."""
    ADMISSIONS.labels(market_label(market)).inc()
    LIVE_CONNECTIONS.labels(market_label(market)).inc()


def rejected(market: str, code: int) -> None:
    """A connection that was never admitted is being closed with *code*."""
    REJECTIONS.labels(market_label(market), code_label(code)).inc()


def refused(market: str, reason: str) -> None:
    """Something was refused for *reason*, one of a fixed set (admission rules and request budgets)."""
    REFUSALS.labels(market_label(market), reason).inc()


def connection_closed(market: str, code: int | None) -> None:
    """An admitted connection ended with *code*: once per connection that ``admitted`` counted."""
    LIVE_CONNECTIONS.labels(market_label(market)).dec()
    CLOSES.labels(market_label(market), code_label(code)).inc()


class SentCounts(Protocol):
    """What a connection has handed to its socket (the gateway's ``Outbox``)."""

    frames_sent: int
    bytes_sent: int


class ForwardedTotals:
    """Frames and bytes handed to clients' sockets, per market (``cutemarkets_stream_forwarded_frames_total``,
    ``..._bytes_total``), summed from the connections' own counts when Prometheus scrapes.

    Each connection counts its sends as two plain integers: two prometheus-client increments per send (each takes
    the metric's lock) were a tenth of the gateway's CPU in the selective fan-out. A closing connection's counts
    join its market's retired totals under the lock the scrape takes (the scrape runs in a worker thread), so a
    total never goes back.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._live: dict[str, set[SentCounts]] = {}
        self._retired: dict[str, list[int]] = {market: [0, 0] for market in MARKETS}

    def track(self, market: str, counts: SentCounts) -> None:
        """Count *counts* in *market* from now on (a connection was admitted)."""
        with self._lock:
            self._live.setdefault(market_label(market), set()).add(counts)

    def retire(self, market: str, counts: SentCounts) -> None:
        """The connection closed: keep what it sent in the totals, stop looking at it (once; later calls do nothing)."""
        label = market_label(market)
        with self._lock:
            live = self._live.get(label)
            if live is None or counts not in live:
                return
            live.remove(counts)
            retired = self._retired.setdefault(label, [0, 0])
            retired[0] += counts.frames_sent
            retired[1] += counts.bytes_sent

    def collect(self) -> Iterator[Metric]:
        frames = CounterMetricFamily(
            "cutemarkets_stream_forwarded_frames", "Market-data frames sent to clients.", labels=["market"]
        )
        sizes = CounterMetricFamily(
            "cutemarkets_stream_forwarded_bytes", "Bytes of market-data frames sent to clients.", labels=["market"]
        )
        with self._lock:
            totals = {label: list(retired) for label, retired in self._retired.items()}
            for label, live in self._live.items():
                total = totals.setdefault(label, [0, 0])
                for counts in live:
                    total[0] += counts.frames_sent
                    total[1] += counts.bytes_sent
        for label, (frame_count, byte_count) in totals.items():
            frames.add_metric([label], frame_count)
            sizes.add_metric([label], byte_count)
        yield frames
        yield sizes


FORWARDED = ForwardedTotals()
REGISTRY.register(FORWARDED)


def upstream_state(market: str, up: bool) -> None:
    """This process's upstream connection for *market* opened (True) or closed (False)."""
    UPSTREAM_CONNECTED.labels(market_label(market)).set(1 if up else 0)


def upstream_reconnect(market: str) -> None:
    """The upstream connection failed or was lost; the hub reconnects after its backoff."""
    UPSTREAM_RECONNECTS.labels(market_label(market)).inc()


def slow_consumer(market: str) -> None:
    """A client is being closed because its outbox overflowed."""
    SLOW_CONSUMER_DISCONNECTS.labels(market_label(market)).inc()


def lock_refresh_failure(reason: str) -> None:
    """A connection lock could not be kept; *reason* is ``LossReason.value`` ("lost" or "unreachable")."""
    LOCK_REFRESH_FAILURES.labels(reason).inc()


def lock_refresh_round_trip(locks: int) -> None:
    """The lock keeper refreshed *locks* connection locks in one round trip."""
    LOCK_REFRESH_ROUND_TRIPS.inc()
    LOCKS_REFRESHED.inc(locks)


def inbound_paused() -> None:
    """The server stopped reading from a client until the application takes its queued messages."""
    INBOUND_PAUSES.inc()


def socket_dropped(reason: str) -> None:
    """A connection was dropped for one of ``DROP_REASONS``."""
    SOCKETS_DROPPED.labels(reason).inc()
