"""Hostile client messages through the real consumer: property-based fuzzing of every client message path.

Each message goes through ``cutemarkets.asgi.application`` (middleware, router, consumer, protocol, hub) with the real
database, the real Redis (lock, cache, channel layer) and the feed simulator as upstream, driven by Channels'
``WebsocketCommunicator``. One connection serves many examples: after each fuzzed frame the test sends a *sentinel*
(an unknown action with a unique name), and every status event before the sentinel's answer is the reply to that
frame (the consumer handles one message at a time and its outbox keeps replies in order).

Properties, for every frame a client can send:
- it is answered by at least one status event in the feed's shape, ``{"ev":"status","status":...,"message":...}``
  with status in {success, error, auth_success} (before authentication: error, or auth_failed and 4401 for auth);
- the answer is the one the README documents for that kind of input (an oracle below, written from the README);
- the socket stays open (no close at all, so never 1011) except where the contract closes it;
- no answer carries a traceback, exception text or file path, and every answer is small (echoes are truncated).
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass, field

import orjson
import pytest
from channels.testing import WebsocketCommunicator
from hypothesis import HealthCheck, event, given, settings as hypothesis_settings, strategies as st

from streaming import codes
from streaming.gateway import protocol
from tests.accounts.factories import make_key, make_user
from tests.e2e.conftest import SIMULATOR_KEY
from tests.reliability.figures import record

pytestmark = [pytest.mark.reliability, pytest.mark.django_db(transaction=True)]

TIMEOUT = 10
CONSUMER_EXIT_TIMEOUT = 2
MAX_REPLY_CHARS = 300  # the longest status message the gateway writes is ~170 characters with two full echoes
MAX_FRAME_BYTES = 1_000_000  # README: every frame is under 1,000,000 bytes (queued status events may share one)
LIMIT = protocol.MAX_MESSAGE_BYTES
# From README "Messages": the event types of each market.
EVENT_TYPES = {"options": {"T", "Q", "A", "AM"}, "stocks": {"T", "Q", "A", "AM", "LULD", "NOI"}}
SIMPLE_ITEMS = {
    "stocks": re.compile(r"(?P<ev>[A-Z]+)\.(?P<sym>[A-Z]{1,5}|\*)"),
    "options": re.compile(
        r"(?P<ev>[A-Z]+)\.(?P<sym>O:[A-Z]{1,5}2[6-9](0[1-9]|1[0-2])(0[1-9]|1[0-9]|2[0-8])[CP][0-9]{8}|\*)"
    ),
}
"""Items that are plainly valid on each market (a subset of what the gateway accepts): each must be acknowledged."""
LEAK_MARKERS = ("Traceback", "Error(", 'File "', ".py", "site-packages", "/work/", "<class ", " object at 0x",
                "Exception", "errno")
ANSWERED_STATUSES = {codes.Status.SUCCESS, codes.Status.ERROR, codes.Status.AUTH_SUCCESS}

FUZZ = hypothesis_settings(
    max_examples=200,
    deadline=None,
    database=None,  # nothing written into the repository
    suppress_health_check=list(HealthCheck),  # one connection (a fixture) on purpose serves every example
)


# --- the gateway under test -------------------------------------------------------------------------------------


@pytest.fixture
def gateway_settings(settings, simulator):
    """The simulator as upstream of both markets, and a message rate that hypothesis' volume cannot trip."""
    settings.STREAM_UPSTREAMS = {
        market: {"URL": simulator.url(market), "API_KEY": SIMULATOR_KEY} for market in ("options", "stocks")
    }
    settings.STREAM_CLIENT_MESSAGE_RATE = 1e9
    settings.STREAM_CLIENT_MESSAGE_BURST = 10**9
    # Thousands of handshakes and bad keys from one test client, on purpose (fairness: tests/e2e/test_isolation.py).
    settings.STREAM_ADDRESS_FAILURES_PER_MINUTE = 10**9
    settings.STREAM_ADDRESS_HANDSHAKE_BURST = 10**9
    settings.STREAM_REJECT_GRACE = 0.05
    settings.STREAM_AUTH_TIMEOUT = 600
    return settings


@pytest.fixture
def application(gateway_settings):
    from cutemarkets.asgi import application

    return application


