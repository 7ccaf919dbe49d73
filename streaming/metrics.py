"""The gateway's Prometheus metrics, and the one-line functions the consumer and the upstream hub call to update them.

Each daphne process keeps its own registry (prometheus-client's default one, with process and GC metrics): every
process listens on its own port, so Prometheus scrapes each process as its own target and sums across them.
Label values are bounded (the two markets, a fixed set of close codes), never user ids or keys.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, disable_created_metrics

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
FRAMES_FORWARDED = Counter(
    "cutemarkets_stream_forwarded_frames", "Market-data frames sent to clients.", ["market"]
)
BYTES_FORWARDED = Counter(
    "cutemarkets_stream_forwarded_bytes", "Bytes of market-data frames sent to clients.", ["market"]
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
        for metric in (LIVE_CONNECTIONS, ADMISSIONS, FRAMES_FORWARDED, BYTES_FORWARDED, UPSTREAM_CONNECTED,
                       UPSTREAM_RECONNECTS, SLOW_CONSUMER_DISCONNECTS):
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


class ForwardedCounter:
    """Frames and bytes handed to clients' sockets in one market, with its label children bound once (per
    connection), so that the per-send cost on the hot path is two increments, not two label lookups."""

    def __init__(self, market: str) -> None:
        label = market_label(market)
        self._frames = FRAMES_FORWARDED.labels(label)
        self._bytes = BYTES_FORWARDED.labels(label)

    def add(self, frames: int, size: int) -> None:
        self._frames.inc(frames)
        self._bytes.inc(size)


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
