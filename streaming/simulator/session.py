"""One client connection's state: authentication, subscriptions, and an ordered outbox drained by a writer task.

Status replies, data frames and the final close all go through the same outbox, so a client sees them in the order
the simulator produced them, and pausing the simulator (holding every writer) stalls a connection completely
while its socket stays open.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from .fanout import Subscription
from .protocol import (
    CLUSTER_OPTIONS,
    EV_QUOTE,
    EV_SEPARATOR,
    MAX_OPTION_QUOTE_CONTRACTS,
    MESSAGE_INVALID_SUBSCRIPTION,
    MESSAGE_SUBSCRIBED,
    MESSAGE_SUBSCRIPTION_LIMIT,
    MESSAGE_UNSUBSCRIBED,
    STATUS_ERROR,
    STATUS_SUCCESS,
    parse_item,
    split_params,
    status_frame,
)


@dataclass(frozen=True, slots=True)
class _Close:
    code: int
    reason: str


class Session:
    """A connection to one cluster, with its protocol state and pending outbound frames."""

    def __init__(self, connection: ServerConnection, cluster: str, resumed: asyncio.Event) -> None:
        self.connection = connection
        self.cluster = cluster
        self.authenticated = False
        self.subscription = Subscription()
        self.backlog_bytes = 0
        self._resumed = resumed
        self._outbox: asyncio.Queue[bytes | _Close] = asyncio.Queue()

    def send(self, frame: bytes) -> None:
        """Queue a text frame (already-encoded JSON) behind everything queued before it."""
        self.backlog_bytes += len(frame)
        self._outbox.put_nowait(frame)

    def close_after_pending(self, code: int, reason: str) -> None:
        """Close the connection once every frame queued so far has been sent."""
        self._outbox.put_nowait(_Close(code, reason))

    async def write_pending(self) -> None:
        """Send queued frames in order while the simulator is not paused; return after the queued close."""
        try:
            while True:
                item = await self._outbox.get()
                await self._resumed.wait()
                if isinstance(item, _Close):
                    await self.connection.close(item.code, item.reason)
                    return
                self.backlog_bytes -= len(item)
                await self.connection.send(item, text=True)
        except ConnectionClosed:
            return

    def subscribe(self, params: str) -> None:
        """Add each item of *params*, acknowledging each one (or rejecting it when it is not ``EV.SYMBOL``); on the
        options cluster, quotes beyond ``MAX_OPTION_QUOTE_CONTRACTS`` are refused with one error per message."""
        self._change(params, adding=True)

    def unsubscribe(self, params: str) -> None:
        """Remove each item of *params*, acknowledging each one."""
        self._change(params, adding=False)

    def _change(self, params: str, adding: bool) -> None:
        items = set(self.subscription.items)
        quote_prefix = EV_QUOTE + EV_SEPARATOR
        limited = self.cluster == CLUSTER_OPTIONS
        quotes = sum(1 for item in items if item.startswith(quote_prefix)) if limited else 0
        refused = False
        for item in split_params(params):
            if parse_item(item) is None:
                self.send(status_frame(STATUS_ERROR, MESSAGE_INVALID_SUBSCRIPTION.format(item=item)))
                continue
            if adding and limited and item.startswith(quote_prefix) and item not in items:
                if quotes >= MAX_OPTION_QUOTE_CONTRACTS:
                    if not refused:
                        self.send(status_frame(STATUS_ERROR, MESSAGE_SUBSCRIPTION_LIMIT))
                        refused = True
                    continue
                quotes += 1
            if adding:
                items.add(item)
                self.send(status_frame(STATUS_SUCCESS, MESSAGE_SUBSCRIBED.format(item=item)))
            else:
                items.discard(item)
                self.send(status_frame(STATUS_SUCCESS, MESSAGE_UNSUBSCRIBED.format(item=item)))
        self.subscription = Subscription(items)