@pytest.fixture
def keys(transactional_db):
    user = make_user("hostile", plans={"options": "expert", "stocks": "expert"})
    return {"options": make_key(user, "options")[1], "stocks": make_key(user, "stocks")[1]}


@dataclass
class Exchange:
    """What one client frame got back: its status events (raw frames too) and the close, if the server closed."""

    frames: list[str] = field(default_factory=list)
    events: list[dict] = field(default_factory=list)
    close_code: int | None = None

    @property
    def statuses(self) -> list[str]:
        return [event.get("status") for event in self.events]


class Session:
    """One WebSocket connection to the real application, reopened when the server closed it."""

    def __init__(self, application, market: str, key: str | None) -> None:
        self.application = application
        self.market = market
        self.key = key
        self.communicator: WebsocketCommunicator | None = None
        self._retired: list[WebsocketCommunicator] = []
        self.exchanges = 0  # client frames answered (sentinels not counted)
        self.sent = 0
        self.connections = 0
        self._sentinels = 0

    async def open(self) -> None:
        if self.communicator is not None:
            return
        headers = [(b"authorization", f"Bearer {self.key}".encode())] if self.key else []
        self.communicator = WebsocketCommunicator(self.application, f"/v1/ws/{self.market}/", headers=headers)
        connected, _ = await self.communicator.connect(TIMEOUT)
        assert connected
        self.connections += 1
        expected = ["connected", "auth_success"] if self.key else ["connected"]
        events = []
        while len(events) < len(expected):
            events.extend(orjson.loads(await self.communicator.receive_from(TIMEOUT)))
        assert [event["status"] for event in events] == expected

    async def send(self, frame: str | bytes) -> None:
        """Any frame, empty ones included (``send_to`` refuses those)."""
        message = {"type": "websocket.receive"}
        message["bytes" if isinstance(frame, bytes) else "text"] = frame
        await self.communicator.send_input(message)
        self.sent += 1

    async def exchange(self, frame: str | bytes) -> Exchange:
        await self.open()
        self.exchanges += 1
        self._sentinels += 1
        sentinel = f"zz-sentinel-{self._sentinels}"
        sentinel_reply = [codes.status_event(codes.Status.ERROR, protocol.unknown_action_message(sentinel))]
        await self.send(frame)
        await self.send(orjson.dumps({"action": sentinel}).decode())
        exchange = Exchange()
        while True:
            output = await self.communicator.receive_output(TIMEOUT)
            if output["type"] == "websocket.close":
                exchange.close_code = output.get("code", 1000)
                await self._retire()
                return exchange
            assert output["type"] == "websocket.send" and "text" in output, output
            events = orjson.loads(output["text"])
            if events == sentinel_reply:
                return exchange
            exchange.frames.append(output["text"])
            exchange.events.extend(events)

    async def _retire(self) -> None:
        """Answer the server's close; its consumer is awaited in ``close`` (channels_redis can take ~1 s to let a
        consumer go, and hundreds of sequential waits would dominate the run)."""
        communicator, self.communicator = self.communicator, None
        await communicator.send_input({"type": "websocket.disconnect", "code": 1000})
        self._retired.append(communicator)

    async def close(self) -> None:
        """Close the open connection and wait until every consumer this session started has finished."""
        if self.communicator is not None:
            await self._retire()
        retired, self._retired = self._retired, []
        await asyncio.gather(*(self._finish(communicator) for communicator in retired))

    @staticmethod
    async def _finish(communicator: WebsocketCommunicator) -> None:
        """Wait for a consumer to end after its socket closed, cancelling it after CONSUMER_EXIT_TIMEOUT.

        A consumer whose channel-layer receive is inside channels_redis' BZPOPMIN when the socket closes sometimes
        does not end until that command returns (5 s) or longer: redis-py swallows the first cancellation of a
        blocking command (redis/redis-py#2028). That is not what this suite tests, so it is cut short here.
        """
        try:
            await communicator.wait(CONSUMER_EXIT_TIMEOUT)
        except TimeoutError:
            pass


@pytest.fixture
async def stocks_session(application, keys):
    session = Session(application, "stocks", keys["stocks"])
    yield session
    await session.close()
    record("hostile.fuzz.admitted_frames", session.exchanges, "frames", connections=session.connections)


