"""What feed relays and gateway processes say to each other through Redis: names, the envelope, gap detection, and
the registration changes gateways announce.

Every message on a market's frames channel is an envelope ``{epoch}:{seq}:{kind}{payload}``: the epoch names one
continuous upstream session of one relay, and the sequence numbers its messages from 1 without holes, so a gateway
that sees a new epoch or a skipped number knows it missed frames (takeover, upstream reconnect, or Redis dropping a
slow subscriber) and closes its clients instead of letting them miss events silently. Pure code, no I/O.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import NamedTuple

import orjson

from streaming.codes import STATUS_EVENT, SUBSCRIBED_PREFIX, UNSUBSCRIBED_PREFIX, Action, Status, ack_event
from streaming.exceptions import RelayGap

KIND_FRAME = b"F"  # an upstream frame, verbatim
KIND_ACK = b"A"  # the relay confirms a gateway's added items: "{token} {item},{item}..."
KIND_HEARTBEAT = b"H"  # nothing to say, but alive (no payload)
KIND_END = b"E"  # this epoch is over (upstream lost, lease lost, relay stopping): payload is the reason
KINDS = (KIND_FRAME, KIND_ACK, KIND_HEARTBEAT, KIND_END)

SEPARATOR = b":"
REQUEST_SEPARATOR = " "
ITEM_SEPARATOR = ","
TOKEN_SEPARATOR = "/"  # a request token is "{source id}/{number}"
STATUS_MARK = b'"status"'  # present in every frame that may carry a status event


class Envelope(NamedTuple):
    epoch: int
    seq: int
    kind: bytes
    payload: bytes


@dataclass(frozen=True, slots=True)
class RelayNames:
    """The Redis keys and channels of one market's relay, all under one prefix (``STREAM_RELAY_PREFIX``)."""

    prefix: str
    market: str

    @property
    def base(self) -> str:
        return f"{self.prefix}{self.market}:"

    @property
    def frames(self) -> str:
        """Pub/sub channel: the relay's envelopes, to every gateway process."""
        return f"{self.base}frames"

    @property
    def requests(self) -> str:
        """Pub/sub channel: gateways announce each change to their registration (see `Change`)."""
        return f"{self.base}requests"

    @property
    def lease(self) -> str:
        """Which relay holds the market's upstream connection (token, with a TTL)."""
        return f"{self.base}lease"

    @property
    def epoch(self) -> str:
        """Counter: each upstream session of any relay takes the next epoch."""
        return f"{self.base}epoch"

    @property
    def live(self) -> str:
        """The current epoch while a relay is streaming; expires a few heartbeats after the relay stops."""
        return f"{self.base}live"

    @property
    def sources(self) -> str:
        """Set of the gateway sources that registered items."""
        return f"{self.base}sources"

    def items(self, source_id: str) -> str:
        """Set of the items one gateway source needs, expiring unless the source refreshes it."""
        return f"{self.items_prefix}{source_id}"

    @property
    def items_prefix(self) -> str:
        return f"{self.base}items:"


def encode(epoch: int, seq: int, kind: bytes, payload: bytes = b"") -> bytes:
    return b"%d:%d:%s%s" % (epoch, seq, kind, payload)


def decode(message: bytes) -> Envelope:
    """Split an envelope; anything that is not one is a protocol fault (the gateway treats it as a gap)."""
    first = message.find(SEPARATOR)
    second = message.find(SEPARATOR, first + 1)
    kind = message[second + 1:second + 2]
    if first <= 0 or second <= first + 1 or kind not in KINDS:
        raise RelayGap(f"relay sent something that is not an envelope: {message[:40]!r}")
    try:
        return Envelope(int(message[:first]), int(message[first + 1:second]), kind, message[second + 2:])
    except ValueError:
        raise RelayGap(f"relay sent something that is not an envelope: {message[:40]!r}") from None


