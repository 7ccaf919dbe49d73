"""Channels middleware that weighs a WebSocket handshake against its address's budgets, then resolves its API key,
before the consumer runs.

The outcome goes into ``scope["stream_auth"]`` (see ``streaming.gateway.credentials``); the consumer decides what to
do with it after accepting the socket, since only an accepted socket can carry the contract's close codes. An
address over budget (``streaming.gateway.fairness``) has its key left unread: a refused handshake costs neither a
cache read nor a database query.
"""

from __future__ import annotations

from channels.middleware import BaseMiddleware
from channels.security.websocket import OriginValidator

from accounts.keys import Denial
from streaming.conf import stream_settings
from streaming.gateway.credentials import (
    Credential,
    MalformedCredential,
    StreamAuth,
    credential_from_scope,
    resolve_credential,
)
from streaming.gateway.fairness import AddressBudgets


class ApiKeyMiddleware(BaseMiddleware):
    """Resolve the handshake's key into ``scope["stream_auth"]``; the consumer decides what to do with it."""

    async def __call__(self, scope, receive, send):
        if scope["type"] != "websocket":
            return await super().__call__(scope, receive, send)
        address = client_address(scope)
        budgets = AddressBudgets.for_loop()
        pending = budgets.admit_handshake(address)
        if isinstance(pending, str):
            return await super().__call__(
                dict(scope, stream_auth=StreamAuth(credential=None, address=address, refusal=pending)), receive, send
            )
        try:
            credential = credential_from_scope(scope)
            outcome = await resolve_credential(credential) if isinstance(credential, Credential) else None
            if isinstance(credential, MalformedCredential) or isinstance(outcome, Denial):
                budgets.resolution_failed(address)
            auth = StreamAuth(credential=credential, outcome=outcome, address=address, pending=pending)
            return await super().__call__(dict(scope, stream_auth=auth), receive, send)
        finally:
            pending.release()


def client_address(scope: dict) -> str:
    """The client's address as daphne reports it (behind the load balancer: from ``X-Forwarded-For``)."""
    client = scope.get("client")
    return str(client[0]) if client else ""


class BrowserOriginValidator(OriginValidator):
    """Channels' OriginValidator, except that a handshake without Origin (bots, notebooks: not a browser) passes.

    Keys, not cookies, authenticate the stream, so the allowlist is optional (empty: every origin is allowed).
    """

    def valid_origin(self, parsed_origin) -> bool:
        if parsed_origin is None:
            return True
        return self.validate_origin(parsed_origin)


def origin_checked(application):
    allowed = stream_settings().allowed_origins
    return BrowserOriginValidator(application, list(allowed)) if allowed else application