@pytest.fixture
async def anonymous_session(application, keys):
    session = Session(application, "options", None)
    yield session
    await session.close()
    record("hostile.fuzz.anonymous_frames", session.exchanges, "frames", connections=session.connections)


# --- the oracle (README "Messages") ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Expected:
    kind: str  # "error" (exactly one error with `message`), "unknown_action", "auth", "request"
    message: str = ""
    action: str = ""
    params: object = None


def expected_for(frame: str | bytes) -> Expected:
    if isinstance(frame, bytes):
        return Expected("error", protocol.MESSAGE_BINARY)
    if len(frame.encode("utf-8", "surrogatepass")) > LIMIT:
        return Expected("error", protocol.MESSAGE_TOO_LARGE)
    try:
        message = orjson.loads(frame)
    except orjson.JSONDecodeError:
        return Expected("error", protocol.MESSAGE_INVALID_JSON)
    if not isinstance(message, dict):
        return Expected("error", protocol.MESSAGE_NOT_OBJECT)
    action = message.get("action")
    if not isinstance(action, str) or not action:
        return Expected("error", protocol.MESSAGE_NO_ACTION)
    if action not in ("auth", "subscribe", "unsubscribe"):
        return Expected("unknown_action", action=action)
    if action == "auth":
        return Expected("auth", params=message.get("params"))
    return Expected("request", action=action, params=message.get("params"))


def client_text(frame: str | bytes) -> str:
    return frame.decode("latin-1") if isinstance(frame, bytes) else frame


def assert_safe_shape(frame: str | bytes, exchange: Exchange) -> None:
    """At least one status event, each in the feed's shape, small, and free of internals."""
    assert exchange.events, f"no answer to {client_text(frame)[:200]!r}"
    for raw in exchange.frames:
        assert len(raw.encode()) < MAX_FRAME_BYTES, raw[:200]
    for reply in exchange.events:
        assert list(reply) == ["ev", "status", "message"], reply
        assert reply["ev"] == "status" and isinstance(reply["status"], str), reply
        assert isinstance(reply["message"], str) and len(reply["message"]) <= MAX_REPLY_CHARS, reply
    sent = client_text(frame)
    for marker in LEAK_MARKERS:
        if marker not in sent:  # the client's own words may be echoed (truncated); nothing else may
            assert not any(marker in raw for raw in exchange.frames), (marker, exchange.frames)


def assert_request_answered(action: str, params: object, exchange: Exchange, market: str) -> None:
    """Each non-empty item gets exactly one answer: an ack (once per distinct item) or an error."""
    if not isinstance(params, str):
        assert exchange.events == [codes.status_event("error", protocol.MESSAGE_BAD_PARAMS)]
        return
    items = [item.strip() for item in params.split(",") if item.strip()]
    if not items:
        assert exchange.events == [codes.status_event("error", protocol.MESSAGE_NO_ITEMS)]
        return
    assert set(exchange.statuses) <= {"success", "error"}, exchange.statuses
    verb = "subscribed to: " if action == "subscribe" else "unsubscribed to: "
    acks = [event["message"] for event in exchange.events if event["status"] == "success"]
    assert all(ack.startswith(verb) for ack in acks), acks
    acked = [ack[len(verb):] for ack in acks]
    assert len(set(acked)) == len(acked), "an item was acknowledged twice"
    assert set(acked) <= set(items), "an ack for an item the client did not send"
    for item in acked:
        assert item.split(".", 1)[0] in EVENT_TYPES[market], f"{item} acked on {market}"
    for item in items:
        simple = SIMPLE_ITEMS[market].fullmatch(item)
        if simple and simple["ev"] in EVENT_TYPES[market]:
            assert item in acked, f"valid item {item} not acknowledged"
    unanswered = [item for item in items if item not in set(acked)]
    # The first MAX_ITEM_ERRORS invalid items get an error each, the rest one error that counts them.
    listed = min(len(unanswered), protocol.MAX_ITEM_ERRORS)
    errors = [event["message"] for event in exchange.events if event["status"] == "error"]
    if len(unanswered) > listed:
        assert errors[-1] == protocol.more_invalid_items_message(len(unanswered) - listed), errors[-1]
        listed += 1
    assert len(errors) == listed, (len(errors), len(unanswered))
    # Acks come first, then errors (README: each item gets its own ack; errors name the bad ones).
    assert exchange.statuses == ["success"] * len(acks) + ["error"] * len(errors)


