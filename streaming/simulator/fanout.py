"""Fan-out of pre-encoded events: which events a subscription matches, and the frames that carry them.

Each event is encoded to JSON once; a connection's frames are the byte-joins of the events it subscribed to, split
so that no frame reaches ``MAX_FRAME_BYTES``. Connections with identical subscriptions share one computation per
batch, and a wildcard subscriber of every event type in a batch gets the batch's frames without per-event work.
"""

from __future__ import annotations

from collections.abc import Iterable

from .protocol import MAX_FRAME_BYTES, WILDCARD, parse_item

_NO_SYMBOLS: frozenset[str] = frozenset()


class Subscription:
    """A compiled set of subscription items such as ``"T.AAPL"`` or ``"Q.*"``.

    ``wildcards`` holds the event types subscribed for every symbol, ``symbols`` the named symbols per event type.
    """

    __slots__ = ("items", "wildcards", "symbols")

    def __init__(self, items: Iterable[str] = ()) -> None:
        self.items = frozenset(items)
        self.wildcards: set[str] = set()
        self.symbols: dict[str, set[str]] = {}
        for item in self.items:
            parsed = parse_item(item)
            if parsed is None:
                continue
            ev, symbol = parsed
            if symbol == WILDCARD:
                self.wildcards.add(ev)
            else:
                self.symbols.setdefault(ev, set()).add(symbol)


class Batch:
    """Events published together: parallel lists of event type, symbol and encoded JSON body.

    A body is an event's JSON object without its outer braces (``"ev":"T","sym":"AAPL",...``), which lets a whole
    batch be encoded with one ``orjson.dumps`` call and cut apart with one ``bytes.split``. ``payload``, when given,
    is the whole batch already encoded as one JSON array.
    """

    __slots__ = ("evs", "symbols", "bodies", "_payload", "_event_types", "_all_frames")

    def __init__(self, evs: list[str], symbols: list[str], bodies: list[bytes], payload: bytes | None = None) -> None:
        self.evs = evs
        self.symbols = symbols
        self.bodies = bodies
        self._payload = payload
        self._event_types: set[str] | None = None
        self._all_frames: list[bytes] | None = None

    def __len__(self) -> int:
        return len(self.bodies)

    def frames_for(self, subscription: Subscription) -> list[bytes]:
        """The frames a connection with *subscription* receives for this batch (none when nothing matches)."""
        if self._event_types is None:
            self._event_types = set(self.evs)
        wildcards = subscription.wildcards
        if self._event_types <= wildcards:
            if self._all_frames is None:
                if self._payload is not None and len(self._payload) < MAX_FRAME_BYTES:
                    self._all_frames = [self._payload]
                else:
                    self._all_frames = split_frames(self.bodies)
            return self._all_frames
        named = subscription.symbols
        return split_frames(
            [
                body
                for ev, symbol, body in zip(self.evs, self.symbols, self.bodies, strict=True)
                if ev in wildcards or symbol in named.get(ev, _NO_SYMBOLS)
            ]
        )


def split_frames(bodies: list[bytes]) -> list[bytes]:
    """JSON-array frames holding the events of *bodies* in order, each strictly smaller than ``MAX_FRAME_BYTES``."""
    if not bodies:
        return []
    # A frame is "[{" + bodies joined by "},{" + "}]": the bodies' bytes plus 3 per event plus 1.
    if sum(map(len, bodies)) + 3 * len(bodies) + 1 < MAX_FRAME_BYTES:
        return [_frame(bodies)]
    frames = []
    start = 0
    size = 1
    for index, body in enumerate(bodies):
        grown = size + len(body) + 3
        if grown >= MAX_FRAME_BYTES and index > start:
            frames.append(_frame(bodies[start:index]))
            start = index
            grown = 1 + len(body) + 3
        size = grown
    frames.append(_frame(bodies[start:]))
    return frames


def _frame(bodies: list[bytes]) -> bytes:
    return b"[{" + b"},{".join(bodies) + b"}]"
