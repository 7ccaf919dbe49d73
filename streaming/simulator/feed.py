"""One cluster's event source: its market, its aggregates, the one-time JSON encoding and the optional recording.

Everything a cluster publishes goes through ``ClusterFeed`` as a ``Batch`` of pre-encoded events, so trades always
reach the aggregate windows before they are sent, and a recording sees exactly what was published, in order.
"""

from __future__ import annotations

from typing import Any

import orjson

from .aggregates import AggregateBook
from .fanout import Batch
from .market import Event, Market, OptionMarket, StockMarket
from .protocol import CLUSTER_OPTIONS, CLUSTER_STOCKS, EV_TRADE
from .universe import OPTION_CONTRACTS, STOCKS


class ClusterFeed:
    """Generates, aggregates, encodes and records the events of one cluster."""

    def __init__(self, market: Market) -> None:
        self._market = market
        self._aggregates = AggregateBook()
        self._recording: list[bytes] = []
        self._is_recording = False

    def generate(self, count: int, now_ms: int) -> Batch:
        """The aggregates of windows that ended before *now_ms*, then *count* new trades, quotes and LULDs."""
        events = self._aggregates.roll(now_ms)
        generated = self._market.generate(count, now_ms)
        add_trade = self._aggregates.add_trade
        for event in generated:
            if event["ev"] == EV_TRADE:
                add_trade(event["sym"], event["p"], event["s"], now_ms)
        return self._encode_generated(events + generated if events else generated)

    def flush_aggregates(self) -> Batch:
        """``A`` and ``AM`` events for the open windows, without waiting for them to end."""
        return self._encode_generated(self._aggregates.flush())

    def encode(self, events: list[Event]) -> Batch:
        """A batch of arbitrary *events*, each encoded on its own (their strings may hold any character)."""
        return self._batch(events, [orjson.dumps(event)[1:-1] for event in events], None)

    def _encode_generated(self, events: list[Event]) -> Batch:
        """A batch of generated events, encoded in one call and cut at the ``},{`` between objects.

        This is safe because generated events are flat objects whose only strings (event types, symbols, trade
        ids) never contain braces.
        """
        if not events:
            return self._batch(events, [], None)
        payload = orjson.dumps(events)
        return self._batch(events, payload[2:-2].split(b"},{"), payload)

    def _batch(self, events: list[Event], bodies: list[bytes], payload: bytes | None) -> Batch:
        if self._is_recording:
            self._recording.extend(bodies)
        return Batch(
            [event["ev"] for event in events],
            [event.get("sym") or event.get("T", "") for event in events],
            bodies,
            payload,
        )

    def start_recording(self) -> None:
        """Record every event published from now on (a previous recording is discarded)."""
        self._recording = []
        self._is_recording = True

    def stop_recording(self) -> None:
        """Stop recording; what was recorded stays available."""
        self._is_recording = False

    def recorded(self) -> list[dict[str, Any]]:
        """The events recorded since ``start_recording``, decoded, in publication order."""
        if not self._recording:
            return []
        return orjson.loads(b"[{" + b"},{".join(self._recording) + b"}]")


def cluster_feed(cluster: str, seed: int | str | None) -> ClusterFeed:
    """The feed of *cluster*; with a seed, each cluster derives its own reproducible random stream from it."""
    cluster_seed = None if seed is None else f"{seed}:{cluster}"
    if cluster == CLUSTER_STOCKS:
        return ClusterFeed(StockMarket(STOCKS, cluster_seed))
    if cluster == CLUSTER_OPTIONS:
        return ClusterFeed(OptionMarket(OPTION_CONTRACTS, cluster_seed))
    raise ValueError(f"unknown cluster {cluster!r}")
