"""Client messages of the stream protocol, parsed and checked as plain data (no I/O).

Clients send ``{"action": "auth"|"subscribe"|"unsubscribe", "params": ...}`` as JSON text. Anything else gets a
precise error message for a status event; nothing a client sends can raise past this module.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from streaming.codes import Action
from streaming.gateway.symbols import SYMBOL_CHECKS
from streaming.hub.index import WILDCARD, Subscription

MAX_MESSAGE_BYTES = 64 * 1024
EVENT_TYPES = {
    "options": ("T", "Q", "A", "AM"),
    "stocks": ("T", "Q", "A", "AM", "LULD", "NOI"),
}
ECHO_LIMIT = 48  # how much of a client's bad input is quoted back
MAX_ITEM_ERRORS = 10  # invalid items named per message; the rest are counted in one more error

MESSAGE_INVALID_JSON = "Invalid JSON"
MESSAGE_BINARY = "binary frames are not supported: send JSON text"
MESSAGE_TOO_LARGE = f"message too large (limit {MAX_MESSAGE_BYTES} bytes)"
MESSAGE_NOT_OBJECT = 'message must be a JSON object like {"action":"subscribe","params":"T.AAPL"}'
MESSAGE_NO_ACTION = 'missing "action": use auth, subscribe or unsubscribe'
MESSAGE_BAD_PARAMS = 'params must be a string of comma-separated subscriptions, e.g. "T.AAPL,Q.AAPL"'
MESSAGE_NO_ITEMS = 'params holds no subscriptions, e.g. "T.AAPL,Q.AAPL"'
MESSAGE_NOT_AUTHENTICATED = 'not authenticated: send {"action":"auth","params":"<API key>"} first'


@dataclass(frozen=True, slots=True)
class ClientMessage:
    action: Action
    params: object


@dataclass(frozen=True, slots=True)
class ClientError:
    message: str


def echo(value: object) -> str:
    """A short, printable rendering of client input for an error message."""
    text = value if isinstance(value, str) else orjson.dumps(value, default=str).decode()
    text = "".join(ch if ch.isprintable() else "?" for ch in text[: ECHO_LIMIT + 1])
    return text if len(text) <= ECHO_LIMIT else text[:ECHO_LIMIT] + "…"


def unknown_action_message(action: str) -> str:
    return f"unknown action {echo(action)!r}: use auth, subscribe or unsubscribe"


def parse_client_message(text: str | None, data: bytes | None = None) -> ClientMessage | ClientError:
    if text is None:
        return ClientError(MESSAGE_BINARY if data is not None else MESSAGE_INVALID_JSON)
    if len(text) > MAX_MESSAGE_BYTES or len(text.encode("utf-8", "surrogatepass")) > MAX_MESSAGE_BYTES:
        return ClientError(MESSAGE_TOO_LARGE)
    try:
        message = orjson.loads(text)
    except orjson.JSONDecodeError:
        return ClientError(MESSAGE_INVALID_JSON)
    if not isinstance(message, dict):
        return ClientError(MESSAGE_NOT_OBJECT)
    action = message.get("action")
    if not isinstance(action, str) or not action:
        return ClientError(MESSAGE_NO_ACTION)
    try:
        known = Action(action)
    except ValueError:
        return ClientError(unknown_action_message(action))
    return ClientMessage(action=known, params=message.get("params"))


def more_invalid_items_message(count: int) -> str:
    return f"{count} more invalid item{'s' if count != 1 else ''} not listed (at most {MAX_ITEM_ERRORS} per message)"


def item_error(item: str, market: str) -> str | None:
    """What is wrong with one (stripped, non-empty) item, or None if it is a valid subscription."""
    event_type, dot, symbol = item.partition(".")
    event_types = EVENT_TYPES[market]
    if not dot:
        return f"invalid subscription {echo(item)!r}: expected EVENT.SYMBOL, e.g. T.AAPL"
    if event_type not in event_types:
        return (
            f"unknown event type {echo(event_type)!r} in {echo(item)!r} for {market} "
            f"(valid: {', '.join(event_types)})"
        )
    if not symbol:
        return f"empty symbol in {echo(item)!r}"
    if symbol == WILDCARD:
        return None
    problem = SYMBOL_CHECKS[market](symbol)
    return None if problem is None else f"invalid {market} symbol in {echo(item)!r}: {problem}"


def parse_subscriptions(params: object, market: str) -> tuple[list[Subscription], list[str]]:
    """Split ``"T.AAPL, Q.BRK.B,AM.*"`` into items (on the first dot only); return (items, error messages).

    The first ``MAX_ITEM_ERRORS`` invalid items are named, the others counted in one last error: a 64 KiB message of
    one-letter items would otherwise be answered with 32,000 errors (~3.4 MB), enough for three such messages to
    overflow the client's outbox and close it as a slow consumer.
    """
    if not isinstance(params, str):
        return [], [MESSAGE_BAD_PARAMS]
    items: list[Subscription] = []
    errors: list[str] = []
    unlisted = 0
    seen: set[Subscription] = set()
    for raw in params.split(","):
        item = raw.strip()
        if not item:
            continue
        error = item_error(item, market)
        if error is not None:
            if len(errors) < MAX_ITEM_ERRORS:
                errors.append(error)
            else:
                unlisted += 1
            continue
        event_type, _, symbol = item.partition(".")
        subscription = Subscription(event_type, symbol)
        if subscription not in seen:
            seen.add(subscription)
            items.append(subscription)
    if unlisted:
        errors.append(more_invalid_items_message(unlisted))
    if not items and not errors:
        errors.append(MESSAGE_NO_ITEMS)
    return items, errors