def assert_admitted_answer(frame: str | bytes, exchange: Exchange, market: str) -> None:
    assert exchange.close_code is None, f"closed {exchange.close_code} after {client_text(frame)[:200]!r}"
    assert_safe_shape(frame, exchange)
    assert set(exchange.statuses) <= ANSWERED_STATUSES
    expected = expected_for(frame)
    if expected.kind == "error":
        assert exchange.events == [codes.status_event("error", expected.message)]
    elif expected.kind == "unknown_action":
        assert exchange.events == [
            codes.status_event("error", protocol.unknown_action_message(expected.action))
        ]
        assert len(exchange.events[0]["message"]) < 120  # the echo of the action is truncated
    elif expected.kind == "auth":
        assert exchange.events == [codes.status_event("auth_success", "authenticated")]
    else:
        assert_request_answered(expected.action, expected.params, exchange, market)


def assert_anonymous_answer(frame: str | bytes, exchange: Exchange) -> None:
    assert_safe_shape(frame, exchange)
    expected = expected_for(frame)
    if expected.kind == "auth":
        assert exchange.statuses == ["auth_failed"], exchange.events
        assert exchange.close_code == codes.CloseCode.UNAUTHORIZED
        assert exchange.events[0]["message"].startswith("authentication failed: ")
        if isinstance(expected.params, str) and len(expected.params) >= 8:
            assert expected.params not in exchange.frames[0]
        return
    assert exchange.close_code is None, f"closed {exchange.close_code} after {client_text(frame)[:200]!r}"
    if expected.kind == "error":
        assert exchange.events == [codes.status_event("error", expected.message)]
    elif expected.kind == "unknown_action":
        assert exchange.events == [
            codes.status_event("error", protocol.unknown_action_message(expected.action))
        ]
    else:  # a well-formed subscribe/unsubscribe, whatever its params
        assert exchange.events == [codes.status_event("error", protocol.MESSAGE_NOT_AUTHENTICATED)]


def describe(frame: str | bytes, exchange: Exchange) -> str:
    """How a frame was answered, for ``--hypothesis-show-statistics`` (proof that every path is reached)."""
    expected = expected_for(frame)
    if expected.kind == "error":
        return f"error: {expected.message[:30]}"
    if expected.kind == "request" and isinstance(expected.params, str):
        acks = "acks" if "success" in exchange.statuses else "no ack"
        errors = "errors" if "error" in exchange.statuses else "no error"
        return f"{expected.action}: {acks}, {errors}"
    return expected.kind


# --- strategies --------------------------------------------------------------------------------------------------

TRICKY = [
    "\u200b", "\u200c", "\u200d", "\u200e", "\u200f", "\u202a", "\u202e", "\u2066", "\u2069", "\ufeff", "\u2028",
    "\u2029", "\x00", "\x1b[31m", "\r", "\n", "\t", "\x7f", "\x85", "\ufffd", "\U0001d54b", "\u00e9", "\U0010ffff",
    '"', "\\", "\\u0000", ",", ".", "*", " ", "\u3000", "%00", "{", "[", "Traceback", "<script>", "T.AAPL",
]
SURROGATES = ["\ud800", "\udfff", "\udbff\udc00", "\udc00\udbff"]
hostile_char = st.one_of(st.characters(), st.sampled_from(TRICKY))
hostile_text = st.lists(hostile_char, max_size=60).map("".join)
# Lone surrogates make any JSON text invalid (escaped or raw), so they get their own, rarer, branch.
surrogate_text = st.lists(st.one_of(hostile_char, st.sampled_from(SURROGATES), st.characters(
    min_codepoint=0xD800, max_codepoint=0xDFFF)), min_size=1, max_size=30).map("".join)
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False), hostile_text
)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(hostile_text, children, max_size=4),
    max_leaves=12,
)

