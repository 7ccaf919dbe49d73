"""What a client's messages do once parsed: auth, subscribe and unsubscribe (within the connection's budgets), and
floods.

``protocol`` parses a message and ``ratelimit`` meters it; ``ClientRequests`` acts on it. It answers an auth
message according to where the connection stands (admission decides), asks the hub for subscriptions, and queues
the acks behind the data already queued. Each connection has one, and it owns the connection's budgets:

- messages per second (``STREAM_CLIENT_MESSAGE_RATE``/``_BURST``);
- items added or removed per second (``STREAM_CLIENT_ITEM_RATE``/``_BURST``): a message of 5,000 items costs what
  5,000 messages of one would, since the hub and the upstream pay per item;
- items held, the plan's ``max_subscriptions``;
- what the feed allows one connection, shared with every client of the process (the hub's ``claiming``).

A request over a budget changes nothing and gets one ``error`` status; a client that goes on being refused
(``STREAM_CLIENT_REFUSALS_BEFORE_CLOSE`` times) is closed with 1008.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
from collections.abc import Set as AbstractSet
from typing import Protocol

from streaming import codes, metrics
from streaming.conf import stream_settings
from streaming.exceptions import SubscriptionRefused, UpstreamError
from streaming.gateway import protocol
from streaming.gateway.admission import Admission, Phase
from streaming.hub.hub import Subscriber, UpstreamHub
from streaming.hub.index import Subscription
from streaming.runtime.ratelimit import TokenBucket


class Client(Subscriber, Protocol):
    """What request handling needs from the connection whose messages it handles."""

    market: str
    phase: Phase
    hub: UpstreamHub | None

    def queue(self, frames: list[bytes]) -> None:
        """Send *frames* after everything already queued for the client."""

    async def send_status(self, status: codes.Status, message: str) -> None:
        """Send one status message."""

    async def close_with_status(self, code: int, status: codes.Status, message: str) -> None:
        """Send one last status message, then close with *code*."""


class Refusal(enum.StrEnum):
    """Why a request was refused (the ``reason`` of ``cutemarkets_stream_refusals_total``)."""

    PLAN_CAP = "plan_cap"
    ITEM_RATE = "item_rate"
    MESSAGE_RATE = "message_rate"
    FEED_CAPACITY = "feed_capacity"


ITEMS_PER_STEP = 500
"""Items of one message handled between two turns of the event loop. A 5,000-item subscribe (within every budget)
handled in one go held the loop, and every other client of the process, for a hundred milliseconds and more."""

def over_plan_cap(items: list[Subscription], held: AbstractSet[Subscription], cap: int) -> str | None:
    """Why subscribing *items* would take the connection over *cap* (items it holds count once), or None."""
    new = sum(1 for item in items if item not in held)
    if not new or len(held) + new <= cap:
        return None
    return (
        f"{codes.MESSAGE_SUBSCRIPTION_LIMIT} ({len(held)} held + {new} new > {cap} items per connection on your plan; "
        f"nothing was subscribed)"
    )


class ClientRequests:
    """The requests of one connection's client. Create one per connection."""

    def __init__(self, client: Client, admission: Admission) -> None:
        settings = stream_settings()
        self._client = client
        self._admission = admission
        self.message_budget = TokenBucket(settings.client_message_rate, settings.client_message_burst)
        self.item_budget = TokenBucket(settings.client_item_rate, settings.client_item_burst)
        self._refusals = 0

    async def on_auth_message(self, message: protocol.ClientMessage) -> None:
        """Official clients send their auth message whatever the handshake carried: it is answered in every phase,
        with a confirmation once admitted, the pending rejection while one waits, or the admission's verdict."""
        phase = self._client.phase
        if phase is Phase.ADMITTED:
            await self._client.send_status(codes.Status.AUTH_SUCCESS, codes.MESSAGE_AUTHENTICATED)
        elif phase is Phase.REJECTING:
            await self._admission.reject_now()
        elif phase is Phase.AWAITING_AUTH:
            await self._admission.admit_message_key(message.params if isinstance(message.params, str) else "")

    async def on_stream_request(self, message: protocol.ClientMessage) -> None:
        """Subscribe or unsubscribe an admitted client; invalid and refused items are answered with errors."""
        client = self._client
        hub, entitlement = client.hub, self._admission.entitlement
        assert hub is not None and entitlement is not None  # both are set before the phase becomes ADMITTED
        items, errors = protocol.parse_subscriptions(message.params, client.market)
        error_frames = [codes.status_frame_bytes(codes.Status.ERROR, error) for error in errors]
        if message.action == codes.Action.SUBSCRIBE:
            over_cap = over_plan_cap(items, hub.subscriptions_of(client), entitlement.max_subscriptions)
            if over_cap is not None:
                await self._refuse(Refusal.PLAN_CAP, over_cap)
                return
        if items and not self.item_budget.take(len(items)):
            await self._refuse(
                Refusal.ITEM_RATE,
                f"subscription rate limit exceeded: more than {self.item_budget.rate:g} items per second added or "
                f"removed ({len(items)} in this message); nothing was changed"
            )
            return
        subscribing = message.action == codes.Action.SUBSCRIBE
        try:
            with hub.claiming(items) if subscribing else contextlib.nullcontext():
                await self._change_in_steps(hub, message.action, items, error_frames)
        except SubscriptionRefused as refusal:
            await self._refuse(Refusal.FEED_CAPACITY, str(refusal))
        except UpstreamError as error:
            await client.close_with_status(codes.CloseCode.INTERNAL_ERROR, codes.Status.ERROR, str(error))

    async def _change_in_steps(
        self, hub: UpstreamHub, action: codes.Action, items: list[Subscription], error_frames: list[bytes]
    ) -> None:
        """Subscribe or unsubscribe *items* ``ITEMS_PER_STEP`` at a time, each step's acks queued once it is done
        (the errors of the message's invalid items after the last)."""
        client = self._client
        for start in range(0, len(items), ITEMS_PER_STEP):
            if start:
                await asyncio.sleep(0)  # the other clients' turn
            step = items[start:start + ITEMS_PER_STEP]
            frames = [codes.ack_frame_bytes(action, str(item)) for item in step]
            if start + ITEMS_PER_STEP >= len(items):
                frames += error_frames
            if action == codes.Action.SUBSCRIBE:
                await hub.subscribe(client, step, acknowledge=functools.partial(client.queue, frames))
            else:
                await hub.unsubscribe(client, step)
                client.queue(frames)
        if not items:
            client.queue(error_frames)

    async def refuse_flood(self) -> None:
        """A message over the message budget is refused with an error; a client that keeps flooding is closed."""
        rate = self.message_budget.rate
        await self._refuse(
            Refusal.MESSAGE_RATE,
            f"rate limit exceeded ({rate:g} messages per second): message ignored",
            closing=f"too many messages: more than {rate:g} per second, closing",
        )

    async def _refuse(self, reason: Refusal, message: str, closing: str = "") -> None:
        """Answer a refused request with one error; the client refused once too often is closed (1008)."""
        metrics.refused(self._client.market, reason)
        self._refusals += 1
        if self._refusals >= stream_settings().client_refusals_before_close:
            await self._client.close_with_status(
                codes.CloseCode.POLICY_VIOLATION, codes.Status.ERROR,
                closing or f"too many refused requests, closing (the last: {message})",
            )
        else:
            await self._client.send_status(codes.Status.ERROR, message)
