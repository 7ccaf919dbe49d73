"""Channels middleware that resolves the API key of a WebSocket handshake before the consumer runs.

The outcome goes into ``scope["stream_auth"]`` (see ``streaming.gateway.credentials``); the consumer decides what to do
with it after accepting the socket, since only an accepted socket can carry the contract's close codes.
"""

from __future__ import annotations

from channels.middleware import BaseMiddleware
from channels.security.websocket import OriginValidator

from streaming.conf import stream_settings
from streaming.gateway.credentials import Credential, StreamAuth, credential_from_scope, resolve_credential


class ApiKeyMiddleware(BaseMiddleware):
    """Resolve the handshake's key into ``scope["stream_auth"]``; the consumer decides what to do with it."""

    async def __call__(self, scope, receive, send):
        if scope["type"] == "websocket":
            credential = credential_from_scope(scope)
            outcome = await resolve_credential(credential) if isinstance(credential, Credential) else None
            scope = dict(scope, stream_auth=StreamAuth(credential=credential, outcome=outcome))
        return await super().__call__(scope, receive, send)


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
