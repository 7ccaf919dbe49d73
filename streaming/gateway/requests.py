"""What a client's messages do once parsed: auth, subscribe and unsubscribe (within the plan's cap), and floods.

``protocol`` parses a message and ``ratelimit`` meters it; ``ClientRequests`` acts on it. It answers an auth
message according to where the connection stands (admission decides), asks the hub for subscriptions, and queues
the acks behind the data already queued. Each connection has one, and it owns the connection's message budget.
"""

from __future__ import annotations

from typing import Protocol

from streaming import codes
from streaming.conf import stream_settings
from streaming.exceptions import UpstreamError
from streaming.gateway import protocol
from streaming.gateway.admission import Admission, Phase
from streaming.runtime.ratelimit import TokenBucket
from streaming.hub.hub import Subscriber, UpstreamHub
from streaming.hub.index import Subscription


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


def within_plan_cap(
    items: list[Subscription], held: frozenset[Subscription], cap: int
) -> tuple[list[Subscription], list[str]]:
    """Split requested items into those the plan's per-connection cap allows and refusal messages."""
    room = cap - len(held)
    allowed: list[Subscription] = []
    refused: list[str] = []
    for item in items:
        if item in held:
            allowed.append(item)
        elif room > 0:
            allowed.append(item)
            room -= 1
        else:
            refused.append(f"subscription limit reached ({cap} per connection on your plan): {item} refused")
    return allowed, refused


class ClientRequests:
    """The requests of one connection's client. Create one per connection."""

    def __init__(self, client: Client, admission: Admission) -> None:
        settings = stream_settings()
        self._client = client
        self._admission = admission
        self.message_budget = TokenBucket(settings.client_message_rate, settings.client_message_burst)
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
            cap = entitlement.max_subscriptions
            if cap is not None:
                items, refused = within_plan_cap(items, hub.subscriptions_of(client), cap)
                error_frames += [codes.status_frame_bytes(codes.Status.ERROR, error) for error in refused]
            acks = [codes.ack_frame_bytes(codes.Action.SUBSCRIBE, str(item)) for item in items]
            if not items:
                client.queue(error_frames)
                return
            try:
                await hub.subscribe(client, items, acknowledge=lambda: client.queue(acks + error_frames))
            except UpstreamError as error:
                await client.close_with_status(codes.CloseCode.INTERNAL_ERROR, codes.Status.ERROR, str(error))
        else:
            if items:
                await hub.unsubscribe(client, items)
            acks = [codes.ack_frame_bytes(codes.Action.UNSUBSCRIBE, str(item)) for item in items]
            client.queue(acks + error_frames)

    async def refuse_flood(self) -> None:
        """A message over the budget is refused with an error; a client that keeps flooding is closed (1008)."""
        self._refusals += 1
        settings = stream_settings()
        if self._refusals >= settings.client_refusals_before_close:
            await self._client.close_with_status(
                codes.CloseCode.POLICY_VIOLATION, codes.Status.ERROR,
                f"too many messages: more than {settings.client_message_rate:g} per second, closing",
            )
        else:
            await self._client.send_status(
                codes.Status.ERROR,
                f"rate limit exceeded ({settings.client_message_rate:g} messages per second): message ignored",
            )