valid_event_types = st.sampled_from(["T", "Q", "A", "AM", "LULD", "NOI"])
event_types = st.one_of(
    valid_event_types,
    valid_event_types,
    valid_event_types,
    st.sampled_from(["X", "t", "am", "", "*", "TT", " T", "T\u200b", "Ｔ"]),
    hostile_text.map(lambda text: text[:4]),
)
symbols = st.one_of(
    st.from_regex(r"[A-Z]{1,5}", fullmatch=True),
    st.from_regex(r"[A-Z]{1,5}", fullmatch=True),
    st.sampled_from(["*", ""]),
    st.from_regex(r"[A-Za-z0-9][A-Za-z0-9.:/_\-]{0,44}", fullmatch=True),
    st.sampled_from(["*", "", "BRK.B", "O:SPY260515C00500000", "A" * 41, "-A", ".A", "A*", "ÄPL", "AAPL\n",
                     "AAPL\u200b", "\u202eLPAA", "ＡＡＰＬ"]),
    hostile_text,
)
items = st.tuples(event_types, st.sampled_from([".", ".", ".", ".", "", ".."]), symbols).map("".join)
padding = st.sampled_from(["", "", " ", "  ", "\t", "\u3000", "\n", "\u200b"])
subscription_params = st.lists(st.tuples(padding, items, padding).map("".join), max_size=12).map(",".join)
actions = st.one_of(
    st.sampled_from(["subscribe", "unsubscribe"]),
    st.sampled_from(["subscribe", "unsubscribe"]),
    st.sampled_from(["auth", "Subscribe", "SUBSCRIBE", " subscribe", "subscribe\x00", "", "unsubscribe ", "sub"]),
    hostile_text,
    json_values,
)
params = st.one_of(subscription_params, subscription_params, subscription_params, hostile_text, json_values)
protocol_messages = st.fixed_dictionaries(
    {"action": actions},
    optional={"params": params, "extra": json_values, "": json_values},
)
subscription_messages = st.builds(
    lambda action, params: {"action": action, "params": params},
    st.sampled_from(["subscribe", "unsubscribe"]),
    subscription_params,
)
# Either the escaped form (\udxxx) or the raw lone surrogates in the text frame.
surrogate_messages = st.builds(lambda params: {"action": "subscribe", "params": params}, surrogate_text)


@st.composite
def encoded(draw, values) -> str:
    """JSON text for a value: ASCII-escaped (lone surrogates become \\udxxx) or raw (they stay lone surrogates)."""
    return json.dumps(draw(values), ensure_ascii=draw(st.booleans()), allow_nan=False)


def nested(depth: int, inner: str = "") -> str:
    return "[" * depth + inner + "]" * depth


