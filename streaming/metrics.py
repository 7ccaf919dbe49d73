"""The gateway's Prometheus metrics, and the one-line functions the consumer and the upstream hub call to update them.

Each daphne process keeps its own registry (prometheus-client's default one, with process and GC metrics): every
process listens on its own port, so Prometheus scrapes each process as its own target and sums across them.
Label values are bounded (the two markets, a fixed set of close codes), never user ids or keys.
"""

from __future__ import annotations

import itertools
import operator
import threading
from collections.abc import Iterator
from typing import Protocol

from prometheus_client import REGISTRY, Counter, Gauge, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

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


SEND_DELAY_BOUNDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
"""Upper bounds (s, inclusive) of ``cutemarkets_stream_send_delay_seconds``' buckets; a send's delay counts in
``send_delay_counts[bisect_left(SEND_DELAY_BOUNDS, delay)]``, the last slot being ``+Inf``."""


class SentCounts(Protocol):
    """What a connection has handed to its socket (the gateway's ``Outbox``): frames, bytes, and per bucket of
    ``SEND_DELAY_BOUNDS`` the writes carrying upstream data, with their delays' sum."""

    frames_sent: int
    bytes_sent: int
    send_delay_counts: list[int]
    send_delay_seconds: float


class _Sums:
    """One market's sums of ``SentCounts``."""

    __slots__ = ("frames", "bytes", "delay_counts", "delay_seconds")

    def __init__(self) -> None:
        self.frames = 0
        self.bytes = 0
        self.delay_counts = [0] * (len(SEND_DELAY_BOUNDS) + 1)
        self.delay_seconds = 0.0

    def copy(self) -> _Sums:
        copied = _Sums()
        copied.add(self.frames, self.bytes, self.delay_counts, self.delay_seconds)
        return copied

    def add(self, frames: int, sent_bytes: int, delay_counts: list[int], delay_seconds: float) -> None:
        self.frames += frames
        self.bytes += sent_bytes
        self.delay_counts = list(map(operator.add, self.delay_counts, delay_counts))
        self.delay_seconds += delay_seconds

    def add_counts(self, counts: SentCounts) -> None:
        # The connection's event loop keeps counting while a scrape reads: copy its buckets in one step (a list
        # copy holds the GIL throughout), so the buckets read are one moment's, not a mix of two.
        self.add(counts.frames_sent, counts.bytes_sent, counts.send_delay_counts[:], counts.send_delay_seconds)

    def delay_buckets(self) -> list[tuple[str, float]]:
        cumulative = list(itertools.accumulate(self.delay_counts))
        bounds = [floatToGoString(bound) for bound in SEND_DELAY_BOUNDS] + ["+Inf"]
        return list(zip(bounds, cumulative, strict=True))


class ForwardedTotals:
    """What clients' sockets were handed, per market, summed from the connections' own counts when Prometheus
    scrapes: frames and bytes (``cutemarkets_stream_forwarded_frames_total``, ``..._bytes_total``) and the send
    path's delay (``cutemarkets_stream_send_delay_seconds``).

    Each connection counts its sends as plain integers: two prometheus-client increments per send (each takes the
    metric's lock) were a tenth of the gateway's CPU in the selective fan-out, and ``Histogram.observe`` costs more
    still (the lock, and a Python loop over the buckets). The send delay is the time from the hub's receipt of an
    upstream frame (its read from the feed, or from Redis in relay mode) to the outbox's write of it to the
    client's transport: one observation per write that carries upstream data, the delay of the oldest upstream
    frame in it (a write can merge several), counted in the slot of its bucket (``SEND_DELAY_BOUNDS``): a clock
    read, a ``bisect`` on thirteen floats and two additions, no lock (with the arrival time kept beside each queued
    frame, about 0.5 µs more per frame queued and written on the 2-core test machine, where the socket write itself
    costs several). A closing connection's counts join its market's retired totals under the lock the scrape takes
    (the scrape runs in a worker thread), so a total never goes back.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._live: dict[str, set[SentCounts]] = {}
        self._retired: dict[str, _Sums] = {market: _Sums() for market in MARKETS}

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
            self._retired.setdefault(label, _Sums()).add_counts(counts)

    def collect(self) -> Iterator[Metric]:
        frames = CounterMetricFamily(
            "cutemarkets_stream_forwarded_frames", "Market-data frames sent to clients.", labels=["market"]
        )
        sizes = CounterMetricFamily(
            "cutemarkets_stream_forwarded_bytes", "Bytes of market-data frames sent to clients.", labels=["market"]
        )
        delays = HistogramMetricFamily(
            "cutemarkets_stream_send_delay_seconds",
            "Seconds from the hub's receipt of an upstream frame to its write to a client's socket, per write "
            "(the oldest upstream frame a merged write carries).",
            labels=["market"],
        )
        with self._lock:
            totals = {label: retired.copy() for label, retired in self._retired.items()}
            for label, live in self._live.items():
                total = totals.setdefault(label, _Sums())
                for counts in live:
                    total.add_counts(counts)
        for label, total in totals.items():
            frames.add_metric([label], total.frames)
            sizes.add_metric([label], total.bytes)
            delays.add_metric([label], total.delay_buckets(), total.delay_seconds)
        yield frames
        yield sizes
        yield delays


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
