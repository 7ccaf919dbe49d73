"""The upstream's wire contract: clusters, status strings, close codes, frame limits and subscription syntax.

The simulator stands in for the Polygon.io/Massive feed, so every string a client can observe is defined here once,
spelled exactly as the real feed spells it, and nothing here depends on the gateway's own modules.
"""

from __future__ import annotations

import orjson

CLUSTER_STOCKS = "stocks"
CLUSTER_OPTIONS = "options"
CLUSTERS = (CLUSTER_STOCKS, CLUSTER_OPTIONS)

ACTION_AUTH = "auth"
ACTION_SUBSCRIBE = "subscribe"
ACTION_UNSUBSCRIBE = "unsubscribe"

EV_STATUS = "status"
EV_TRADE = "T"
EV_QUOTE = "Q"
EV_SECOND_AGGREGATE = "A"
EV_MINUTE_AGGREGATE = "AM"
EV_LULD = "LULD"

STATUS_CONNECTED = "connected"
STATUS_AUTH_SUCCESS = "auth_success"
STATUS_AUTH_FAILED = "auth_failed"
STATUS_AUTH_TIMEOUT = "auth_timeout"
STATUS_MAX_CONNECTIONS = "max_connections"
STATUS_SUCCESS = "success"
STATUS_ERROR = "error"

MESSAGE_CONNECTED = "Connected Successfully"
MESSAGE_AUTHENTICATED = "authenticated"
MESSAGE_AUTH_FAILED = "authentication failed"
MESSAGE_AUTH_TIMEOUT = "No authentication request received."
MESSAGE_MAX_CONNECTIONS = (
    "Maximum number of websocket connections exceeded. You have reached the connection limit for your account. "
    "Please contact support at https://massive.com/contact to increase your limit."
)
MESSAGE_INVALID_JSON = "Invalid JSON"
MESSAGE_NOT_AUTHORIZED = "not authorized"
MESSAGE_SUBSCRIBED = "subscribed to: {item}"
MESSAGE_UNSUBSCRIBED = "unsubscribed to: {item}"
MESSAGE_UNKNOWN_ACTION = "unknown action: {action}"
MESSAGE_INVALID_SUBSCRIPTION = "invalid subscription: {item}"
MESSAGE_SUBSCRIPTION_LIMIT = "Subscription limit reached for feed. Please remove some subscriptions and try again."

CLOSE_GOING_AWAY = 1001
CLOSE_POLICY_VIOLATION = 1008

WILDCARD = "*"
ITEM_SEPARATOR = ","
EV_SEPARATOR = "."

# The feed subscribes one connection to at most this many option contracts' quotes; it refuses the rest.
MAX_OPTION_QUOTE_CONTRACTS = 1000

# Every frame the feed sends stays strictly below this many bytes; larger batches are split.
MAX_FRAME_BYTES = 1_000_000


def status_frame(status: str, message: str) -> bytes:
    """One status message as the feed frames it: a JSON array holding a single status event."""
    return orjson.dumps([{"ev": EV_STATUS, "status": status, "message": message}])


CONNECTED_FRAME = status_frame(STATUS_CONNECTED, MESSAGE_CONNECTED)
AUTH_SUCCESS_FRAME = status_frame(STATUS_AUTH_SUCCESS, MESSAGE_AUTHENTICATED)
AUTH_FAILED_FRAME = status_frame(STATUS_AUTH_FAILED, MESSAGE_AUTH_FAILED)
AUTH_TIMEOUT_FRAME = status_frame(STATUS_AUTH_TIMEOUT, MESSAGE_AUTH_TIMEOUT)
MAX_CONNECTIONS_FRAME = status_frame(STATUS_MAX_CONNECTIONS, MESSAGE_MAX_CONNECTIONS)
INVALID_JSON_FRAME = status_frame(STATUS_ERROR, MESSAGE_INVALID_JSON)
NOT_AUTHORIZED_FRAME = status_frame(STATUS_ERROR, MESSAGE_NOT_AUTHORIZED)


def split_params(params: str) -> list[str]:
    """The items of a subscribe/unsubscribe ``params`` string: comma-separated, spaces trimmed, empties dropped."""
    return [item.strip() for item in params.split(ITEM_SEPARATOR) if item.strip()]


def parse_item(item: str) -> tuple[str, str] | None:
    """``"T.BRK.B"`` -> ``("T", "BRK.B")``: split on the first dot only; None when either part is missing."""
    ev, dot, symbol = item.partition(EV_SEPARATOR)
    if not dot or not ev or not symbol:
        return None
    return ev, symbol
