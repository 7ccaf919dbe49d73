"""Where a WebSocket handshake carries its API key, and what resolving that key came to.

A key comes from ``Authorization: Bearer KEY`` (preferred), the ``api_key`` query parameter (browsers), or the
``{"action":"auth"}`` message (official SDKs). ``Credential`` keeps the key out of its repr, and ``redacted_query``
is the only form in which a query string may be logged.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlencode

import redis.exceptions
from channels.db import database_sync_to_async

from accounts.keys import Denial, Entitlement, resolve_key_async, resolve_key_uncached
from streaming.conf import FAILURE_MODE_OPEN, stream_settings
from streaming.gateway.fairness import PendingSocket
from streaming.runtime.redis_client import redis_client

logger = logging.getLogger(__name__)

SOURCE_HEADER = "header"
SOURCE_QUERY = "query"
SOURCE_MESSAGE = "message"
QUERY_PARAMETER = "api_key"
REDACTED = "[redacted]"


@dataclass(frozen=True, slots=True)
class Credential:
    """A presented key and where it came from; the key is kept out of repr so it cannot reach a log by accident."""

    source: str
    key: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class MalformedCredential:
    """The handshake tried to present a key in a way we cannot read (wrong scheme, several keys...)."""

    source: str
    problem: str


@dataclass(frozen=True, slots=True)
class ResolutionFailed:
    """The key could not be checked (database or Redis unreachable): the stream must fail closed."""


RESOLUTION_FAILED = ResolutionFailed()


@dataclass(frozen=True, slots=True)
class StreamAuth:
    """What the handshake said about the caller: nothing (``credential`` None), a malformed attempt, or a key; or
    that its address is over budget (``refusal``, see ``streaming.gateway.fairness``), its key then unread."""

    credential: Credential | MalformedCredential | None
    outcome: Entitlement | Denial | ResolutionFailed | None = None
    address: str = ""
    refusal: str | None = None
    pending: PendingSocket | None = None
    """The socket's slot among its address's sockets awaiting admission: released on admission or close."""


def credential_from_scope(scope: dict) -> Credential | MalformedCredential | None:
    """The key of a handshake: the Authorization header if present, else the api_key query parameter."""
    authorization = [value for name, value in scope.get("headers", ()) if name == b"authorization"]
    if len(authorization) > 1:
        return MalformedCredential(SOURCE_HEADER, "several Authorization headers")
    if authorization:
        scheme, _, token = authorization[0].decode("latin-1").strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token or " " in token:
            return MalformedCredential(SOURCE_HEADER, "Authorization header must be 'Bearer <API key>'")
        return Credential(SOURCE_HEADER, token)
    values = [
        value
        for name, value in parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        if name == QUERY_PARAMETER
    ]
    if len(values) > 1:
        return MalformedCredential(SOURCE_QUERY, "several api_key query parameters")
    if values:
        if not values[0]:
            return MalformedCredential(SOURCE_QUERY, "empty api_key query parameter")
        return Credential(SOURCE_QUERY, values[0])
    return None


async def resolve_credential(credential: Credential) -> Entitlement | Denial | ResolutionFailed:
    """The key's entitlement, through the Redis cache; with ``STREAM_LOCK_FAILURE_MODE=open`` an unreachable Redis
    is bypassed (the database answers, uncached), since admission proceeds without Redis in that mode."""
    try:
        return await resolve_key_async(credential.key, redis_client())
    except redis.exceptions.RedisError as error:
        if stream_settings().lock_failure_mode != FAILURE_MODE_OPEN:
            logger.error("API key resolution failed: Redis unreachable: %s: %s", type(error).__name__, error)
            return RESOLUTION_FAILED
        logger.error("key cache unreachable (%s): resolving from the database", type(error).__name__)
        try:
            return await database_sync_to_async(resolve_key_uncached, thread_sensitive=False)(credential.key)
        except Exception as error:
            logger.error("API key resolution failed: %s: %s", type(error).__name__, error)
            return RESOLUTION_FAILED
    except Exception as error:  # the key is fine or not; we cannot tell, so nobody is admitted
        logger.error("API key resolution failed: %s: %s", type(error).__name__, error)
        return RESOLUTION_FAILED


def redacted_query(query_string: bytes) -> str:
    """The query string with every api_key value replaced, for anything that must log a request line."""
    pairs = parse_qsl(query_string.decode("latin-1"), keep_blank_values=True)
    return urlencode([(name, REDACTED if name == QUERY_PARAMETER else value) for name, value in pairs])
