"""Where a hub's frames come from: its own connection to the feed, or the market's feed relay through Redis.

The hub is written against `FeedConnection` alone, so its fan-out, acks and slow-consumer bound are the same in both
fan-out modes (``STREAM_FANOUT``), and it never imports the relay or the upstream client itself.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from typing import Protocol

from streaming.conf import FANOUT_RELAY, stream_settings
from streaming.relay.source import RelaySource
from streaming.upstream.connection import UpstreamConnection


class FeedConnection(Protocol):
    """What the hub uses of its upstream: the feed itself (`UpstreamConnection`) or the relay (`RelaySource`)."""

    async def subscribe(self, items: Iterable[str]) -> None: ...

    async def unsubscribe(self, items: Iterable[str]) -> None: ...

    def frames(self) -> AsyncIterator[str | bytes]: ...

    async def close(self) -> None: ...


async def open_upstream(market: str, url: str, api_key: str) -> FeedConnection:
    """The hub's upstream for *market*: its own connection to the feed (``STREAM_FANOUT=process``) or the feed
    relay's frames through Redis (``relay``). Raises `UpstreamError` as `UpstreamConnection.open` does."""
    if stream_settings().fanout == FANOUT_RELAY:
        return await RelaySource.open(market)
    return await UpstreamConnection.open(url, api_key)