class SequenceCheck:
    """Follows one gateway's view of the relay's epoch and sequence; raises `RelayGap` on anything but the next."""

    def __init__(self) -> None:
        self.epoch: int | None = None
        self.seq = 0

    def check(self, epoch: int, seq: int) -> None:
        """Accept (epoch, seq) if it directly follows the last one; the first envelope seen sets the baseline."""
        if self.epoch is None:
            self.epoch, self.seq = epoch, seq
            return
        if epoch != self.epoch:
            raise RelayGap(f"relay gap: epoch changed from {self.epoch} to {epoch} (relay takeover or reconnect)")
        if seq != self.seq + 1:
            missed = f"{seq - self.seq - 1} message(s) missed" if seq > self.seq else f"{seq} after {self.seq}"
            raise RelayGap(f"relay gap in epoch {epoch}: {missed}")
        self.seq = seq


class Change(enum.StrEnum):
    """A change to one gateway source's registration, announced on the requests channel as
    ``{change}{token} {item},{item}...`` right after (in the same transaction as) the change itself, so the relay
    follows every registration change by change instead of re-reading them all."""

    ADDED = "+"  # token "{source}/{n}": the items were registered; the source wants an ack under that token
    REMOVED = "-"  # token "{source}": the items were unregistered
    RELEASED = "~"  # token "{source}": the whole registration is gone (no items)


def encode_change(change: Change, token: str, items: list[str] | tuple[str, ...] = ()) -> str:
    return f"{change}{encode_ack(token, list(items))}"


def decode_change(text: str) -> tuple[Change, str, list[str]]:
    """The change, its token and its items; `ValueError` for anything else (the relay ignores it)."""
    change = Change(text[:1])
    token, items = decode_ack(text[1:])
    if not token:
        raise ValueError("a registration change without a token")
    return change, token, items


def source_of(token: str) -> str:
    """The gateway source that sent a change, from its token."""
    return token.partition(TOKEN_SEPARATOR)[0]


def encode_ack(token: str, items: list[str]) -> str:
    return f"{token}{REQUEST_SEPARATOR}{ITEM_SEPARATOR.join(items)}"


def decode_ack(text: str) -> tuple[str, list[str]]:
    token, _, items = text.partition(REQUEST_SEPARATOR)
    return token, [item for item in items.split(ITEM_SEPARATOR) if item]


def ack_frame(items: list[str]) -> bytes:
    """The upstream's own acks for *items*, in one frame, as a gateway's hub expects them."""
    return orjson.dumps(
        [ack_event(Action.SUBSCRIBE, item) for item in items]
    )


def _is_success_status(event: object) -> bool:
    return isinstance(event, dict) and event.get("ev") == STATUS_EVENT and event.get("status") == Status.SUCCESS


def upstream_acks(frame: bytes) -> tuple[list[str], list[str]]:
    """Items a frame of the upstream confirms as subscribed and as unsubscribed (one substring test for data)."""
    subscribed: list[str] = []
    unsubscribed: list[str] = []
    if STATUS_MARK not in frame:
        return subscribed, unsubscribed
    try:
        events = orjson.loads(frame)
    except orjson.JSONDecodeError:
        return subscribed, unsubscribed
    for event in events if isinstance(events, list) else ():
        if _is_success_status(event):
            message = str(event.get("message", ""))
            if message.startswith(SUBSCRIBED_PREFIX):
                subscribed.append(message[len(SUBSCRIBED_PREFIX):])
            elif message.startswith(UNSUBSCRIBED_PREFIX):
                unsubscribed.append(message[len(UNSUBSCRIBED_PREFIX):])
    return subscribed, unsubscribed


def without_upstream_acks(frame: bytes) -> bytes | None:
    """*frame* minus the upstream's success statuses (a gateway takes acks only from the relay, addressed to it);
    None when nothing is left. Data frames pass untouched."""
    if STATUS_MARK not in frame:
        return frame
    try:
        events = orjson.loads(frame)
    except orjson.JSONDecodeError:
        return frame  # the hub reports it as the upstream's fault
    if not isinstance(events, list):
        return frame
    kept = [event for event in events if not _is_success_status(event)]
    if len(kept) == len(events):
        return frame
    return orjson.dumps(kept) if kept else None