def padded(size: int, action: str = "subscribe", item: str = "T.AAPL", pad: str = "x") -> str:
    """A valid message of exactly *size* UTF-8 bytes (padding in an extra field; *pad* may be multi-byte)."""
    head = f'{{"action":"{action}","params":"{item}","pad":"'
    room = size - len(head.encode()) - 2
    width = len(pad.encode())
    text = head + pad * (room // width) + "x" * (room % width) + '"}'
    assert len(text.encode("utf-8", "surrogatepass")) == size
    return text


# The hand-picked frames of the brief, tried on every run (hypothesis adds random ones around them).
EDGE_FRAMES: dict[str, str | bytes] = {
    "empty text frame": "",
    "empty binary frame": b"",
    "binary garbage": b"\x00\xff\xfe\x80",
    "binary frame holding valid JSON": b'{"action":"subscribe","params":"T.AAPL"}',
    "whitespace": " \t\r\n ",
    "10,000 nested arrays": nested(10_000),
    "10,000 nested objects": '{"a":' * 10_000 + "1" + "}" * 10_000,
    "nesting 1024 inside a message (orjson's limit)": (
        '{"action":"subscribe","params":"T.AAPL","x":' + nested(1023) + "}"
    ),
    "nesting 1025 inside a message": '{"action":"subscribe","params":"T.AAPL","x":' + nested(1024) + "}",
    "exactly 64 KiB": padded(LIMIT),
    "64 KiB + 1 byte": padded(LIMIT + 1),
    "64 KiB of 2-byte characters": padded(LIMIT, pad="é"),
    "64 KiB + 1 through a 2-byte character": padded(LIMIT + 1, pad="é"),
    "16 Ki characters of 4 bytes, 64 KiB + 2 bytes": padded(LIMIT + 2, pad="\U0001d54b"),
    "1 MiB": padded(1024 * 1024),
    "lone surrogate raw": '{"action":"subscribe","params":"T.\ud800"}',
    "lone surrogate escaped": '{"action":"subscribe","params":"T.\\ud800"}',
    "escaped NUL in params": '{"action":"subscribe","params":"T.AAPL\\u0000"}',
    "raw NUL in the frame": '{"action":"subscribe","params":"T.AAPL\x00"}',
    "RTL override in symbol": '{"action":"subscribe","params":"T.\u202eLPAA"}',
    "zero-width space in symbol": '{"action":"subscribe","params":"T.AA\u200bPL"}',
    "BOM before the object": '\ufeff{"action":"subscribe","params":"T.AAPL"}',
    "duplicate action keys": '{"action":"subscribe","params":"T.AAPL","action":"auth"}',
    "NaN action": '{"action":NaN}',
    "1e999 action": '{"action":1e999}',
    "huge integer action": '{"action":' + "9" * 5000 + "}",
    "60 KB action": json.dumps({"action": "s" * 60_000}),
    "60 KB action of control characters": json.dumps({"action": "\x1b" * 20_000}),
    "60 KB single item": json.dumps({"action": "subscribe", "params": "T." + "A" * 60_000}),
    "60 KB event type": json.dumps({"action": "subscribe", "params": "X" * 60_000 + ".AAPL"}),
    "params as object": '{"action":"subscribe","params":{"T":"AAPL"}}',
    "params as list": '{"action":"unsubscribe","params":["T.AAPL"]}',
    "params null": '{"action":"subscribe","params":null}',
    "every kind of item at once": json.dumps({
        "action": "subscribe",
        "params": "T.AAPL, T.AAPL,T.,AAPL,X.AAPL,T.*,Q.BRK.B,T.-A,T.\u200bA, ,AM.O:SPY260515C00500000,LULD.*,T.AAPL",
    }),
    "only commas": json.dumps({"action": "subscribe", "params": "," * 60_000}),
    "10,000 distinct valid items": json.dumps(
        {"action": "subscribe", "params": ",".join(f"T.S{n}" for n in range(10_000))}
    ),
    "10,000 items unsubscribed": json.dumps(
        {"action": "unsubscribe", "params": ",".join(f"T.S{n}" for n in range(10_000))}
    ),
    "30,000 invalid items": json.dumps({"action": "subscribe", "params": ",".join("a" * 30_000)}),
    "15,000 unknown event types": json.dumps({"action": "subscribe", "params": ",".join(["X.A"] * 15_000)}),
    "auth with a list": '{"action":"auth","params":["cmo_x"]}',
    "auth with 60 KB": json.dumps({"action": "auth", "params": "k" * 60_000}),
    "JSON null": "null",
    "JSON string": '"subscribe"',
    "JSON array of a message": '[{"action":"subscribe","params":"T.AAPL"}]',
    "empty object": "{}",
    "traceback-looking action": json.dumps({"action": 'Traceback (most recent call last): File "/x.py"'}),
}


# --- tests -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("market", ["stocks", "options"])
async def test_edge_frames_on_an_admitted_stream(application, keys, market):
    session = Session(application, market, keys[market])
    try:
        for name, frame in EDGE_FRAMES.items():
            exchange = await session.exchange(frame)
            try:
                assert_admitted_answer(frame, exchange, market)
            except AssertionError as failure:
                raise AssertionError(f"{name}: {failure}") from None
        assert session.connections == 1  # one socket took every frame
    finally:
        await session.close()


async def test_edge_frames_before_authentication(application, keys):
    session = Session(application, "options", None)
    try:
        for name, frame in EDGE_FRAMES.items():
            exchange = await session.exchange(frame)
            try:
                assert_anonymous_answer(frame, exchange)
            except AssertionError as failure:
                raise AssertionError(f"{name}: {failure}") from None
    finally:
        await session.close()


@FUZZ
@given(frames=st.lists(
    st.one_of(
        encoded(subscription_messages),
        encoded(subscription_messages),
        encoded(protocol_messages),
        encoded(protocol_messages),
        encoded(json_values),
        encoded(surrogate_messages),
        surrogate_text,
        hostile_text,
        st.binary(max_size=64),
    ),
    min_size=1,
    max_size=4,
))
async def test_fuzzed_frames_on_an_admitted_stream(stocks_session, frames):
    for frame in frames:
        exchange = await stocks_session.exchange(frame)
        assert_admitted_answer(frame, exchange, "stocks")
        event(describe(frame, exchange))
    assert stocks_session.connections == 1  # never closed, across every example so far


key_like = st.one_of(
    st.from_regex(r"cm[so]_[A-Za-z0-9]{12}_[A-Za-z0-9]{40}", fullmatch=True),
    st.from_regex(r"cm[a-z]_[A-Za-z0-9]{0,20}_[A-Za-z0-9]{0,50}", fullmatch=True),
    hostile_text,
    json_values,
)
auth_messages = st.builds(
    lambda key, extra: {"action": "auth", "params": key, **extra},
    key_like,
    st.dictionaries(st.sampled_from(["extra", "params2", ""]), json_values, max_size=2),
)


@FUZZ
@given(frames=st.lists(
    st.one_of(encoded(auth_messages), encoded(auth_messages), encoded(protocol_messages), encoded(json_values),
              encoded(surrogate_messages), hostile_text, st.binary(max_size=64)),
    min_size=1,
    max_size=4,
))
async def test_fuzzed_frames_before_authentication(anonymous_session, frames):
    for frame in frames:
        exchange = await anonymous_session.exchange(frame)
        assert_anonymous_answer(frame, exchange)
        event(describe(frame, exchange))


@pytest.mark.parametrize("authenticated", [True, False], ids=["admitted", "before-auth"])
async def test_flooding_is_refused_then_closed_1008_with_a_status(application, keys, settings, authenticated):
    """The one documented close for client input: the rate limit (here 3 messages, then 4 refusals, then 1008)."""
    settings.STREAM_CLIENT_MESSAGE_RATE = 0.001  # no refill during the test
    settings.STREAM_CLIENT_MESSAGE_BURST = 3
    settings.STREAM_CLIENT_REFUSALS_BEFORE_CLOSE = 5
    session = Session(application, "stocks", keys["stocks"] if authenticated else None)
    await session.open()
    for _ in range(12):
        await session.send("garbage")
    events = []
    while True:
        output = await session.communicator.receive_output(TIMEOUT)
        if output["type"] == "websocket.close":
            close_code = output["code"]
            break
        events.extend(orjson.loads(output["text"]))
    await session.communicator.disconnect()
    messages = [event["message"] for event in events]
    assert messages[:3] == [protocol.MESSAGE_INVALID_JSON] * 3
    assert all(message.startswith("rate limit exceeded") for message in messages[3:7]), messages
    assert len(messages) == 8 and messages[7].startswith("too many messages")
    assert {event["status"] for event in events} == {"error"}
    assert close_code == codes.CloseCode.POLICY_VIOLATION


@pytest.mark.parametrize(
    "market_path",
    ["x\r2026-01-01 00:00:00,000 CRITICAL forged", "\x1b[31mred", "x\u2028forged", "x\nforged", "a" * 10_000,
     "options\x00"],
    ids=["CR", "ANSI escape", "U+2028", "LF", "10 KB", "NUL"],
)
async def test_a_path_cannot_write_into_log_lines(application, keys, caplog, market_path):
    """The market comes from the (decoded) path and is logged: it must not forge, colour or flood a log line."""
    communicator = WebsocketCommunicator(application, f"/v1/ws/{market_path}/?api_key={keys['options']}")
    assert (await communicator.connect(TIMEOUT))[0]
    events = []
    while (output := await communicator.receive_output(TIMEOUT))["type"] == "websocket.send":
        events.extend(orjson.loads(output["text"]))
    await communicator.disconnect()
    assert output["code"] == codes.CloseCode.UNAUTHORIZED
    assert [event["status"] for event in events] == ["connected", "auth_failed"]
    assert "unsupported market" in events[-1]["message"]
    messages = [record.getMessage() for record in caplog.records if record.name.startswith("streaming.")]
    assert messages
    for message in messages:
        assert message.isprintable() and len(message) < 500, repr(message[:200])
