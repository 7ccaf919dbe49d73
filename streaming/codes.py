"""The contract's vocabulary, defined once: close codes, status values, actions and ack texts.

Status messages use the market-data stream's own shape, ``[{"ev":"status","status":...,"message":...}]``, so that
official Polygon/Massive clients parse them like the upstream's. The gateway speaks this vocabulary to its clients,
and reads the same words from the upstream feed and the feed relays.
"""

from __future__ import annotations

import enum

import orjson


class CloseCode(enum.IntEnum):
    """WebSocket close codes the gateway sends: RFC 6455's and the contract's application codes."""

    NORMAL_CLOSURE = 1000
    GOING_AWAY = 1001
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    TRY_AGAIN_LATER = 1013
    UNAUTHORIZED = 4401
    ALREADY_CONNECTED = 4409


class Status(enum.StrEnum):
    """Values of a status event's ``status`` field."""

    CONNECTED = "connected"
    AUTH_SUCCESS = "auth_success"
    AUTH_FAILED = "auth_failed"
    AUTH_TIMEOUT = "auth_timeout"
    MAX_CONNECTIONS = "max_connections"
    SUCCESS = "success"
    ERROR = "error"
    SLOW_CONSUMER = "slow_consumer"
    FORCE_DISCONNECT = "force_disconnect"  # an operator ended the connection (the upstream's own status name)


class Action(enum.StrEnum):
    """Values of a client message's ``action`` field (the gateway sends them upstream too)."""

    AUTH = "auth"
    SUBSCRIBE = "subscribe"
    UNSUBSCRIBE = "unsubscribe"


STATUS_EVENT = "status"
"""The ``ev`` of a status event."""

MESSAGE_CONNECTED = "Connected Successfully"
MESSAGE_AUTHENTICATED = "authenticated"
MESSAGE_AUTH_TIMEOUT = "No authentication request received."
MESSAGE_FORCE_DISCONNECT = "disconnected by CuteMarkets operations; you may reconnect"
MESSAGE_SUBSCRIPTION_LIMIT = "Subscription limit reached for feed. Please remove some subscriptions and try again."
"""The feed's own words for a subscription over its limit, which clients may already handle."""
SUBSCRIBED_PREFIX = "subscribed to: "
UNSUBSCRIBED_PREFIX = "unsubscribed to: "
"""An ack is a ``success`` status whose message is one of these prefixes and the item."""


def status_event(status: Status, message: str) -> dict[str, str]:
    return {"ev": STATUS_EVENT, "status": status, "message": message}


def status_frame_bytes(status: Status, message: str) -> bytes:
    """One status message as a UTF-8 text frame: a JSON array holding one status event."""
    return orjson.dumps([status_event(status, message)])


def status_frame(status: Status, message: str) -> str:
    return status_frame_bytes(status, message).decode()


def ack_event(action: Action, item: str) -> dict[str, str]:
    """The ``success`` status confirming that *item* was subscribed or unsubscribed."""
    prefix = SUBSCRIBED_PREFIX if action is Action.SUBSCRIBE else UNSUBSCRIBED_PREFIX
    return status_event(Status.SUCCESS, f"{prefix}{item}")


def ack_frame_bytes(action: Action, item: str) -> bytes:
    return orjson.dumps([ack_event(action, item)])


CONNECTED_FRAME = status_frame(Status.CONNECTED, MESSAGE_CONNECTED)
AUTH_SUCCESS_FRAME = status_frame(Status.AUTH_SUCCESS, MESSAGE_AUTHENTICATED)
